"""Data-parallel scaling of the RL recipe on this machine, and a model of the 8-GPU case.

    python benchmarks/scaling.py [--iterations 6] [--smoke] [--write] [--docs PATH]

Three runs of ``grouprl train`` on the tiny Sokoban default, one after the other, each under
``torchrun --standalone`` (nothing else may run: the numbers are wall-clock):

* ``W=1 × 1 thread``: one process, ``OMP_NUM_THREADS=1`` (the per-rank unit);
* ``W=1 × 2 threads``: one process on both cores (the fair single-process baseline on 2 cores);
* ``W=2 × 1 thread``: two ranks (gloo), one thread each, the same global batch.

Per run, from its ``metrics.jsonl`` (iteration 1 skipped as warm-up): mean ``timing/
iteration_s`` (the slowest rank's rollout + advantages + update; evaluation excluded), its
rollout / update parts, ``train/rows`` (env steps, all ranks) and env steps/s = Σ rows / Σ
iteration seconds. Ranks sample different episodes than one process (rank r > 0 has its own
stream), so steps per iteration differ a little between runs; steps/s accounts for that.

* **parallel efficiency** = steps/s(W=2) / (2 × steps/s(W=1 × 1 thread));
* **speed-up on the same cores** = steps/s(W=2) / steps/s(W=1 × 2 threads).

**Communication** (W=2): ``benchmarks/scaling_worker.py`` wraps every collective of
:class:`grouprl.distributed.comm.ProcessGroupComm` and counts calls and payload bytes per rank,
per iteration and per recipe step (its docstring defines the bytes); the gradient all-reduce is
checked against ``trainable parameter bytes × optimizer steps``.

**The 8-GPU case** is a model, not a measurement (:func:`paper_model`): the bytes each rank
moves per iteration for Qwen2.5-1.5B and 7B in bf16 at W = 8 with ring collectives, replicated
(one gradient all-reduce per optimizer step) vs FSDP2 (all-gather + reduce-scatter per layer per
micro-batch), with the arithmetic written out.

``--write`` replaces the ``scaling`` section of docs/benchmarks.md (``--docs PATH``: another
file); ``--smoke`` is a tiny budget that proves the pipeline (its numbers mean nothing, and it
refuses to write docs/benchmarks.md itself).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from grouprl.train.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import DEFAULT, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "scaling_worker.py"

RUNS = (("W=1 × 1 thread", 1, 1), ("W=1 × 2 threads", 1, 2), ("W=2 × 1 thread", 2, 1))
"""(label, processes, threads per process)."""

CONFIG = ["rollout.groups_per_batch=8", "rollout.group_size=4", "eval.every=0",
          "eval.episodes=8", "bc.episodes=50", "bc.epochs=2", "model.tiny.tokenizer_episodes=50",
          "save_every=0", "logging.progress=false"]
"""The fixed config on top of the built-in default (tiny Qwen2 policy, Sokoban 5×5, GiGPO,
PPO-clip, 2 mini-batches)."""

SMOKE = ["rollout.groups_per_batch=2", "rollout.group_size=2", "rollout.max_new_tokens=6",
         "env.max_steps=2", "eval.every=0", "eval.episodes=2", "bc.episodes=4", "bc.epochs=1",
         "model.tiny.vocab_size=300", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
         "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1", "model.tiny.intermediate_size=64",
         "model.tiny.tokenizer_episodes=10", "save_every=0", "logging.progress=false"]

CATEGORIES = ("grad_allreduce", "learner", "logprobs", "rollout", "advantages", "metrics",
              "other")
"""Per-iteration categories (scaling_worker.py); eval, checkpoint and setup are reported apart."""

QWEN = (("Qwen2.5-1.5B", 1.54e9, 28, 1536, 256), ("Qwen2.5-7B", 7.61e9, 28, 3584, 512))
"""(name, parameters, layers, hidden size, key/value width = KV heads × 128) from the Qwen2.5
model cards (1.5B: 12 query / 2 KV heads; 7B: 28 / 4)."""


# ----------------------------------------------------------------------------- measuring
def run_one(label: str, nproc: int, threads: int, overrides: list[str], work: Path,
            timeout: float) -> dict:
    """One ``torchrun`` of the counting worker; its metrics and per-rank counts."""
    name = f"w{nproc}_t{threads}"
    run_dir, counts = work / name, work / f"{name}.counts"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TORCHELASTIC_ERROR_FILE": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                       os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(WORKER), "--counts", str(counts), "train",
           *overrides, f"threads={threads}", f"run_dir={run_dir}"]
    print(f"{label}: {' '.join(cmd[3:])}", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=ROOT)
    except subprocess.TimeoutExpired as err:
        raise SystemExit(f"{label}: timed out after {timeout:.0f} s\n{err.stderr or ''}") \
            from None
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{label}: exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-5000:]}")
    ranks = [json.loads(Path(f"{counts}.rank{r}.json").read_text()) for r in range(nproc)]
    return {"label": label, "nproc": nproc, "threads": threads, "wall": wall,
            "metrics": read_metrics(run_dir), "ranks": ranks}


def timed_records(metrics: list[dict], skip: int) -> list[dict]:
    """The iteration records after the first ``skip`` (warm-up)."""
    rows = [r for r in metrics if r.get("timing/iteration_s") is not None]
    return [r for r in rows if r["iteration"] > skip]


def throughput(run: dict, skip: int) -> dict:
    recs = timed_records(run["metrics"], skip)
    if not recs:
        raise SystemExit(f"{run['label']}: no iteration after the {skip} warm-up one(s); "
                         "raise --iterations")
    secs = sum(r["timing/iteration_s"] for r in recs)
    rows = sum(r["train/rows"] for r in recs)
    mean = lambda key: sum(r.get(key, 0.0) for r in recs) / len(recs)  # noqa: E731
    return {"iterations": [r["iteration"] for r in recs], "iter_s": secs / len(recs),
            "rollout_s": mean("timing/rollout_s"), "update_s": mean("timing/update_s"),
            "rows": rows / len(recs), "steps_s": rows / secs, "updates": mean("actor/updates")}


def comm_volume(run: dict, iterations: list[int]) -> dict:
    """Per category: calls and payload bytes per iteration per rank (mean over ranks and
    ``iterations``); ``once``: setup, eval and checkpoint totals over the run per rank."""
    per: dict[str, list[float]] = {c: [0.0, 0.0] for c in CATEGORIES}
    once: dict[str, list[float]] = {c: [0.0, 0.0] for c in ("setup", "eval", "checkpoint")}
    ops: dict[str, set[str]] = {}
    n_ranks = len(run["ranks"])
    for rank in run["ranks"]:
        for it, cats in rank["counts"].items():
            for cat, by_op in cats.items():
                calls = sum(c for c, _ in by_op.values())
                nbytes = sum(b for _, b in by_op.values())
                if cat in once:
                    once[cat][0] += calls / n_ranks
                    once[cat][1] += nbytes / n_ranks
                elif int(it) in iterations:
                    per[cat][0] += calls / n_ranks / len(iterations)
                    per[cat][1] += nbytes / n_ranks / len(iterations)
                    ops.setdefault(cat, set()).update(by_op)
    return {"per": per, "once": once, "ops": ops,
            "param_bytes": run["ranks"][0]["param_bytes"], "params": run["ranks"][0]["params"]}


# ---------------------------------------------------------------------------- the model
def fmt_bytes(n: float) -> str:
    """Decimal units (1 GB = 1e9 B)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} B"


def lora_params(layers: int, hidden: int, kv: int, rank: int = 8) -> int:
    """LoRA parameters on q, k, v, o: ``r · (d_in + d_out)`` per adapted matrix."""
    return layers * rank * ((hidden + hidden) * 2 + (hidden + kv) * 2)


def paper_model(world: int = 8, nbytes: int = 2, rows: int = 6400, mini: int = 4,
                epochs: int = 1, micro: int = 16, busbw: float = 400e9,
                control_bytes: float | None = None) -> str:
    """The bytes each rank sends per RL iteration at world size ``world`` (ring collectives:
    an all-gather or reduce-scatter of ``X`` bytes sends ``X·(W−1)/W`` per rank, an all-reduce
    twice that), for replicated weights and FSDP2 (module docstring); a markdown section."""
    W, b, R, M, E, m = world, nbytes, rows, mini, epochs, micro
    frac = f"{W - 1}/{W}"
    per_rank_mb = math.ceil(R / (W * M * m))        # micro-batches per rank per mini-batch
    k = E * M * per_rank_mb                          # training passes per rank per iteration
    fwd = math.ceil(R / (W * m)) if E * M > 1 else 0  # old-log-prob forwards per rank
    lines = [
        f"**The {W}-GPU case: a model, not a measurement.** Bytes each rank sends per RL "
        f"iteration, {W} ranks, bf16 (b = {b} bytes per parameter or gradient), ring "
        f"collectives (an all-gather or a reduce-scatter of X bytes sends X·(W−1)/W per rank, "
        f"an all-reduce 2·X·(W−1)/W). Assumed batch: R = {R:,} rows per iteration (16 tasks × 8 "
        f"episodes × up to 50 steps), E = {E} epoch(s) × M = {M} mini-batches (optimizer "
        f"steps), micro-batches of m = {m} rows per GPU: each rank runs ⌈R/(W·M·m)⌉ = "
        f"{per_rank_mb} micro-batches per mini-batch, k = E·M·{per_rank_mb} = {k} per "
        f"iteration. Time = bytes ÷ an assumed bus bandwidth of {busbw / 1e9:.0f} GB/s "
        "(an 8-GPU NVLink node; not measured here).",
        "",
        "| model | scheme | what is communicated per rank per iteration | arithmetic | bytes "
        "| time at the assumed bandwidth |",
        "|---|---|---|---|---:|---:|",
    ]
    for name, P, L, hidden, kv in QWEN:
        S = P * b * (W - 1) / W                      # one ring all-gather / reduce-scatter
        p = f"{P / 1e9:.2f}e9"
        buckets = math.ceil(P * b / (64 * 2**20))
        rep = E * M * 2 * S
        lora = lora_params(L, hidden, kv)
        lora_b = E * M * 2 * lora * b * (W - 1) / W
        train = 3 * k * S
        old = fwd * S
        gen = S
        rows_ = [
            ("replicated", f"{E * M} gradient all-reduce(s), one per optimizer step, in "
             f"⌈P·b / 64 MiB⌉ = {buckets} buckets", f"{E}·{M} × 2 × {p} × {b} B × {frac}", rep),
            ("replicated LoRA r=8 (q,k,v,o)", f"{E * M} all-reduce(s) of the {lora / 1e6:.2f}M "
             "adapter gradients", f"{E}·{M} × 2 × {lora:,} × {b} B × {frac}", lora_b),
            ("FSDP2: update", f"{k} micro-batches × ({2 * L + 1} all-gathers: each layer in "
             f"forward and backward, the root once; {L + 1} reduce-scatters: {L} layers + root)",
             f"{k} × 3 × {p} × {b} B × {frac}", train),
            ("FSDP2: old log-probs", f"{fwd} forward-only micro-batches (needed when E·M > 1) "
             "× all-gathers", f"{fwd} × {p} × {b} B × {frac}", old),
            ("FSDP2: generation", "one all-gather (unshard) for the whole rollout",
             f"1 × {p} × {b} B × {frac}", gen),
            ("FSDP2: total", "", f"({3 * k} + {fwd} + 1) × {p} × {b} B × {frac}",
             train + old + gen),
        ]
        for scheme, what, arith, value in rows_:
            lines.append(f"| {name} | {scheme} | {what} | {arith} | {fmt_bytes(value)} | "
                         f"{1e3 * value / busbw:,.1f} ms |")
    ctrl = (f"measured above at W = 2: {fmt_bytes(control_bytes)} per iteration"
            if control_bytes is not None else "measured above at W = 2")
    mem = {name: 16 * P / 1e9 for name, P, *_ in QWEN}
    lines += [
        "",
        "How it grows: replicated ∝ P · E · M, independent of the batch (one all-reduce per "
        "optimizer step); FSDP2 ∝ P · (3·E·M·⌈R/(W·M·m)⌉ + ⌈R/(W·m)⌉ + 1) ≈ P · 4R/(W·m) for "
        "large batches, i.e. linear in the batch and inverse in the micro-batch size (FSDP2 "
        "reduce-scatters after every micro-batch's backward; grouprl's learner does not defer "
        "it to the last micro-batch). The root unit (embeddings, final norm, output layer) "
        "stays gathered between forward and backward (FSDP2's default, which "
        "`grouprl.distributed.fsdp.gathered` restores after a rollout), so 3·P per "
        "micro-batch slightly over-counts it. Control traffic (global token and sequence counts, "
        "non-finite flag and summed losses per mini-batch, a few small all-gathers of metrics "
        f"and row counts per iteration) is O(1) per mini-batch and independent of P: {ctrl}. "
        "Rollouts and evaluation exchange only counts and small metric dicts (a few KB).",
        "",
        f"Memory decides more than bandwidth: full fine-tuning with float32 parameters, "
        f"gradients and AdamW state takes 16 B per parameter, {mem['Qwen2.5-1.5B']:.0f} GB for "
        f"1.5B (replicated fits one GPU) and {mem['Qwen2.5-7B']:.0f} GB for 7B (more than an "
        "80 GB GPU before activations: FSDP2's case, or LoRA, which stays replicated). With "
        "float32 gradients (grouprl's default `model.dtype`) every byte count above doubles.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- reporting
def report(runs: list[dict], skip: int, overrides: list[str], smoke: bool,
           model_args: dict) -> str:
    tp = {r["label"]: throughput(r, skip) for r in runs}
    base1, base2, dp = (tp[label] for label, *_ in RUNS)
    eff = dp["steps_s"] / (2 * base1["steps_s"])
    speedup = dp["steps_s"] / base2["steps_s"]
    two = next(r for r in runs if r["nproc"] == 2)
    vol = comm_volume(two, tp[two["label"]]["iterations"])
    today = datetime.date.today().isoformat()
    head = "## Data-parallel scaling (`benchmarks/scaling.py`)"
    lines = [head, ""]
    if smoke:
        lines += ["**SMOKE RUN (`--smoke`): a tiny budget that only proves the pipeline; the "
                  "numbers below mean nothing.**", ""]
    lines += [
        f"`grouprl train` on the tiny Sokoban default with `{' '.join(overrides)}`, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, Python "
        f"{platform.python_version()}, {today}. Each run under `torchrun --standalone`, "
        "`OMP_NUM_THREADS` = threads per process; means over iterations "
        f"{tp[RUNS[0][0]]['iterations'][0]}–{tp[RUNS[0][0]]['iterations'][-1]} (iteration 1 "
        "is warm-up); iteration time = the slowest rank's rollout + advantages + update "
        "(evaluation excluded).",
        "",
        "| run | iteration s | rollout s | update s | env steps / iteration | env steps/s | "
        "vs W=1 × 1 thread | job wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        t = tp[run["label"]]
        lines.append(f"| {run['label']} | {t['iter_s']:.2f} | {t['rollout_s']:.2f} | "
                     f"{t['update_s']:.2f} | {t['rows']:.1f} | {t['steps_s']:.1f} | "
                     f"{t['steps_s'] / base1['steps_s']:.2f}× | {run['wall']:.1f} |")
    lines += [
        "",
        f"Parallel efficiency = steps/s(W=2) / (2 × steps/s(W=1 × 1 thread)) = "
        f"{dp['steps_s']:.1f} / (2 × {base1['steps_s']:.1f}) = **{eff:.2f}**. Speed-up on the "
        f"same 2 cores over one process with 2 threads = {dp['steps_s']:.1f} / "
        f"{base2['steps_s']:.1f} = **{speedup:.2f}×**.",
        "",
        "**Communication at W = 2**, per iteration per rank (mean over the ranks and the timed "
        "iterations; payload bytes = the tensor all-reduced, or the pickled objects gathered or "
        "broadcast, which is what a ring moves per rank at W = 2; counted by wrapping "
        "`ProcessGroupComm`, `benchmarks/scaling_worker.py`):",
        "",
        "| recipe step | collectives | calls / iteration | bytes / iteration | share |",
        "|---|---|---:|---:|---:|",
    ]
    total = sum(v[1] for v in vol["per"].values())
    for cat in CATEGORIES:
        calls, nbytes = vol["per"][cat]
        if calls:
            lines.append(f"| {cat} | {', '.join(sorted(vol['ops'].get(cat, ())))} | "
                         f"{calls:.1f} | {fmt_bytes(nbytes)} | "
                         f"{100 * nbytes / total if total else 0:.1f}% |")
    grad = vol["per"]["grad_allreduce"][1]
    rest = total - grad
    expected = vol["param_bytes"] * dp["updates"]
    lines += [
        f"| **total** | | {sum(v[0] for v in vol['per'].values()):.1f} | "
        f"**{fmt_bytes(total)}** | 100% |",
        "",
        f"Gradient all-reduce: {fmt_bytes(grad)} per iteration = trainable parameter bytes "
        f"({vol['params']:,} float32 parameters, {fmt_bytes(vol['param_bytes'])}) × "
        f"{dp['updates']:.1f} optimizer steps = {fmt_bytes(expected)} expected; everything else "
        f"{fmt_bytes(rest)} ({100 * rest / total if total else 0:.2f}%). Once per run: "
        f"setup (rank 0's weights broadcast, rank 0 first) {fmt_bytes(vol['once']['setup'][1])}; "
        f"evaluations (before RL and at the end) {fmt_bytes(vol['once']['eval'][1])}; "
        f"checkpoint {fmt_bytes(vol['once']['checkpoint'][1])}.",
        "",
        paper_model(control_bytes=rest, **model_args),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=6, help="RL iterations per run (the "
                    "first is warm-up)")
    ap.add_argument("--smoke", action="store_true", help="tiny budget: proves the pipeline")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for every run")
    ap.add_argument("--work", type=Path, help="directory for the runs (default: a temporary "
                    "one, removed)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    ap.add_argument("--write", action="store_true", help="write the scaling section")
    ap.add_argument("--docs", type=Path, default=DEFAULT, help="file --write updates")
    ap.add_argument("--model-rows", type=int, default=6400, help="model: rows per iteration")
    ap.add_argument("--model-mini-batches", type=int, default=4)
    ap.add_argument("--model-micro", type=int, default=16, help="model: rows per micro-batch")
    ap.add_argument("--model-world", type=int, default=8)
    ap.add_argument("--busbw", type=float, default=400.0, help="model: assumed GB/s")
    args = ap.parse_args(argv)
    if args.smoke and args.write and args.docs.resolve() == DEFAULT.resolve():
        ap.error("--smoke --write would put smoke numbers into docs/benchmarks.md; give "
                 "--docs PATH")
    iterations = 2 if args.smoke else args.iterations
    overrides = [*(SMOKE if args.smoke else CONFIG), f"iterations={iterations}", *args.set]
    model_args = {"rows": args.model_rows, "mini": args.model_mini_batches,
                  "micro": args.model_micro, "world": args.model_world,
                  "busbw": args.busbw * 1e9}
    with tempfile.TemporaryDirectory(prefix="grouprl-scaling-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        runs = [run_one(label, nproc, threads, overrides, work, args.timeout)
                for label, nproc, threads in RUNS]
        text = report(runs, 1, overrides, args.smoke, model_args)
    print(text)
    if args.write:
        write_section("scaling", text, args.docs)
        print(f"wrote the scaling section of {args.docs}")


if __name__ == "__main__":
    main()
