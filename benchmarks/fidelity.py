"""Fidelity study: do GiGPO, HGPO and GraphGPO beat GRPO inside grouprl, as their papers report?

    python benchmarks/fidelity.py                 # the whole study (~90 min on 2 CPU cores)
    python benchmarks/fidelity.py --report-only   # rewrite docs/results.md from cached runs

For every environment: one behaviour-cloning warm start (the same checkpoint for every method and
seed), then RL with each method × seed under the same rollout budget (iterations × tasks × group
size). Each run is the ordinary trainer (:func:`grouprl.train.train`) with one estimator swapped;
everything else — loss (PPO-clip, 2 mini-batches), learning rate, entropy bonus, prompts, eval
tasks — is equal. Measured per run: held-out success every ``eval.every`` iterations, env steps,
wall time, the step-group statistics of :func:`grouprl.advantages.grouping_stats` (how often
states repeat inside a task group) and the advantage statistics.

Resumable: a run's directory name carries a hash of its resolved config and of the warm start's
config; a finished run leaves ``summary.json`` and is never run again, an interrupted one is
resumed from its last checkpoint (``save_every``). Runs go to ``--workers`` processes with one
torch thread each.

Scaling up (same script): ``--seeds 5``, ``--iterations 200``, ``--set model.device=cuda``,
``--set model.tiny.hidden_size=256 --set model.tiny.num_layers=8`` or
``--set model.path=/models/Qwen2.5-0.5B-Instruct --set model.lora.enabled=true``, larger rollouts
with ``--set rollout.groups_per_batch=16``; 6×6 Sokoban with
``--set env.kwargs.dim_room=[6,6] --set env.kwargs.max_solution_length=null``. Overrides enter
the config hash, so scaled runs never mix with the default ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STUDY_VERSION = 1   # bump when the protocol changes, so cached runs are not reused

# ------------------------------------------------------------------------------------ protocol
METHODS: dict[str, dict[str, Any]] = {
    # The released defaults of each method (spec-agentic-credit.md §1–§4); γ = 0.95 everywhere.
    "grpo": {"estimator": "grpo", "estimator_options": {"mode": "mean_std_norm"}},
    "gigpo": {"estimator": "gigpo",
              "estimator_options": {"gamma": 0.95, "step_weight": 1.0, "mode": "mean_norm"}},
    "hgpo_k2": {"estimator": "hgpo",
                "estimator_options": {"gamma": 0.95, "history_length": 2, "alpha": 1.0,
                                      "base_group": False}},
    "hgpo_k4": {"estimator": "hgpo",
                "estimator_options": {"gamma": 0.95, "history_length": 4, "alpha": 1.0,
                                      "base_group": False}},
    "graphgpo": {"estimator": "graphgpo", "estimator_options": {}},
}
LABELS = {"grpo": "GRPO", "gigpo": "GiGPO", "hgpo_k2": "HGPO K=2", "hgpo_k4": "HGPO K=4",
          "graphgpo": "GraphGPO"}


@dataclass
class EnvStudy:
    """One environment of the study: a recipe plus the overrides that set the budget."""

    name: str
    title: str
    recipe: str
    overrides: dict[str, Any]
    papers: dict[str, str]          # method → the papers' figure on their benchmark
    paper_note: str
    requires: tuple[str, ...] = ()  # modules that must import (optional extras)
    notes: list[str] = field(default_factory=list)


ENVS: dict[str, EnvStudy] = {
    "sokoban": EnvStudy(
        name="sokoban", title="Sokoban 5×5, 1 box, solutions ≤ 2 moves, 4 steps",
        recipe="configs/sokoban_gigpo.yaml",
        overrides={"iterations": 30, "save_every": 6, "eval": {"episodes": 128, "every": 6}},
        papers={"grpo": "67.1", "gigpo": "76.92", "graphgpo": "86.98"},
        paper_note="GraphGPO paper, Sokoban 6×6, Qwen2.5-VL-3B (spec §4.5); HGPO did not "
                   "report Sokoban"),
    "twx_coin": EnvStudy(
        name="twx_coin", title="TextWorldExpress coin, 3 rooms, no doors, 10 steps",
        recipe="configs/textworld_coin_gigpo.yaml",
        overrides={"iterations": 10, "save_every": 5, "env": {"max_steps": 10},
                   "eval": {"episodes": 32, "every": 5}},
        papers={"grpo": "72.8", "gigpo": "86.7", "hgpo_k2": "(+2.6 over GiGPO)",
                "hgpo_k4": "(+0.6 to +1.6 over GiGPO)", "graphgpo": "92.71 (GiGPO 90.88)"},
        paper_note="ALFWorld, Qwen2.5-1.5B: GiGPO paper Table 1 (GRPO 72.8, GiGPO 86.7); HGPO "
                   "gains over GiGPO from its notes (spec §3.8); GraphGPO paper (spec §4.5)",
        requires=("textworld_express",)),
}
BC_SEED = 0
RL_ONLY_KEYS = ("optim", "algorithm", "iterations", "rollout", "save_every")
"""Overrides that cannot change the warm start: an lr or budget sweep reuses its checkpoint."""


# ------------------------------------------------------------------------------------ configs
def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else v
    return out


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _config_dict(study: EnvStudy, overrides: dict[str, Any], method: str) -> dict[str, Any]:
    """The resolved config (as a dict) of the env's recipe plus the study's and user's overrides,
    with ``method``'s estimator and exactly its options (the recipe's options are dropped)."""
    from grouprl.train.config import config_to_dict, load_config

    cfg = load_config(ROOT / study.recipe, _merge(study.overrides, overrides))
    data = config_to_dict(cfg)
    data["algorithm"]["estimator"] = METHODS[method]["estimator"]
    data["algorithm"]["estimator_options"] = {  # --set algorithm.estimator_options.X=… ablates
        **METHODS[method]["estimator_options"],
        **overrides.get("algorithm", {}).get("estimator_options", {})}
    data["logging"] = {**data["logging"], "progress": False, "tensorboard": False,
                       "wandb": False}
    data["threads"] = 1
    return data


def _hash_key(data: dict[str, Any]) -> dict[str, Any]:
    """What identifies a run: everything but where it is written and the thread count."""
    return {k: v for k, v in data.items() if k not in ("run_dir", "threads", "logging")}


def warm_start_config(study: EnvStudy, user: dict[str, Any]) -> dict[str, Any]:
    """BC only: the base recipe with 0 RL iterations (estimator irrelevant, fixed to grpo)."""
    bc_user = {k: v for k, v in user.items() if k not in RL_ONLY_KEYS}
    return _config_dict(study, _merge(bc_user, {"seed": BC_SEED, "iterations": 0}), "grpo")


@dataclass
class Job:
    env: str
    method: str
    seed: int
    config: dict[str, Any]
    warm_dir: str | None      # a finished warm start to copy in (None: this job IS the warm start)
    run_dir: str


def plan(out: Path, envs: list[str], methods: list[str], seeds: int,
         user: dict[str, Any]) -> tuple[list[Job], dict[str, Job]]:
    """Warm-start jobs per env, then every (env, method, seed) RL job, with their run dirs."""
    warm_jobs: dict[str, Job] = {}
    jobs: list[Job] = []
    warm_hash: dict[str, str] = {}
    for env in envs:
        wcfg = warm_start_config(ENVS[env], user)
        warm_hash[env] = _digest([STUDY_VERSION, _hash_key(wcfg)])
        wcfg["run_dir"] = str(out / env / f"warm_start-{warm_hash[env]}")
        warm_jobs[env] = Job(env, "warm_start", BC_SEED, wcfg, None, wcfg["run_dir"])
    for seed in range(seeds):     # seed-major: an interrupted study has every method's seed 0
        for env in envs:
            for method in methods:
                cfg = _config_dict(ENVS[env], _merge(user, {"seed": seed}), method)
                h = _digest([STUDY_VERSION, warm_hash[env], _hash_key(cfg)])
                rdir = out / env / f"{method}-seed{seed}-{h}"
                cfg["run_dir"] = str(rdir)
                jobs.append(Job(env, method, seed, cfg,
                                str(Path(warm_jobs[env].run_dir) / "warm_start"), str(rdir)))
    return jobs, warm_jobs


# ------------------------------------------------------------------------------------ running
def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def run_job(job: Job) -> dict[str, Any]:
    """Run (or resume) one job in this process; returns and stores its summary."""
    import torch

    from grouprl.recipes import train
    from grouprl.train.config import build_config

    torch.set_num_threads(int(job.config.get("threads") or 1))
    run_dir = Path(job.run_dir)
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    if job.warm_dir is not None and not (run_dir / "warm_start" / "config.json").is_file():
        tmp = run_dir / "warm_start.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(job.warm_dir, tmp)
        os.replace(tmp, run_dir / "warm_start")
    cfg = build_config(job.config)
    resume = (run_dir / "metrics.jsonl").is_file()
    log = open(run_dir / "log.txt", "a")
    t0 = time.perf_counter()
    try:
        result = train(cfg, resume=resume, echo=lambda s: print(s, file=log, flush=True))
    finally:
        log.close()
    wall = time.perf_counter() - t0
    summary = summarize(job, result.metrics, wall, resumed=resume)
    _write_json(summary_path, summary)
    return summary


def run_job_retrying(job: Job, attempts: int = 2) -> dict[str, Any]:
    """:func:`run_job`, resumed from its last checkpoint after a crash (e.g. a JVM that failed
    to start); after ``attempts`` failures the run is reported as failed and the study goes on
    (it has no summary, so the next invocation tries it again)."""
    error = ""
    for _ in range(attempts):
        try:
            return run_job(job)
        except Exception as exc:  # noqa: BLE001 - one run must not end the study
            error = f"{type(exc).__name__}: {exc}"
            print(f"  {job.env} {job.method} seed {job.seed} failed ({error}); retrying",
                  file=sys.stderr, flush=True)
    return {"error": error}


def _mean(values: list[Any], nested: bool = False) -> float:
    if nested:
        values = [v for part in values for v in part]
    return sum(values) / len(values) if values else float("nan")


def _train_series(summary: dict[str, Any], key: str) -> list[float]:
    """One training metric per iteration, read back from the run's metrics.jsonl."""
    from grouprl.train.metrics import read_metrics

    path = Path(summary["run_dir"])
    if not (path / "metrics.jsonl").is_file():
        return []
    return [float(r[key]) for r in read_metrics(path)
            if r.get("train/rows") is not None and r.get(key) is not None]


def summarize(job: Job, rows: list[dict], wall_s: float, resumed: bool) -> dict[str, Any]:
    """The numbers the report needs, from a run's metrics rows."""
    evals = [r for r in rows if r.get("eval/success_rate") is not None]
    steps_at: dict[int, float] = {0: 0.0}
    for r in rows:
        if r.get("train/env_steps_total") is not None:
            steps_at[int(r["iteration"])] = float(r["train/env_steps_total"])
    curve = [(int(r["iteration"]), steps_at.get(int(r["iteration"]), float("nan")),
              float(r["eval/success_rate"])) for r in evals]
    train_rows = [r for r in rows if r.get("train/rows") is not None]

    def avg(key: str) -> float:
        return _mean([float(r[key]) for r in train_rows if r.get(key) is not None])

    group_keys = sorted({k for r in train_rows for k in r if k.startswith("group/")})
    return {
        "env": job.env, "method": job.method, "seed": job.seed, "run_dir": job.run_dir,
        "curve": curve,                                   # (iteration, env steps, eval success)
        "success_before": curve[0][2] if curve else None,
        "success_final": curve[-1][2] if curve else None,
        "env_steps": max(steps_at.values()),
        "wall_s": wall_s, "resumed": resumed,
        "train_s": sum(float(r.get("timing/iteration_s", 0.0)) for r in train_rows),
        "train_success": [float(r["train/success_rate"]) for r in train_rows],
        "group": {k.split("/", 1)[1]: avg(k) for k in group_keys},
        "advantage_abs": avg("train/advantage_abs"),
        "advantage_nonzero": avg("train/advantage_nonzero"),
        "approx_kl": avg("actor/approx_kl"), "clipfrac": avg("actor/clipfrac"),
        "grad_norm": avg("actor/grad_norm"), "entropy_first": _first(train_rows, "actor/entropy"),
        "entropy_last": _first(train_rows[::-1], "actor/entropy"),
        "lr": float(job.config["optim"]["lr"]),
        "iterations": int(job.config["iterations"]),
        "tasks_per_iteration": int(job.config["rollout"]["groups_per_batch"]),
        "group_size": int(job.config["rollout"]["group_size"]),
    }


def _first(rows: list[dict], key: str) -> float:
    for r in rows:
        if r.get(key) is not None:
            return float(r[key])
    return float("nan")


def _available(study: EnvStudy) -> str | None:
    """None when the env can run here, else why not."""
    import importlib.util

    for module in study.requires:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'grouprl[envs]')"
    if study.name.startswith("twx") and shutil.which("java") is None:
        return "java is not on PATH (TextWorldExpress needs Java >= 11)"
    return None


def run_study(out: Path, envs: list[str], methods: list[str], seeds: int, workers: int,
              user: dict[str, Any]) -> list[dict[str, Any]]:
    jobs, warm_jobs = plan(out, envs, methods, seeds, user)
    done = sum((Path(j.run_dir) / "summary.json").is_file() for j in jobs)
    print(f"fidelity study: {len(jobs)} RL runs ({done} cached) + {len(warm_jobs)} warm starts "
          f"→ {out}", flush=True)
    summaries: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def report(n: int, j: Job, s: dict[str, Any]) -> None:
        if "error" in s:
            print(f"  [{n}/{len(jobs)}] {j.env} {j.method} seed {j.seed}: FAILED ({s['error']}); "
                  "rerun the study to retry it", flush=True)
            return
        summaries.append(s)
        print(f"  [{n}/{len(jobs)}] {j.env} {j.method} seed {j.seed}: success "
              f"{s['success_before']:.1%} → {s['success_final']:.1%}, "
              f"{s['env_steps']:.0f} env steps, {s['wall_s'] / 60:.1f} min "
              f"(study {(time.perf_counter() - t0) / 60:.1f} min)", flush=True)

    def warm(env: str, s: dict[str, Any]) -> None:
        print(f"  warm start {env}: held-out success {s['success_before']:.1%}", flush=True)

    if workers == 1:   # in this process (one GPU, or a debugger)
        for env, j in warm_jobs.items():
            warm(env, run_job(j))
        for n, j in enumerate(jobs, 1):
            report(n, j, run_job_retrying(j))
        return summaries
    with ProcessPoolExecutor(max_workers=workers, mp_context=_spawn()) as pool:
        # warm starts first (one per env, in parallel), then every RL run
        for env, s in zip(warm_jobs, pool.map(run_job, warm_jobs.values())):
            warm(env, s)
        futures = {pool.submit(run_job_retrying, j): j for j in jobs}
        for n, fut in enumerate(as_completed(futures), 1):
            report(n, futures[fut], fut.result())
    return summaries


def _spawn() -> Any:
    import multiprocessing

    return multiprocessing.get_context("spawn")


# ------------------------------------------------------------------------------------ report
def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) >= 2 else 0.0


def aggregate(summaries: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """env → method → seed-aggregated numbers."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for s in summaries:
        out.setdefault(s["env"], {}).setdefault(s["method"], {"runs": []})["runs"].append(s)
    for methods in out.values():
        for _m, agg in methods.items():
            runs = sorted(agg["runs"], key=lambda r: r["seed"])
            final = [100 * r["success_final"] for r in runs]
            before = [100 * r["success_before"] for r in runs]
            auc = [100 * _mean([c[2] for c in r["curve"][1:]]) for r in runs]
            agg.update(
                seeds=len(runs), final=final, final_mean=_mean(final), final_std=_std(final),
                before_mean=_mean(before), auc_mean=_mean(auc), auc_std=_std(auc),
                gain_mean=_mean([f - b for f, b in zip(final, before)]),
                env_steps=_mean([r["env_steps"] for r in runs]),
                wall_min=_mean([r["wall_s"] / 60 for r in runs]),
                group={k: _mean([r["group"].get(k, float("nan")) for r in runs])
                       for k in runs[0]["group"]},
                advantage_abs=_mean([r["advantage_abs"] for r in runs]),
                advantage_nonzero=_mean([r["advantage_nonzero"] for r in runs]),
                approx_kl=_mean([r["approx_kl"] for r in runs]),
                clipfrac=_mean([r["clipfrac"] for r in runs]),
                grad_norm=_mean([r["grad_norm"] for r in runs]),
                entropy_first=_mean([r["entropy_first"] for r in runs]),
                entropy_last=_mean([r["entropy_last"] for r in runs]),
                invalid_first=_mean([_train_series(r, "train/invalid_rate")[:2] for r in runs],
                                    nested=True),
                invalid_last=_mean([_train_series(r, "train/invalid_rate")[-2:] for r in runs],
                                   nested=True),
                lr=runs[0]["lr"])
    return out


def plot_env(env: str, methods: dict[str, dict[str, Any]], path: Path) -> None:
    """Held-out success vs env steps: mean over seeds per method, band = min..max of seeds
    (:func:`grouprl.train.plot.plot_curves`)."""
    from grouprl.train.plot import plot_curves

    series: dict[str, list[tuple[float, float]]] = {}
    bands: dict[str, list[tuple[float, float, float]]] = {}
    for m in METHODS:
        if m not in methods:
            continue
        runs = methods[m]["runs"]
        label = f"{LABELS[m]} ({len(runs)} seeds)"
        n = min(len(r["curve"]) for r in runs)
        xs = [_mean([r["curve"][i][1] for r in runs]) for i in range(n)]
        ys = [[100 * r["curve"][i][2] for r in runs] for i in range(n)]
        series[label] = [(x, _mean(y)) for x, y in zip(xs, ys)]
        bands[label] = [(x, min(y), max(y)) for x, y in zip(xs, ys)]
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_curves(series, path, bands=bands, title=ENVS[env].title if env in ENVS else env,
                xlabel="training env steps", ylabel="held-out success (%)", dpi=110)


def _pm(mean: float, std: float) -> str:
    return f"{mean:.1f} ± {std:.1f}"


def discussion(env: str, methods: dict[str, dict[str, Any]], eval_noise: float) -> list[str]:
    """Sentences derived from the numbers: each method against GRPO and GiGPO, with the noise."""
    lines: list[str] = []
    if "grpo" not in methods:
        return lines
    base = methods["grpo"]

    def compare(m: str, ref: str) -> str:
        a, b = methods[m], methods[ref]
        d, d_auc = a["final_mean"] - b["final_mean"], a["auc_mean"] - b["auc_mean"]
        se = math.sqrt((a["final_std"] ** 2) / a["seeds"] + (b["final_std"] ** 2) / b["seeds"])
        se_auc = math.sqrt((a["auc_std"] ** 2) / a["seeds"] + (b["auc_std"] ** 2) / b["seeds"])
        verdict = ("beats" if d > 2 * se and d_auc > 0 else
                   "trails" if d < -2 * se and d_auc < 0 else "is not separable from")
        return (f"{LABELS[m]} {verdict} {LABELS[ref]}: final {d:+.1f} points (2·SE "
                f"{2 * se:.1f}), mean over the curve {d_auc:+.1f} (2·SE {2 * se_auc:.1f})")

    for m in ("gigpo", "hgpo_k2", "hgpo_k4", "graphgpo"):
        if m in methods:
            lines.append(compare(m, "grpo") + ".")
    for m in ("hgpo_k2", "hgpo_k4", "graphgpo"):
        if m in methods and "gigpo" in methods:
            lines.append(compare(m, "gigpo") + ".")
    g = base["group"]
    if g:
        lines.append(
            f"States repeat: a training step shares its anchor state with "
            f"{g.get('step_group_size', float('nan')) - 1:.1f} other steps of its task on "
            f"average; {100 * g.get('step_repeat_fraction', float('nan')):.0f}% of steps sit "
            f"in a step group of ≥ 2 (GRPO's rollouts; the papers report < 35% singletons on "
            f"ALFWorld).")
    order = sorted(methods, key=lambda m: -methods[m]["final_mean"])
    lines.append("Ranking by final success: " + " > ".join(
        f"{LABELS[m]} {methods[m]['final_mean']:.1f}" for m in order) + ".")
    spread = _mean([a["final_std"] for a in methods.values() if a["seeds"] > 1])
    lines.append(f"Noise: the shared warm start evaluated with each seed's sampling varies by "
                 f"± {eval_noise:.1f} points (evaluation alone), while final success varies by "
                 f"± {spread:.1f} points between seeds of one method (mean seed std): "
                 + ("training variance, more than evaluation, limits what the seeds can "
                    "separate." if spread >= eval_noise else
                    "evaluation noise alone is as large as the differences between seeds; more "
                    "held-out episodes (eval.episodes) would sharpen the comparison."))
    return lines


def write_report(out: Path, summaries: list[dict[str, Any]], skipped: dict[str, str],
                 doc: Path) -> None:
    agg = aggregate(summaries)
    figdir = doc.parent / doc.stem          # docs/results.md → docs/results/*.png
    lines = [
        "# Fidelity study: GiGPO, HGPO and GraphGPO against GRPO in grouprl",
        "",
        "Generated by `python benchmarks/fidelity.py` (do not edit by hand; rerun the script). "
        "Every method starts from the same behaviour-cloning checkpoint per environment and "
        "gets the same rollout budget; only `algorithm.estimator` (with its released "
        "default options) differs. Loss: PPO-clip ε = 0.2, 2 mini-batches, entropy 0.001, "
        "no KL; tiny Qwen2-architecture policy (128 hidden, 4 layers, 0.85M parameters) on "
        "2 CPU cores, one torch thread per run, two runs at a time.",
        "",
        "Protocol notes: every run's prompt shows the last 2 steps (`agent.history_length: 2`, "
        "verl-agent's default, the memory the warm start was cloned with); HGPO K=2 groups by "
        "exactly that context, HGPO K=4 by 4 previous states (stricter than the prompt; the "
        "paper's K=4 also lengthens the prompt, which would need a second warm start). The "
        "papers' figures come from larger models on other benchmarks (6×6 Sokoban with a 3B "
        "vision-language model, ALFWorld with 1.5B): compare orderings and gaps, not values.",
        "",
    ]
    for env, reason in skipped.items():
        lines += [f"**{ENVS[env].title}**: not run here — {reason}.", ""]
    for env, methods in agg.items():
        study = ENVS[env]
        any_run = next(iter(methods.values()))["runs"][0]
        by_seed = {r["seed"]: 100 * r["success_before"] for m in methods.values()
                   for r in m["runs"]}   # iteration 0 evaluates the shared warm start per seed
        befores = list(by_seed.values())
        noise = _std(befores)
        budget = (f"{any_run['iterations']} iterations × {any_run['tasks_per_iteration']} "
                  f"tasks × {any_run['group_size']} episodes; lr {any_run['lr']:g}")
        png = figdir / f"{env}_curves.png"
        plot_env(env, methods, png)
        lines += [
            f"## {study.title}",
            "",
            f"Budget per run: {budget}. Warm start held-out success "
            f"{_mean(befores):.1f}% (mean over the seeds' iteration-0 evals).",
            "",
            "| method | seeds | final success % (mean ± std) | gain over warm start | mean "
            "success over the curve % | env steps | wall min/run | paper figure |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m in METHODS:
            if m not in methods:
                continue
            a = methods[m]
            lines.append(
                f"| {LABELS[m]} | {a['seeds']} | {_pm(a['final_mean'], a['final_std'])} | "
                f"{a['gain_mean']:+.1f} | {_pm(a['auc_mean'], a['auc_std'])} | "
                f"{a['env_steps']:.0f} | {a['wall_min']:.1f} | {study.papers.get(m, '—')} |")
        lines += ["", f"Paper figures: {study.paper_note}.", "",
                  f"![held-out success vs env steps]({png.relative_to(doc.parent)})", "",
                  "Grouping and update statistics (means over iterations and seeds; invalid "
                  "actions: mean of the first and of the last two iterations; depth k = "
                  "the deepest HGPO context level whose group has ≥ 2 steps, with K of that "
                  "run — 2 for non-HGPO runs):", "",
                  "| method | step-group size | steps in a group ≥ 2 | depth none / 0 / 1 / 2+ "
                  "| mean abs(Â) | Â ≠ 0 | approx KL | clip frac | grad norm | entropy first → "
                  "last | invalid actions first → last |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for m in METHODS:
            if m not in methods:
                continue
            a, g = methods[m], methods[m]["group"]
            deeper = sum(v for k, v in g.items() if k.startswith("depth_") and
                         k[6:].isdigit() and int(k[6:]) >= 2)
            depth = (f"{100 * g.get('depth_none', 0):.0f} / {100 * g.get('depth_0', 0):.0f} / "
                     f"{100 * g.get('depth_1', 0):.0f} / {100 * deeper:.0f} %")
            lines.append(
                f"| {LABELS[m]} | {g.get('step_group_size', float('nan')):.2f} | "
                f"{100 * g.get('step_repeat_fraction', float('nan')):.0f}% | {depth} | "
                f"{a['advantage_abs']:.2f} | {100 * a['advantage_nonzero']:.0f}% | "
                f"{a['approx_kl']:.4f} | {a['clipfrac']:.3f} | {a['grad_norm']:.2f} | "
                f"{a['entropy_first']:.2f} → {a['entropy_last']:.2f} | "
                f"{100 * a['invalid_first']:.0f}% → {100 * a['invalid_last']:.0f}% |")
        lines += ["", "What the numbers say:", ""]
        lines += [f"- {s}" for s in discussion(env, methods, noise)]
        lines.append("")
    run_min = sum(s["wall_s"] for s in summaries) / 60
    lines += [f"Compute: {len(summaries)} runs, {run_min:.0f} min of run wall time in total "
              f"(≈ {run_min / 2:.0f} min with two at a time), plus one warm start per "
              "environment" + ("; a resumed run counts only the part after its restart"
                               if any(s.get("resumed") for s in summaries) else "") + ".", ""]
    lines += [SCALING, ""]
    body = "\n".join(lines)
    extra = doc.parent / f"{doc.stem}_discussion.md"
    if extra.is_file():   # the hand-written reading of these numbers, kept beside the table
        body += "\n" + extra.read_text()
    doc.write_text(body)
    _write_json(figdir / "fidelity.json", {env: {m: {k: v for k, v in a.items() if k != "runs"}
                                                 for m, a in methods.items()}
                                           for env, methods in agg.items()})


SCALING = """## Scaling the study up

The same script takes more seeds, a longer budget, a bigger model and a GPU; overrides enter the
run hash, so scaled runs are cached separately:

    python benchmarks/fidelity.py --seeds 5 --iterations 200 --workers 1 \\
        --set model.device=cuda --set rollout.groups_per_batch=16 \\
        --set model.tiny.hidden_size=512 --set model.tiny.num_layers=8
    # the papers' Sokoban size:
    python benchmarks/fidelity.py --envs sokoban --set env.kwargs.dim_room=[6,6] \\
        --set env.kwargs.max_solution_length=null --set env.max_steps=15
    # a pretrained model with LoRA (local directory; nothing is downloaded):
    python benchmarks/fidelity.py --set model.path=/models/Qwen2.5-1.5B-Instruct \\
        --set model.lora.enabled=true --set model.device=cuda

`--workers N` runs N trainings at once (one torch thread each on CPU; use 1 per GPU)."""


# ------------------------------------------------------------------------------------ CLI
def _parse_set(items: list[str]) -> dict[str, Any]:
    from grouprl.train.config import parse_overrides

    return parse_overrides(items)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "runs" / "fidelity"), help="run cache directory")
    p.add_argument("--doc", default=str(ROOT / "docs" / "results.md"), help="report to write")
    p.add_argument("--envs", default=",".join(ENVS), help=f"comma list of {', '.join(ENVS)}")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--iterations", type=int, default=None, help="RL iterations (all envs)")
    p.add_argument("--workers", type=int, default=2, help="trainings at once")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run (e.g. model.device=cuda)")
    p.add_argument("--report-only", action="store_true", help="only rewrite the report")
    args = p.parse_args(argv)

    envs = [e for e in args.envs.split(",") if e]
    methods = [m for m in args.methods.split(",") if m]
    for e in envs:
        if e not in ENVS:
            p.error(f"--envs: {e!r} is not a study env; choose from {', '.join(ENVS)}")
    for m in methods:
        if m not in METHODS:
            p.error(f"--methods: {m!r} is not a study method; choose from {', '.join(METHODS)}")
    if args.seeds < 1 or args.workers < 1:
        p.error("--seeds and --workers must be >= 1")
    user = _parse_set(args.set)
    if args.iterations is not None:
        user["iterations"] = args.iterations
    out, doc = Path(args.out), Path(args.doc)
    skipped = {e: why for e in envs if (why := _available(ENVS[e])) is not None}
    envs = [e for e in envs if e not in skipped]
    for e, why in skipped.items():
        print(f"skipping {e}: {why}", file=sys.stderr)
    if args.report_only:
        jobs, _ = plan(out, envs, methods, args.seeds, user)
        summaries = [json.loads((Path(j.run_dir) / "summary.json").read_text()) for j in jobs
                     if (Path(j.run_dir) / "summary.json").is_file()]
        missing = len(jobs) - len(summaries)
        if missing:
            print(f"{missing} runs have no summary yet; reporting the finished ones",
                  file=sys.stderr)
    else:
        summaries = run_study(out, envs, methods, args.seeds, args.workers, user)
    if not summaries:
        print("no finished runs to report", file=sys.stderr)
        return 1
    write_report(out, summaries, skipped, doc)
    print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
