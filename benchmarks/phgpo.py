"""PhGPO study: does the pheromone help a tool-planning policy, at equal budget, with and without
the pheromone at evaluation?

    python benchmarks/phgpo.py                              # full study: BFCL base, 3 seeds
    python benchmarks/phgpo.py --task synthetic --seeds 1 --smoke --results /tmp/p.md   # smoke
    python benchmarks/phgpo.py --cpu-budget                 # BFCL, tiny from-scratch model, CPU
    python benchmarks/phgpo.py --report-only                # rewrite the page from finished runs

Protocol (PhGPO, arXiv 2602.13691; spec-seed-systems §2.6–§2.7): for each arm and seed, one
ordinary ``mode: phgpo`` run (:func:`grouprl.recipes.train`) of ``configs/phgpo_bfcl.yaml``
(``--task bfcl``, BFCL multi-turn base split by task: 160 train / 40 test, ``phgpo.split_seed``
42) or ``configs/phgpo_synthetic.yaml`` (``--task synthetic``); only these keys differ:

- ``phgpo``: the recipe as configured (stages 1–3, pheromone-guided sampling and deposits);
- ``grpo``: the same policy, stages and GRPO advantages without the pheromone: β = 0 in every
  stage and no deposits (``alpha_global = alpha_local = param_rate = 0``, no protected
  floors), so τ stays uniform and warm-up / injection add nothing; its β > 0 evaluation
  therefore equals β = 0;
- ``supervised``: stage 1 only, for as many epochs as the other arms run in all
  (``supervised_epochs`` = stage 1 + curriculum + stage 3 epochs; no RL).

Equal budget: the same epochs, tasks per epoch, model, optimizer and seed per arm (the seed
fixes the warm start). Measured on the held-out tasks (``eval.episodes``, ``eval_rollouts``
each, ε = 0, no teacher forcing): the match rate at β = 0 and at β = ``eval_beta`` (the training
store as test-time memory), success (m ≥ 0.7) and next-tool accuracy. Runs are cached in
``--out`` (a finished run leaves ``summary.json``); ``--set key=value`` overrides every run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from grouprl.recipes import train  # noqa: E402
from grouprl.train.config import load_config  # noqa: E402
from study import cell  # noqa: E402

ARMS = ("phgpo", "grpo", "supervised")
COMMAND = "python benchmarks/phgpo.py"
KEYS = (("eval/match_rate_beta0", "match β=0"), ("eval/match_rate", "match β>0"),
        ("eval/success_rate", "success β>0"), ("eval/next_tool_accuracy", "next-tool acc"))
SMOKE = ["model.tiny={vocab_size: 384, hidden_size: 32, num_layers: 1, num_heads: 2, "
         "num_kv_heads: 1, intermediate_size: 64}", "phgpo.supervised_epochs=1",
         "phgpo.curriculum=[{max_steps: 5, epochs: 1, tf_start: 0.3, tf_end: 0.2}]",
         "phgpo.stage3_epochs=1", "phgpo.tasks_per_epoch=4", "phgpo.group_size=3",
         "phgpo.eval_rollouts=2", "eval.episodes=4", "eval.every=0", "phgpo.max_length=96"]

# The study as run on 2 CPU cores (docs/results-phgpo.md): a tiny from-scratch LM with the linear
# tool head instead of SmolLM2 + LoRA (hours per run on CPU), a shorter curriculum and stage 3.
CPU_BUDGET = ["model.path=null", "model.lora.enabled=false",
              "model.tiny={vocab_size: 384, hidden_size: 64, num_layers: 2, num_heads: 4, "
              "num_kv_heads: 2, intermediate_size: 128}", "phgpo.supervised_epochs=4",
              "phgpo.curriculum=[{max_steps: 3, epochs: 3, tf_start: 0.4, tf_end: 0.25}, "
              "{max_steps: 5, epochs: 3, tf_start: 0.35, tf_end: 0.2}, "
              "{max_steps: 10, epochs: 3, tf_start: 0.25, tf_end: 0.1}]",
              "phgpo.stage3_epochs=6", "phgpo.tasks_per_epoch=24", "eval.every=0"]


def arm_overrides(arm: str, cfg) -> list[str]:
    """The keys an arm changes (module docstring)."""
    pc = cfg.phgpo
    if arm == "grpo":
        return ["phgpo.beta_stage2=[0.0, 0.0, 1]", "phgpo.beta_stage3=[0.0, 0.0, 1]",
                "phgpo.pheromone={alpha_global: 0.0, alpha_local: 0.0, param_rate: 0.0, "
                "protect_min_successes: 1000000000}",
                "phgpo.use_context=false"]
    if arm == "supervised":
        total = pc.supervised_epochs + sum(int(e["epochs"]) for e in pc.curriculum) \
            + pc.stage3_epochs
        return [f"phgpo.supervised_epochs={total}", "phgpo.curriculum=[]",
                "phgpo.stage3_epochs=0"]
    return []


def run_one(config: Path, arm: str, seed: int, out: Path, extra: list[str]) -> dict:
    run_dir = out / f"{arm}-seed{seed}"
    summary = run_dir / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    if run_dir.exists():
        raise SystemExit(f"{run_dir} holds an unfinished run: delete it or resume it with "
                         f"grouprl train --resume {run_dir}")
    base = [f"seed={seed}", f"run_dir={run_dir}", "logging.progress=false", *extra]
    cfg = load_config(config, base)
    result = train(load_config(config, base + arm_overrides(arm, cfg)), echo=lambda _: None)
    last = result.metrics[-1]
    record = {"arm": arm, "seed": seed, **{k: last.get(k) for k, _ in KEYS},
              "uniform": last.get("eval/uniform_match_rate"), "epochs": result.iterations}
    summary.write_text(json.dumps(record))
    return record


def table(records: list[dict]) -> str:
    lines = ["| arm | seeds | " + " | ".join(name for _, name in KEYS) + " |",
             "|---|---|" + "---|" * len(KEYS)]
    for arm in ARMS:
        rows = [r for r in records if r["arm"] == arm]
        if rows:
            lines.append(f"| {arm} | {len(rows)} | " + " | ".join(
                cell([r[k] for r in rows if r[k] is not None]) for k, _ in KEYS) + " |")
    return "\n".join(lines)


def write_page(path: Path, records: list[dict], task: str, smoke: bool,
               overrides: list[str] = ()) -> None:
    status = ("**Smoke run only** (tiny budget, for the plumbing; not a result). The full study "
              f"is pending: `{COMMAND}`." if smoke or not records else
              f"Runs: `{COMMAND} --task {task}" + (" --cpu-budget" if any(
                  o.startswith("phgpo.stage3_epochs=6") for o in overrides) else "") + "`.")
    uniform = next((r["uniform"] for r in records if r.get("uniform")), None)
    path.write_text(
        "# PhGPO study: pheromone vs plain GRPO vs supervised only\n\n"
        f"{status}\n\nProtocol: `benchmarks/phgpo.py` (module docstring): task `{task}`, arms "
        "phgpo / grpo (same policy, no pheromone) / supervised (stage 1 for the same number "
        "of epochs), equal budget, held-out tasks split by task; mean ± sd over seeds of the "
        "last evaluation.\n\n"
        + ("Overrides of every run:\n\n```\n" + "\n".join(overrides) + "\n```\n\n"
           if overrides else "") + (table(records) if records else "(no finished runs)") + "\n\n"
        + (f"Uniform policy: match rate {uniform:.3f}.\n\n" if uniform else "")
        + "Paper (arXiv 2602.13691; only the abstract could be read): PhGPO ahead of its RL "
        "baselines on long-horizon tool planning, reported with and without the pheromone at "
        "inference. Compare orderings, not values: the models, data and budgets differ.\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("bfcl", "synthetic"), default="bfcl")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "phgpo_study")
    p.add_argument("--results", type=Path, default=ROOT / "docs" / "results-phgpo.md")
    p.add_argument("--smoke", action="store_true", help="tiny budget (plumbing check)")
    p.add_argument("--cpu-budget", action="store_true",
                   help="tiny from-scratch model and a shorter schedule (CPU_BUDGET)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    config = ROOT / "configs" / f"phgpo_{args.task}.yaml"
    extra = [*(SMOKE if args.smoke else []), *(CPU_BUDGET if args.cpu_budget else []),
             *args.set]
    if args.smoke and args.task == "bfcl":
        extra = ["model.path=null", "model.lora.enabled=false", *extra]
    out = args.out / args.task
    records = []
    for arm in args.arms.split(","):
        for seed in range(args.seeds):
            if args.report_only:
                summary = out / f"{arm}-seed{seed}" / "summary.json"
                if summary.is_file():
                    records.append(json.loads(summary.read_text()))
                continue
            records.append(run_one(config, arm, seed, out, extra))
            print(f"{arm} seed {seed}: " + ", ".join(
                f"{name} {records[-1][k]:.3f}" for k, name in KEYS), flush=True)
    print(table(records))
    write_page(args.results, records, args.task, args.smoke, extra)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
