"""Forward+backward time and peak memory of the policy losses and of ``token_logprobs``.

    python benchmarks/losses.py            # full run; writes docs/benchmarks.md "losses"
    python benchmarks/losses.py --quick    # small shapes, fewer repeats, no file written

Policy losses: every registered loss at (N, T) = (64, 4096) and (8, 32768) (the same 262k tokens
as one long-context or one many-rollout micro-batch), fp32 ``logp`` with gradient, per-sequence
advantages, right-padded rows of random length in [T/2, T], ``ℓ^old = ℓ^θ + 0.1·noise``. One
step is ``policy_loss(...)`` (metrics included: they cost one host sync) plus ``backward()``;
ratios are against ``ppo`` measured in the same run. ``ppo +IS`` adds token-level truncated
rollout IS from a ``rollout_logp``.

Log-probs: ``grouprl.losses.logprobs.token_logprobs`` (chunked; skipped if the module is absent)
against the naive ``torch.log_softmax(logits.float(), -1).gather(-1, labels)``, forward and
backward to the logits, at V = 32768.

Method. Every number comes from a fresh subprocess, two per row. Time (default allocator):
median wall time of ``--repeats`` steps after one warm-up step. Peak memory (a second process):
the extra resident memory of one step after the warm-up, read from Linux's peak-RSS counter:
the worker resets it (``/proc/self/clear_refs`` ← 5), runs the step, and reports
``VmHWM − VmRSS(before)``. That process starts glibc with a fixed ``MALLOC_MMAP_THRESHOLD_`` of
128 KiB, so every tensor buffer above that size is its own mmap and goes back to the OS when
freed: RSS then follows torch's live CPU allocations (``tracemalloc`` cannot see them). This
setting page-faults every fresh buffer, which is why time is measured separately. The step's
peak includes ``logp.grad`` (resp. the logits gradient), which every row allocates alike. Where
``clear_refs`` is not writable the worker falls back to ``ru_maxrss`` deltas (a lower bound).
With ``--device cuda`` memory is ``torch.cuda.max_memory_allocated`` above the allocated bytes
before the step. Threads: torch's default for the machine (``torch.get_num_threads()``, named in
the table caption).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import write_section  # noqa: E402

LOSSES = {  # label: (registry name, options)
    "ppo": ("ppo", {}),
    "ppo (dual clip, clip-higher)": ("ppo", {"dual_clip": 3.0, "clip_high": 0.28}),
    "ppo +IS (token TIS)": ("ppo", {"rollout_is": "token"}),
    "two_sided": ("two_sided", {}),
    "gspo": ("gspo", {}),
    "gspo_token": ("gspo_token", {}),
    "luspo": ("luspo", {}),
    "cispo": ("cispo", {}),
    "sapo": ("sapo", {}),
    "kpo (through_filter)": ("kpo", {}),
    "kpo (straight_through)": ("kpo", {"grad": "straight_through"}),
}
POLICY_SHAPES = [(64, 4096), (8, 32768)]
QUICK_SHAPES = [(8, 512)]


# ----------------------------------------------------------------------------------------------
# Worker (one measurement per process)
# ----------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _measure(step, leaf: torch.Tensor, repeats: int, device: str, what: str) -> dict:
    """``step()`` runs forward + backward into ``leaf.grad``, which is dropped before each step."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    step()                                                          # warm-up (caches, kernels)
    sync()
    leaf.grad = None                                                # the measured step allocates it
    if what == "time":
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
            leaf.grad = None
        return {"ms": statistics.median(times) * 1e3, "threads": torch.get_num_threads()}
    if device == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        sync()
        peak = torch.cuda.max_memory_allocated() - base
        method = "cuda"
    else:
        before_rss = _status_kib("VmRSS")
        before_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        hwm = _reset_peak() and _status_kib("VmHWM") is not None
        step()
        if hwm:
            peak = (_status_kib("VmHWM") - before_rss) * 1024
            method = "VmHWM"
        else:
            peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_max) * 1024
            method = "ru_maxrss"
    return {"peak_mib": max(peak, 0) / 2**20, "mem_method": method}


def worker_policy(name: str, options: dict, n: int, t: int, repeats: int, device: str,
                  what: str) -> dict:
    from grouprl.losses import policy_loss

    g = torch.Generator().manual_seed(0)
    logp = (-3 * torch.rand(n, t, generator=g)).to(device).requires_grad_()
    old = logp.detach() + 0.1 * torch.randn(n, t, generator=g).to(device)
    adv = torch.randn(n, generator=g).to(device)
    lengths = torch.randint(t // 2, t + 1, (n,), generator=g).to(device)
    mask = torch.arange(t, device=device)[None, :] < lengths[:, None]
    extra = {}
    if options.get("rollout_is"):
        extra["rollout_logp"] = old + 0.05 * torch.randn(n, t, generator=g).to(device)

    def step() -> None:
        loss, _ = policy_loss(name, logp, old, adv, mask, **extra, **options)
        loss.backward()

    return _measure(step, logp, repeats, device, what)


def worker_logprobs(method: str, dtype: str, n: int, t: int, v: int, repeats: int,
                    device: str, what: str) -> dict:
    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, t, v, generator=g, dtype=dt).to(device).requires_grad_()
    labels = torch.randint(0, v, (n, t), generator=g).to(device)
    if method == "token_logprobs":
        from grouprl.losses.logprobs import token_logprobs

        def forward() -> torch.Tensor:
            return token_logprobs(logits, labels)
    else:
        def forward() -> torch.Tensor:
            return torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).squeeze(-1)

    def step() -> None:
        forward().sum().backward()

    return _measure(step, logits, repeats, device, what)


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def spawn(job: dict) -> dict | None:
    """Time in one fresh process (default allocator), memory in another (fixed mmap threshold)."""
    result = {}
    for what in ("time", "memory"):
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        if what == "memory":
            env.update(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
        proc = subprocess.run([sys.executable, __file__, "--worker",
                               json.dumps({**job, "what": what})],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"  worker failed for {job}:\n{proc.stderr[-2000:]}", file=sys.stderr)
            return None
        result.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return result


def ratio_row(cells: list[str], res: dict, base: dict, ms_fmt: str, mib_fmt: str) -> str:
    """A table row: the label cells, then time and peak memory with their ratios to ``base``."""
    return ("| " + " | ".join(cells) + f" | {res['ms']:{ms_fmt}} | {res['ms'] / base['ms']:.2f} | "
            f"{res['peak_mib']:{mib_fmt}} | {res['peak_mib'] / max(base['peak_mib'], 1e-9):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes; no file written")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--logprob-shape", type=int, nargs=2, default=[4, 512], metavar=("N", "T"))
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        job = json.loads(args.worker)
        kind = job.pop("kind")
        result = worker_policy(**job) if kind == "policy" else worker_logprobs(**job)
        print(json.dumps(result))
        return

    shapes = QUICK_SHAPES if args.quick else POLICY_SHAPES
    repeats = args.repeats or (5 if args.quick else 31)
    threads = torch.get_num_threads()
    methods = set()

    header = ("| loss | N × T | fwd+bwd ms | × ppo | peak MiB | × ppo |\n"
              "|---|---|---:|---:|---:|---:|")
    lines = [header]
    print(header, flush=True)
    for n, t in shapes:
        base = None
        for label, (name, options) in LOSSES.items():
            res = spawn({"kind": "policy", "name": name, "options": options, "n": n, "t": t,
                         "repeats": repeats, "device": args.device})
            if res is None:
                line = f"| {label} | {n} × {t} | failed | | | |"
            else:
                methods.add(res["mem_method"])
                threads = res["threads"]
                base = base or res
                line = ratio_row([label, f"{n} × {t}"], res, base, ".2f", ".1f")
            lines.append(line)
            print(line, flush=True)
    policy_table = "\n".join(lines)

    n, t = (2, 128) if args.quick else args.logprob_shape
    v = 4096 if args.quick else args.vocab
    header = ("| log-probs | logits dtype | N × T × V | fwd+bwd ms | × naive | peak MiB | "
              "× naive |\n|---|---|---|---:|---:|---:|---:|")
    lines = [header]
    print("\n" + header, flush=True)
    for dtype in ("bfloat16", "float32"):
        base = None
        for method in ("naive log_softmax(float)", "token_logprobs"):
            res = spawn({"kind": "logprobs", "method": method, "dtype": dtype, "n": n, "t": t,
                         "v": v, "repeats": max(3, repeats // 3), "device": args.device})
            if res is None:
                continue
            methods.add(res["mem_method"])
            base = base or res
            line = ratio_row([method, dtype, f"{n} × {t} × {v}"], res, base, ".1f", ".0f")
            lines.append(line)
            print(line, flush=True)
    logprob_table = "\n".join(lines)

    if args.quick:
        return
    body = (
        "## Losses\n\n"
        "`python benchmarks/losses.py`. Forward + backward of `policy_loss` (metrics included) "
        f"on {args.device.upper()}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {threads} torch threads (the machine "
        "default). Each row runs in fresh subprocesses: time is the median wall time of "
        f"{repeats} steps after one warm-up; peak memory, measured in a separate process, is "
        f"the extra resident memory of one step after the warm-up ({', '.join(sorted(methods))}:"
        " Linux peak RSS reset through `/proc/self/clear_refs` before the step, glibc "
        "`MALLOC_MMAP_THRESHOLD_=131072` so freed tensor buffers return to the OS), including "
        "the (N, T) gradient of `logp`. Ratios are against `ppo` (resp. the naive log-softmax) "
        "in the same run. Rows: right-padded, lengths uniform in [T/2, T], per-sequence "
        "advantages, `|ℓ^θ − ℓ^old| ~ 0.1`; each loss with its defaults (its own aggregation; "
        "kpo: `method=\"auto\"`).\n\n"
        + policy_table + "\n\n"
        + "`token_logprobs` against `torch.log_softmax(logits.float(), -1).gather(...)`, "
        "forward + backward to the logits (the logits gradient is included in both).\n\n"
        + logprob_table + "\n")
    write_section("losses", body, args.output)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
