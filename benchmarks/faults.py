"""Fault-injection soak: does any fault lose or repeat a completed iteration?

One command::

    .venv/bin/python benchmarks/faults.py                 # ~1–2 min on 2 CPU cores
    .venv/bin/python benchmarks/faults.py --iterations 40 --kills 6 --seed 1

A tiny RL run on the built-in faulty env (``grouprl.envs.testing:FaultyEnv``, process backend):
each env step raises with probability ``--raise-prob``, hangs past ``env.step_timeout`` with
``--hang-prob`` and returns a NaN reward with ``--nan-prob`` (seeded); on top of that the whole
training process is killed with SIGKILL ``--kills`` times at random moments (seeded) and resumed
with ``grouprl train --resume`` until the run completes. Afterwards the benchmark checks the
run's ``metrics.jsonl``: iterations 1..N each exactly once and in order (nothing lost or repeated),
one pre-training evaluation, every value finite; and prints a table of what happened: iterations
completed, kills, resumes, trajectories dropped (env failures, non-finite rewards), env restarts,
and the wall time. Exit code 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.tiny.vocab_size=300", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
        "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1",
        "model.tiny.intermediate_size=64", "model.tiny.tokenizer_episodes=10",
        "logging.progress=false", "threads=1"]


def run_args(args: argparse.Namespace, run_dir: Path) -> list[str]:
    kwargs = (f"{{episode_length: 2, raise_prob: {args.raise_prob}, hang_prob: {args.hang_prob}, "
              f"nan_prob: {args.nan_prob}, hang_seconds: 60, fault_seed: {args.seed}}}")
    return [*TINY, "env.name=grouprl.envs.testing:FaultyEnv", f"env.kwargs={kwargs}",
            "env.backend=process", "env.step_timeout=0.5", "env.max_steps=2",
            "agent.template=default", "rollout.groups_per_batch=4", "rollout.group_size=4",
            "rollout.max_new_tokens=4", "bc.episodes=8", "bc.epochs=1",
            f"iterations={args.iterations}", "eval.episodes=4", "eval.every=10", "save_every=1",
            f"seed={args.seed}", f"run_dir={run_dir}"]


def launch(argv: list[str], log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "grouprl", "train", *argv], stdout=log,
                            stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the trainer and its env workers (one process group), like a power cut."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def soak(args: argparse.Namespace, run_dir: Path) -> dict[str, float]:
    rng = random.Random(args.seed)
    kills = resumes = 0
    t0 = time.perf_counter()
    with open(run_dir.parent / "soak.log", "ab") as log:
        proc = launch(run_args(args, run_dir), log)
        while True:
            deadline = time.perf_counter() + rng.uniform(args.min_gap, args.max_gap) \
                if kills < args.kills else None
            while proc.poll() is None and (deadline is None or time.perf_counter() < deadline):
                time.sleep(0.05)
            if proc.poll() is None:                   # still running at the kill moment
                kill_group(proc)
                kills += 1
            elif proc.returncode != 0:
                raise SystemExit(f"training exited with {proc.returncode}; see "
                                 f"{run_dir.parent / 'soak.log'}")
            elif completed(run_dir) == args.iterations:
                break
            resumes += 1
            proc = launch(["--resume", str(run_dir), "--trust-run"], log)  # its env is an import
    return {"kills": kills, "resumes": resumes, "wall_s": time.perf_counter() - t0}


def records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def completed(run_dir: Path) -> int:
    its = [r["iteration"] for r in records(run_dir) if "train/rows" in r]
    return its[-1] if its else 0


def check(run_dir: Path, iterations: int) -> tuple[dict[str, float], list[str]]:
    rows = records(run_dir)
    its = [r for r in rows if "train/rows" in r]
    problems = []
    order = [r["iteration"] for r in its]
    if order != list(range(1, iterations + 1)):
        problems.append(f"iterations logged {order}, expected 1..{iterations} once each")
    pre = [r for r in rows if r["iteration"] == 0 and "eval/success_rate" in r]
    if len(pre) != 1:
        problems.append(f"{len(pre)} pre-training evaluations logged, expected 1")
    bad = [(r["iteration"], k) for r in rows for k, v in r.items()
           if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        problems.append(f"non-finite metrics: {bad[:5]}")
    last = its[-1] if its else {}
    return ({"iterations": float(len(its)),
             "failed_trajectories": float(sum(r.get("train/failed_trajectories", 0)
                                              for r in its)),
             "nonfinite_reward_trajectories": float(sum(
                 r.get("train/nonfinite_reward_trajectories", 0) for r in its)),
             "env_failures_total": float(last.get("env/failures_total", 0)),
             "rows": float(sum(r.get("train/rows", 0) for r in its))}, problems)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--kills", type=int, default=4, help="SIGKILLs of the training process")
    p.add_argument("--min-gap", type=float, default=3.0, help="seconds before a kill, at least")
    p.add_argument("--max-gap", type=float, default=9.0, help="... at most")
    p.add_argument("--raise-prob", type=float, default=0.05)
    p.add_argument("--hang-prob", type=float, default=0.02)
    p.add_argument("--nan-prob", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="run directory (default: a temporary one)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.out) if args.out else Path(tmp) / "run"
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        events = soak(args, run_dir)
        found, problems = check(run_dir, args.iterations)
    print(f"fault soak: {args.iterations} iterations, step faults raise {args.raise_prob:.0%} / "
          f"hang {args.hang_prob:.0%} / NaN {args.nan_prob:.0%}, {args.kills} SIGKILLs, "
          f"seed {args.seed}")
    print("| measure | value |\n|---|---|")
    for key, value in {**events, **found}.items():
        print(f"| {key} | {value:.1f} |" if key == "wall_s" else f"| {key} | {value:.0f} |")
    dropped = found["failed_trajectories"] + found["nonfinite_reward_trajectories"]
    print(f"| dropped / rolled-out trajectories | {dropped:.0f} / {args.iterations * 16} |")
    for line in problems:
        print(f"FAIL: {line}")
    print("result: " + ("every completed iteration logged once, in order" if not problems
                        else "FAILED"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
