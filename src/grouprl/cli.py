"""Command line: ``grouprl train | config | eval | plot | advantages | bench``.

    grouprl train                                        # built-in default: tiny model, Sokoban
    grouprl train --help                                 # every config key, default and help
    grouprl config configs/sokoban_hgpo.yaml rollout.group_size=4   # the resolved config (YAML)
    grouprl train configs/sokoban_hgpo.yaml rollout.group_size=4 run_dir=runs/h
    grouprl train --resume runs/h                        # continue an interrupted run
    grouprl eval runs/h [eval.episodes=256]              # held-out success of the latest checkpoint
    grouprl plot runs/h                                  # runs/h/training.png
    grouprl advantages                                   # spec §4.6 example, every estimator
    grouprl advantages rows.jsonl -e hgpo -o history_length=4 -o compat=reference
    grouprl bench [--quick]                              # benchmarks/advantages.py

A rollout file is JSON Lines, one object per step row with the RolloutBatch column names
(``group_id``, ``traj_id``, ``step``, ``reward``, optional ``state``/``next_state`` as any JSON
value — ids are assigned exactly with :func:`state_ids` — ``success``, ``invalid``, ``agent_id``).
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

from grouprl.advantages import RolloutBatch, available_estimators, compute_advantages, state_ids
from grouprl.data import read_records
from grouprl.distributed import is_main_process, launched_by_torchrun
from grouprl.distributed import shutdown as shutdown_distributed
from grouprl.distributed.launch import run_under_torchrun
from grouprl.envs.pool import EnvFault
from grouprl.recipes import train
from grouprl.train import ConfigError, load_config, load_run_config, load_trained_policy
from grouprl.train.checks import check_phgpo_config, check_rl_config
from grouprl.train.config import TrainConfig, config_reference, dump_config, format_keys
from grouprl.train.evaluate import evaluate_run
from grouprl.train.pair_data import validate_preference_config
from grouprl.train.pamoe import policy_routing
from grouprl.train.plot import plot_run
from grouprl.train.presafe_data import check_presafe_config
from grouprl.train.presafe_eval import evaluate_run_safety
from grouprl.train.run import resume_config
from grouprl.validation import UserError

# Spec-agentic-credit §4.6: three trajectories of one task (A succeeds via s0→s1→s2, B fails with
# an invalid action at s1, C succeeds via the shortcut s0→s4).
EXAMPLE_ROWS: list[dict[str, Any]] = [
    {"group_id": "task", "traj_id": t, "step": s, "reward": r, "state": a, "next_state": b,
     "invalid": inv, "agent_id": 0}
    for t, s, r, a, b, inv in [
        ("A", 0, 0.0, "s0", "s1", False), ("A", 1, 0.0, "s1", "s2", False),
        ("A", 2, 10.0, "s2", "done", False), ("B", 0, 0.0, "s0", "s1", False),
        ("B", 1, 0.0, "s1", "s3", True), ("B", 2, 0.0, "s3", "s5", False),
        ("C", 0, 0.0, "s0", "s4", False), ("C", 1, 10.0, "s4", "done", False)]
]


REQUIRED_COLUMNS = ("group_id", "traj_id", "step", "reward")


def read_rollout_file(path: Path) -> list[dict[str, Any]]:
    """The row objects of a JSON Lines (or JSON, Parquet) rollout file, read by
    :func:`grouprl.data.read_records`: errors name the file and line."""
    rows = [record for _, record in read_records(str(path))]
    if not rows:
        raise ValueError(f"{path}: no rows (one JSON object per line, with "
                         f"{', '.join(REQUIRED_COLUMNS)})")
    return rows


def rows_to_batch(rows: list[dict[str, Any]]) -> RolloutBatch:
    """Columns from a list of row dicts; observations get exact shared ids."""
    if not rows:
        raise ValueError("rollout file: no rows")
    for name in REQUIRED_COLUMNS:
        if all(name not in r for r in rows):
            raise ValueError(f"{name}: required in every row (a rollout row needs "
                             f"{', '.join(REQUIRED_COLUMNS)}; optional: state, next_state, "
                             "success, invalid, agent_id)")

    def column(name: str) -> list[Any] | None:
        present = [name in r for r in rows]
        if not any(present):
            return None
        if not all(present):
            raise ValueError(f"{name}: missing in row {present.index(False)}; give it in every "
                             "row or in none")
        return [r[name] for r in rows]

    vocab: dict = {}
    state, next_state = column("state"), column("next_state")
    return RolloutBatch(
        group_id=column("group_id"), traj_id=column("traj_id"), step=column("step"),
        reward=column("reward"),
        state=None if state is None else state_ids(state, vocab),
        next_state=None if next_state is None else state_ids(next_state, vocab),
        success=column("success"), invalid=column("invalid"), agent_id=column("agent_id"))


ROW_OPTION_ESTIMATORS = ("canon",)


def _parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` with a YAML value: the grammar of config overrides."""
    if "=" not in text:
        raise SystemExit(f"--option: expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _advantages(args: argparse.Namespace) -> int:
    options = dict(_parse_option(o) for o in args.option)
    # estimators that need per-row tensors (canon's metric) only run when named with -e
    names = args.estimator or [n for n in available_estimators() if n not in ROW_OPTION_ESTIMATORS]
    try:
        if args.input:
            rows = read_rollout_file(Path(args.input))
        else:
            rows = EXAMPLE_ROWS
            print("built-in example: spec-agentic-credit §4.6 (rows A0 A1 A2 B0 B1 B2 C0 C1)",
                  file=sys.stderr if args.json else sys.stdout)
        batch = rows_to_batch(rows)
        results = {n: compute_advantages(n, batch, **options).tolist() for n in names}
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results))
        return 0
    width = max(len(n) for n in names)
    for name, values in results.items():
        print(f"{name:<{width}}  " + " ".join(f"{v:8.4f}" for v in values))
    return 0


def _bench(args: argparse.Namespace) -> int:
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "advantages.py"
    if not script.exists():
        print("error: benchmarks/advantages.py not found (run from a source checkout)",
              file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(script), *(["--quick"] if args.quick else [])])


def _split_config(items: list[str]) -> tuple[str | None, list[str]]:
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


CONFIG_CHECKS = {"rl": check_rl_config, "multiagent": check_rl_config,
                 "preference": validate_preference_config, "phgpo": check_phgpo_config,
                 "presafe": check_presafe_config}
"""The checks each recipe runs before any work (``check_rl_config`` hands a multi-agent config
to ``check_multiagent_config``)."""


def check_config(cfg: TrainConfig) -> None:
    """Every check a run does before any work (cross-key rules, algorithm options)."""
    CONFIG_CHECKS[cfg.mode](cfg)


def _config(args: argparse.Namespace) -> int:
    if args.reference:
        sys.stdout.write(config_reference())
        return 0
    if args.keys:
        print(format_keys())
        return 0
    config, overrides = _split_config(args.args)
    cfg = load_config(config, overrides)
    check_config(cfg)
    sys.stdout.write(dump_config(cfg))
    return 0


def _train(args: argparse.Namespace) -> int:
    if args.nproc is not None and not launched_by_torchrun():
        if args.nproc < 1:
            raise ConfigError(f"--nproc: {args.nproc} processes; give at least 1")
        if args.nproc > 1:                      # the same command, under torchrun
            return run_under_torchrun(args.nproc, args.argv)
    config, overrides = _split_config(args.args)
    if args.resume:
        if config is not None:
            raise ConfigError("--resume continues a run with its saved config; pass only "
                              "key=value overrides, not a config file")
        cfg = resume_config(args.resume, overrides, force=args.force, trusted=args.trust_run)
    else:
        if args.force:
            raise ConfigError("--force: only applies with --resume RUN_DIR")
        cfg = load_config(config, overrides)
    try:
        result = train(cfg, resume=bool(args.resume), force=args.force)
    except EnvFault as err:          # the recipe saved a checkpoint and said how to go on
        if args.debug:
            raise
        print(f"error: the environment failed too often: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if is_main_process():
            print("interrupted; resume with: grouprl train --resume " + str(cfg.run_dir),
                  file=sys.stderr)
        return 130
    finally:
        shutdown_distributed()       # torchrun: leave the process group cleanly
    if not is_main_process():        # rank 0 reports for the job
        return 0
    if cfg.mode == "preference":
        summary = {"run_dir": str(result.run_dir), "steps": result.iterations,
                   "heldout_reward_accuracy_before": result.success_before,
                   "heldout_reward_accuracy_after": result.success_after}
    elif cfg.mode == "presafe":
        summary = {"run_dir": str(result.run_dir), "steps": result.iterations,
                   "heldout_asr_proxy_before": result.success_before,
                   "heldout_asr_proxy_after": result.success_after}
    else:
        summary = {"run_dir": str(result.run_dir), "iterations": result.iterations,
                   "success_before_rl": result.success_before,
                   "success_after_rl": result.success_after}
    print(json.dumps(summary))
    return 0


EVAL_KEYS = {"preference": "eval/reward_accuracy", "multiagent": "val/avg@k, val/pass@k",
             "phgpo": "eval/match_rate, eval/match_rate_beta0"}


def _eval(args: argparse.Namespace) -> int:
    cfg = load_run_config(args.run_dir, args.overrides,  # eval.*, env.* … overrides
                          trusted=args.trust_run)
    if args.safety or cfg.mode == "presafe":      # held-out ASR proxy, over-refusal, accuracy
        _, model, tok, _, iteration = load_trained_policy(args.run_dir, args.checkpoint,
                                                          trusted=args.trust_run)
        print(json.dumps({"iteration": iteration, **evaluate_run_safety(cfg, model, tok)}))
        return 0
    if cfg.mode != "rl":
        raise ConfigError(f"mode: grouprl eval evaluates mode-rl runs in their env; a "
                          f"{cfg.mode} run logs its held-out metrics ({EVAL_KEYS[cfg.mode]}) in "
                          "metrics.jsonl during training (grouprl plot RUN_DIR); --safety "
                          "evaluates any run's policy on held-out safety prompts")
    _, model, tok, template, iteration = load_trained_policy(args.run_dir, args.checkpoint,
                                                             trusted=args.trust_run)
    routing = policy_routing(cfg, model, tok, iteration)       # PA-MoE: the router, greedy
    metrics = evaluate_run(cfg, model, tok, template, routing=routing.evaluation())
    print(json.dumps({"iteration": iteration, **metrics}))
    return 0


def _plot(args: argparse.Namespace) -> int:
    try:
        out = plot_run(args.run_dir, args.out)
    except (ImportError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    debug = "show the traceback of an input error instead of one line"
    parser = argparse.ArgumentParser(prog="grouprl", description="Group-based RL for LLM agents")
    parser.add_argument("--debug", action="store_true", help=debug)
    common = argparse.ArgumentParser(add_help=False)          # --debug after the command too
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug)
    sub = parser.add_subparsers(dest="command", required=True)
    command = functools.partial(sub.add_parser, parents=[common])
    tr = command("train", help="train a policy (no config = the built-in default)",
                 description="grouprl train [CONFIG.yaml] [key=value ...]",
                 formatter_class=argparse.RawDescriptionHelpFormatter,
                 epilog="config keys (key=value overrides; values are YAML; "
                        "`grouprl config RECIPE ...` prints the resolved config):\n"
                        + format_keys())
    tr.add_argument("args", nargs="*", metavar="CONFIG|key=value",
                    help="an optional YAML recipe, then overrides like rollout.group_size=4")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue the run saved in RUN_DIR")
    tr.add_argument("--nproc", type=int, metavar="N",
                    help="data parallel on this machine: relaunch under torchrun with N "
                    "processes (several machines: torchrun itself; docs/distributed.md)")
    tr.add_argument("--trust-run", action="store_true",
                    help="with --resume: allow the run's config.json to import an env class "
                    "('package.module:Class') or set model.trust_remote_code")
    tr.add_argument("--force", action="store_true",
                    help="with --resume: accept overrides of keys a resume may not change (the "
                         "error lists them); the change is recorded in RUN_DIR/config.json")
    tr.set_defaults(func=_train)
    cf = command("config", help="print the resolved config of a recipe plus overrides",
                 description="grouprl config [CONFIG.yaml] [key=value ...]: the config "
                 "a run would use, as YAML, after every check")
    cf.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    cf.add_argument("--keys", action="store_true", help="every key with its default and help")
    cf.add_argument("--reference", action="store_true",
                    help="the Markdown config reference (docs/config.md)")
    cf.set_defaults(func=_config)
    evp = command("eval", help="evaluate a run's latest checkpoint on held-out tasks")
    evp.add_argument("run_dir")
    evp.add_argument("overrides", nargs="*", metavar="key=value",
                     help="e.g. eval.episodes=256 eval.temperature=0")
    evp.add_argument("--trust-run", action="store_true",
                     help="allow the run's config.json to import an env class or set "
                     "model.trust_remote_code")
    evp.add_argument("--checkpoint", help="a checkpoint directory (default: the latest)")
    evp.add_argument("--safety", action="store_true",
                     help="the safety evaluation (docs/safety.md): ASR proxy on held-out "
                     "harmful prompts, over-refusal and accuracy on arithmetic (presafe.* "
                     "overrides choose the data); the default for a mode-presafe run")
    evp.set_defaults(func=_eval)
    pl = command("plot", help="PNG of success, return, loss, KL and entropy of a run")
    pl.add_argument("run_dir")
    pl.add_argument("-o", "--out", help="output PNG (default RUN_DIR/training.png)")
    pl.set_defaults(func=_plot)
    adv = command("advantages", help="compute advantages of a rollout file")
    adv.add_argument("input", nargs="?", help="JSON Lines rollout file (default: built-in example)")
    adv.add_argument("-e", "--estimator", action="append", choices=available_estimators(),
                     help="estimator name (repeatable; default: all)")
    adv.add_argument("-o", "--option", action="append", default=[],
                     help="estimator option key=value (YAML value), repeatable")
    adv.add_argument("--json", action="store_true", help="print a JSON object name → values")
    adv.set_defaults(func=_advantages)
    bench = command("bench", help="run the advantage-estimator benchmark")
    bench.add_argument("--quick", action="store_true")
    bench.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)   # --nproc relaunches it
    with warnings.catch_warnings():
        warnings.showwarning = _warning_line
        try:
            return args.func(args)
        except UserError as err:       # the user's input: one line, exit 2 (--debug: traceback)
            if args.debug:
                raise
            kind = "config error" if isinstance(err, ConfigError) else "error"
            print(f"{kind}: {err}", file=sys.stderr)
            return 2


_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """grouprl's own warnings (data dropped, prompts cut, ...) as one ``warning:`` line; other
    libraries' warnings as Python prints them."""
    if category.__module__.startswith("grouprl") or filename.startswith(_PACKAGE_DIR):
        print(f"warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


if __name__ == "__main__":
    sys.exit(main())
