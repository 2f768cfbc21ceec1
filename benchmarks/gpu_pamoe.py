"""Device check of PA-MoE (spec-seed-systems §3.6): 2 iterations, E = 4 experts, hard routing,
on the given device; asserts finite losses, stored = recomputed log-probs, every expert used.

    python benchmarks/gpu_pamoe.py                                    # cuda, SmolLM2 (built in)
    python benchmarks/gpu_pamoe.py --device cpu --model tiny          # CPU dry run (~1 minute)
    python benchmarks/gpu_pamoe.py --model /models/Qwen2.5-1.5B-Instruct --dtype bfloat16

Checks (exit 1 on a failure, a line per check either way):

- every logged ``actor/pg_loss`` and ``actor/grad_norm`` is finite;
- ``actor/sampler_logp_gap`` (token mean |ℓ^rollout − ℓ^recomputed| under the stored experts)
  is at most ``--gap`` (1e-5 in float32; bf16 rounding allows more: pass ``--gap 0.05``);
- at T_0 = 1 the router (zero-initialised: q uniform) sends rows to every expert in the first
  iteration (``router/usage/expert_<e>`` > 0 for e < 4).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from grouprl.recipes import train  # noqa: E402
from grouprl.train.config import load_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="builtin:smollm2-135m-instruct",
                   help="'tiny', builtin:NAME or a local HF model directory")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--gap", type=float, default=1e-5)
    args = p.parse_args(argv)
    real = args.model != "tiny"
    model = ([f"model.path={args.model}", "bc.enabled=false", "agent.use_chat_template=true",
              "model.pamoe.rank=16", "rollout.max_new_tokens=24"] if real else
             ["bc.episodes=20", "bc.epochs=1"])
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(ROOT / "configs" / "pamoe_sokoban.yaml", [
            *model, f"run_dir={tmp}/run", f"model.device={args.device}",
            f"model.dtype={args.dtype}", "iterations=2", "eval.every=0", "eval.episodes=8",
            "save_every=0", "logging.progress=false", "model.pamoe.num_experts=4",
            "model.pamoe.temperature_init=1.0", "rollout.groups_per_batch=8",
            "rollout.group_size=4"])
        rows = [r for r in train(cfg, echo=print).metrics if "actor/updates" in r]
    checks = {
        "finite losses": all(math.isfinite(r["actor/pg_loss"]) and
                             math.isfinite(r["actor/grad_norm"]) for r in rows),
        f"stored = recomputed log-probs (gap <= {args.gap:g})":
            all(r.get("actor/sampler_logp_gap", 0.0) <= args.gap for r in rows),
        "every expert used at T_0 = 1": all(rows[0].get(f"router/usage/expert_{e}", 0.0) > 0
                                            for e in range(4)),
    }
    for name, ok in checks.items():
        print(f"[gpu_pamoe] {'PASS' if ok else 'FAIL'}: {name}")
    print("[gpu_pamoe] gaps:", [round(r.get("actor/sampler_logp_gap", float("nan")), 8)
                                for r in rows])
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
