"""Dr. MAS study: does agent-wise advantage normalisation beat the vanilla trajectory baseline in
a team of agents, and does it remove per-agent gradient-norm spikes, as the paper claims?

    python benchmarks/drmas.py                                  # full study (hours on 2 CPUs)
    python benchmarks/drmas.py --iterations 2 --seeds 1 --tasks math --results /tmp/x.md  # smoke
    python benchmarks/drmas.py --report-only                    # rewrite the page from runs

Protocol (Dr. MAS, arXiv 2602.08847; spec-seed-systems §1.7–1.8): for each team (math:
``configs/drmas_math.yaml``; search: ``configs/drmas_search.yaml``), each arm and each seed, one
ordinary ``mode: multiagent`` run (:func:`grouprl.recipes.train`) in which only
``multiagent.baseline`` differs:

- ``agent``: Dr. MAS, statistics per (task group, agent);
- ``trajectory``: vanilla GRPO in a team, every trajectory counted once (its mean row score);
- ``step`` (``--arms agent,trajectory,step``): the global step-level ablation missing from the
  paper.

Equal budget: the same iterations × tasks × group size, the same warm start (built from the seed,
so equal across arms), the same held-out tasks (``eval.episodes`` × ``multiagent.eval_k``).
Measured per run: final ``val/avg@k`` and ``val/pass@k``; per agent the gradient-norm series over
iterations (``agent/<name>/grad_norm``) and its max/median ratio (a spike shows as a large
ratio). Runs are cached in ``--out`` (a finished run leaves ``summary.json`` and is not run
again). ``--set key=value`` overrides every run's config (e.g. ``--set model.device=cuda``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from grouprl.recipes import train  # noqa: E402
from grouprl.train.config import load_config  # noqa: E402
from grouprl.train.metrics import read_metrics  # noqa: E402

CONFIGS = {"math": ROOT / "configs" / "drmas_math.yaml",
           "search": ROOT / "configs" / "drmas_search.yaml"}
ARM_NAMES = {"agent": "agent-wise (Dr. MAS)", "trajectory": "vanilla trajectory GRPO",
             "step": "global step-level"}


def _ratio(series: list[float]) -> float:
    """max / median of a grad-norm series (nan when empty or the median is 0)."""
    series = [x for x in series if x == x]
    if not series or statistics.median(series) == 0:
        return float("nan")
    return max(series) / statistics.median(series)


def summarise(run_dir: Path) -> dict[str, Any]:
    """Final held-out scores and per-agent grad-norm max/median of one finished run."""
    rows = read_metrics(run_dir)
    evals = [r for r in rows if "val/avg@k" in r]
    agents = sorted({k.split("/")[1] for r in rows for k in r if k.startswith("agent/")})
    norms = {a: [r[f"agent/{a}/grad_norm"] for r in rows if f"agent/{a}/grad_norm" in r
                 and r.get(f"agent/{a}/rows", 0) > 0] for a in agents}
    return {"avg@k": evals[-1]["val/avg@k"], "pass@k": evals[-1]["val/pass@k"],
            "avg@k_before": evals[0]["val/avg@k"], "k": evals[-1]["val/k"],
            "curve": [(r["iteration"], r["val/avg@k"]) for r in evals],
            "grad_norm_ratio": {a: _ratio(v) for a, v in norms.items()},
            "grad_norm_max": {a: max(v, default=float("nan")) for a, v in norms.items()}}


def run_one(task: str, arm: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    run_dir = Path(args.out) / task / arm / f"seed{seed}"
    done = run_dir / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    overrides = [f"run_dir={run_dir}", f"seed={seed}", f"iterations={args.iterations}",
                 f"multiagent.baseline={arm}", "logging.progress=false",
                 f"eval.every={max(args.iterations // 4, 1)}", *args.set]
    cfg = load_config(CONFIGS[task], overrides)
    resume = (run_dir / "checkpoints").is_dir()
    train(cfg, resume=resume, echo=lambda text: print(f"  [{task}/{arm}/{seed}] {text}",
                                                      file=sys.stderr))
    summary = summarise(run_dir)
    done.write_text(json.dumps(summary, indent=2))
    return summary


def _mean(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(results: dict[tuple[str, str], list[dict]]) -> str:
    """Markdown table: task, arm, avg@k, pass@k, per-agent grad-norm max/median."""
    lines = ["| team | arm | seeds | avg@k before | avg@k after | pass@k after | "
             "grad-norm max/median per agent |", "|---|---|---|---|---|---|---|"]
    for (task, arm), runs in results.items():
        agents = sorted({a for r in runs for a in r["grad_norm_ratio"]})
        ratios = ", ".join(f"{a} {_mean([r['grad_norm_ratio'][a] for r in runs])}"
                           for a in agents)
        k = int(runs[0]["k"])
        lines.append(f"| {task} | {ARM_NAMES[arm]} | {len(runs)} | "
                     f"{_mean([r['avg@k_before'] for r in runs])} | "
                     f"{_mean([r['avg@k'] for r in runs])} (k={k}) | "
                     f"{_mean([r['pass@k'] for r in runs])} | {ratios} |")
    return "\n".join(lines)


def curves(results: dict[tuple[str, str], list[dict]]) -> str:
    """Held-out avg@k per evaluation iteration, mean over seeds (one line per arm)."""
    out = []
    for (task, arm), runs in results.items():
        points: dict[int, list[float]] = {}
        for r in runs:
            for it, v in r["curve"]:
                points.setdefault(it, []).append(v)
        shown = "  ".join(f"{it}: {statistics.mean(v):.3f}" for it, v in sorted(points.items()))
        out.append(f"- {task}, {ARM_NAMES[arm]}: {shown}")
    return "\n".join(out)


def write_page(path: Path, results: dict, args: argparse.Namespace, command: str) -> None:
    path.write_text(
        "# Dr. MAS study: agent-wise vs vanilla advantages in a team\n\n"
        f"Command: `{command}`\n\n"
        f"Budget per run: {args.iterations} iterations (the configs' tasks × group size), "
        f"seeds {list(range(args.seeds))}.\n\n## Results\n\n" + table(results) +
        "\n\n## Held-out avg@k curves (mean over seeds)\n\n" + curves(results) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="math,search", help="comma list: math, search")
    p.add_argument("--arms", default="agent,trajectory", help="comma list: agent, trajectory, "
                   "step")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--out", default=str(ROOT / "runs" / "drmas_study"))
    p.add_argument("--results", default=str(ROOT / "docs" / "results-drmas.md"))
    p.add_argument("--set", action="append", default=[], help="key=value for every run")
    p.add_argument("--report-only", action="store_true", help="only summarise finished runs")
    args = p.parse_args(argv)
    results: dict[tuple[str, str], list[dict]] = {}
    for task in args.tasks.split(","):
        for arm in args.arms.split(","):
            runs = []
            for seed in range(args.seeds):
                done = Path(args.out) / task / arm / f"seed{seed}" / "summary.json"
                if args.report_only:
                    if done.is_file():
                        runs.append(json.loads(done.read_text()))
                    continue
                runs.append(run_one(task, arm, seed, args))
            if runs:
                results[(task, arm)] = runs
    print(table(results))
    print()
    print(curves(results))
    command = "python benchmarks/drmas.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_page(Path(args.results), results, args, command.strip())
    print(f"\nwrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
