"""PA-MoE study: a phase-routed mixture of LoRA experts vs one LoRA of equal size vs token-level
routing, on several tasks of unequal difficulty trained in one run (the "simplicity bias" claim).

    python benchmarks/pamoe.py                                   # Sokoban sizes, 3 arms, 3 seeds
    python benchmarks/pamoe.py --task twx                        # TextWorldExpress games (JVM)
    python benchmarks/pamoe.py --seeds 1 --smoke --results /tmp/p.md      # plumbing
    python benchmarks/pamoe.py --report-only                     # rewrite the page from runs

Protocol (PA-MoE, arXiv 2602.17038; spec-seed-systems §3): for each arm and seed, one ordinary
``mode: rl`` run (:func:`grouprl.recipes.train`) of ``configs/pamoe_sokoban.yaml`` (``--task
sokoban``: easy 5×5 levels solvable in ≤ 2 moves and hard 6×6 levels in ≤ 4, one run) or
``configs/pamoe_twx_multigame.yaml`` (``--task twx``); only ``model.pamoe`` differs:

- ``pa-moe``: E = 4 experts of rank r on q/k/v/o, routed per env step by the phase router;
- ``single``: one LoRA of rank E·r on q/k/v/o — the same adapter parameter count (the phase
  router's own parameters come on top for pa-moe; the table lists every arm's count);
- ``token``: E = 4 experts of rank r mixed per token by a soft gate in every layer (token-level
  MoE routing, the design PA-MoE argues against).

Equal budget: the same iterations, rollouts, warm start (the seed fixes behaviour cloning),
optimizer and GiGPO settings. Measured: held-out success per task category at the end
(``eval/success_rate/<cat>``), the paper's parameter occupancy per category over the run
(``router/occupancy/<cat>``: the fraction of mini-batches in which the category holds > 50% of
the policy-gradient weight |A|·L, averaged over iterations), and pa-moe's switch rate and
router entropy. Runs are cached in ``--out`` (a finished run leaves ``summary.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from grouprl.recipes import train  # noqa: E402
from grouprl.train.config import load_config  # noqa: E402
from grouprl.train.safe_io import write_text_atomically  # noqa: E402
from study import cell, kept_section  # noqa: E402

ARMS = ("pa-moe", "single", "token")
COMMAND = "python benchmarks/pamoe.py"
CONFIGS = {"sokoban": "pamoe_sokoban.yaml", "twx": "pamoe_twx_multigame.yaml"}
SMOKE = ["iterations=2", "bc.episodes=20", "bc.epochs=1", "eval.episodes=8", "eval.every=0",
         "rollout.groups_per_batch=4", "rollout.group_size=4"]


def arm_overrides(arm: str, rank: int, experts: int) -> list[str]:
    """The ``model.pamoe`` keys of an arm (module docstring)."""
    if arm == "single":
        return ["model.pamoe.mode=reference", f"model.pamoe.rank={rank * experts}",
                "model.pamoe.target_modules=[q_proj, k_proj, v_proj, o_proj]"]
    return [f"model.pamoe.mode={arm}"]


def summarise(rows: list[dict]) -> dict:
    """Final evaluation, run means of occupancy / switch rate / entropy, parameter counts."""
    evals = [r for r in rows if "eval/success_rate" in r]
    train_rows = [r for r in rows if "actor/updates" in r]
    def mean(key):
        return (statistics.mean(r[key] for r in train_rows if key in r)
                if any(key in r for r in train_rows) else None)
    keys = {k for r in rows for k in r}
    cats = sorted(k.rsplit("/", 1)[1] for k in keys if k.startswith("eval/success_rate/"))
    out = {"success": evals[-1]["eval/success_rate"], "success_before": evals[0][
        "eval/success_rate"], "categories": cats,
        "switch_rate": mean("router/switch_rate"), "entropy": mean("router/entropy"),
        "params": rows[-1].get("pamoe/trainable_parameters")}
    for c in cats:
        out[f"success/{c}"] = evals[-1].get(f"eval/success_rate/{c}")
        out[f"before/{c}"] = evals[0].get(f"eval/success_rate/{c}")
        out[f"occupancy/{c}"] = mean(f"router/occupancy/{c}")
        out[f"train/{c}"] = mean(f"train/success_rate/{c}")
    return out


def run_one(config: Path, arm: str, seed: int, out: Path, extra: list[str]) -> dict:
    run_dir = out / f"{arm}-seed{seed}"
    summary = run_dir / "summary.json"
    if not summary.is_file():
        if run_dir.exists():
            raise SystemExit(f"{run_dir} holds an unfinished run: delete it or resume it with "
                             f"grouprl train --resume {run_dir}")
        base = load_config(config, extra)
        p = base.model.pamoe
        cfg = load_config(config, [f"seed={seed}", f"run_dir={run_dir}", "logging.progress=false",
                                   *extra, *arm_overrides(arm, p.rank, p.num_experts)])
        result = train(cfg, echo=lambda _: None)
        write_text_atomically(summary, json.dumps(summarise(result.metrics)))
    return {"arm": arm, "seed": seed, **json.loads(summary.read_text())}


def table(records: list[dict]) -> str:
    cats = sorted({c for r in records for c in r["categories"]})
    cols = (["success"] + [f"success/{c}" for c in cats] + [f"occupancy/{c}" for c in cats]
            + ["switch_rate", "entropy"])
    names = (["eval success"] + [f"eval {c}" for c in cats] + [f"occupancy {c}" for c in cats]
             + ["switch rate", "router entropy"])
    lines = ["| arm | seeds | trainable params | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for arm in ARMS:
        rows = [r for r in records if r["arm"] == arm]
        if rows:
            params = rows[0].get("params")
            lines.append(f"| {arm} | {len(rows)} | {int(params) if params else '—'} | "
                         + " | ".join(cell([r.get(k) for r in rows]) for k in cols) + " |")
    return "\n".join(lines)


def write_page(path: Path, records: list[dict], task: str, smoke: bool, extra: list[str]) -> None:
    kept = kept_section(path)
    status = ("**Smoke run only** (tiny budget, for the plumbing; not a result)." if smoke else
              f"Runs: `{COMMAND}{' --task twx' if task == 'twx' else ''}`.")
    before = cell([r["success_before"] for r in records])
    path.write_text(
        "# PA-MoE study: phase-routed experts vs one LoRA vs token-level routing\n\n"
        f"{status}\n\nProtocol: `benchmarks/pamoe.py` (module docstring), task `{task}`, equal "
        "budget per arm; mean ± sd over seeds; held-out success at the end, the other columns "
        "averaged over the run's iterations.\n\n"
        + ("Overrides of every run:\n\n```\n" + "\n".join(extra) + "\n```\n\n" if extra else "")
        + (table(records) if records else "(no finished runs)")
        + f"\n\nHeld-out success of the warm start (before RL, all arms): {before}.\n"
        + kept)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=tuple(CONFIGS), default="sokoban")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "pamoe_study")
    p.add_argument("--results", type=Path, default=ROOT / "docs" / "results-pamoe.md")
    p.add_argument("--smoke", action="store_true", help="tiny budget (plumbing check)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    config = ROOT / "configs" / CONFIGS[args.task]
    extra = [*(SMOKE if args.smoke else []), *args.set]
    out = args.out / args.task
    records = []
    for seed in range(args.seeds):           # every arm of a seed before the next seed
        for arm in args.arms.split(","):
            if args.report_only and not (out / f"{arm}-seed{seed}" / "summary.json").is_file():
                continue
            records.append(run_one(config, arm, seed, out, extra))
            r = records[-1]
            print(f"{arm} seed {seed}: success {r['success']:.3f} " + " ".join(
                f"{c} {r[f'success/{c}']}" for c in r["categories"]), flush=True)
    print(table(records))
    write_page(args.results, records, args.task, args.smoke, extra)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
