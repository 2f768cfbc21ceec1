"""The fidelity study runner (``benchmarks/fidelity.py``): plan, cache/resume, report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmark_module import benchmark_module

torch = pytest.importorskip("torch")


@pytest.fixture
def fidelity():
    with benchmark_module("fidelity") as module:
        yield module


def _strip(cfg: dict) -> dict:
    c = json.loads(json.dumps(cfg))
    c.pop("run_dir")
    c.pop("seed")
    c["algorithm"].pop("estimator")
    c["algorithm"].pop("estimator_options")
    return c


def test_plan_shares_one_warm_start_and_changes_only_the_estimator(fidelity, tmp_path):
    methods = list(fidelity.METHODS)
    jobs, warm = fidelity.plan(tmp_path, ["sokoban"], methods, 2, {})
    assert len(jobs) == len(methods) * 2 and list(warm) == ["sokoban"]
    assert {j.warm_dir for j in jobs} == {str(Path(warm["sokoban"].run_dir) / "warm_start")}
    assert warm["sokoban"].config["iterations"] == 0
    assert len({j.run_dir for j in jobs}) == len(jobs)
    first = _strip(jobs[0].config)
    for j in jobs:
        # exactly the method's options: nothing leaks in from the recipe's gigpo options
        assert j.config["algorithm"]["estimator"] == fidelity.METHODS[j.method]["estimator"]
        assert j.config["algorithm"]["estimator_options"] == \
            fidelity.METHODS[j.method]["estimator_options"]
        assert _strip(j.config) == first          # same budget, loss, lr, prompts, eval
        assert j.config["threads"] == 1
    assert [j.seed for j in jobs[:len(methods)]] == [0] * len(methods)   # seed-major order
    again, _ = fidelity.plan(tmp_path, ["sokoban"], methods, 2, {})
    assert [j.run_dir for j in again] == [j.run_dir for j in jobs]     # stable hashes
    scaled, warm2 = fidelity.plan(tmp_path, ["sokoban"], methods, 2, {"iterations": 3})
    assert all(j.config["iterations"] == 3 for j in scaled)
    assert warm2["sokoban"].run_dir == warm["sokoban"].run_dir          # BC unaffected
    assert not {j.run_dir for j in scaled} & {j.run_dir for j in jobs}
    lr, warm3 = fidelity.plan(tmp_path, ["sokoban"], ["grpo"], 1, {"optim": {"lr": 1e-3}})
    assert warm3["sokoban"].run_dir == warm["sokoban"].run_dir          # an lr sweep reuses BC
    assert lr[0].config["optim"]["lr"] == 1e-3 and lr[0].run_dir != jobs[0].run_dir
    ablation, warm5 = fidelity.plan(tmp_path, ["sokoban"], ["hgpo_k2"], 1,
                                    {"algorithm": {"estimator_options": {"invalid_penalty": 0}}})
    assert ablation[0].config["algorithm"]["estimator_options"] == {
        **fidelity.METHODS["hgpo_k2"]["estimator_options"], "invalid_penalty": 0}
    assert warm5["sokoban"].run_dir == warm["sokoban"].run_dir
    _, warm4 = fidelity.plan(tmp_path, ["sokoban"], ["grpo"], 1, {"bc": {"episodes": 5}})
    assert warm4["sokoban"].run_dir != warm["sokoban"].run_dir          # a BC change does not


def _agg(final: list[float], auc: list[float]) -> dict:
    fid = sys.modules["fidelity"]
    return {"seeds": len(final), "final_mean": fid._mean(final), "final_std": fid._std(final),
            "auc_mean": fid._mean(auc), "auc_std": fid._std(auc),
            "group": {"step_group_size": 3.0, "step_repeat_fraction": 0.5}}


def test_discussion_separates_clear_gaps_from_noise(fidelity):
    methods = {"grpo": _agg([30, 31, 32], [28, 29, 30]),
               "gigpo": _agg([50, 51, 52], [45, 46, 47]),
               "graphgpo": _agg([20, 40, 36], [28, 31, 29])}
    lines = fidelity.discussion("sokoban", methods, eval_noise=3.0)
    text = "\n".join(lines)
    assert "GiGPO beats GRPO: final +20.0 points" in text
    assert "GraphGPO is not separable from GRPO" in text
    assert "GraphGPO trails GiGPO" in text
    assert "Ranking by final success: GiGPO 51.0 > GraphGPO 32.0 > GRPO 31.0" in text
    assert "shares its anchor state with 2.0 other steps" in text
    assert "varies by ± 3.0 points (evaluation alone)" in text


def test_missing_extra_is_skipped_with_the_reason(fidelity, monkeypatch):
    study = fidelity.ENVS["twx_coin"]
    monkeypatch.setattr(study, "requires", ("no_such_module_for_grouprl",))
    assert "pip install 'grouprl[envs]'" in fidelity._available(study)
    assert fidelity._available(fidelity.ENVS["sokoban"]) is None


def test_tiny_study_end_to_end_is_cached_and_resumable(fidelity, tmp_path, capsys):
    out, doc = tmp_path / "runs", tmp_path / "docs" / "results.md"
    doc.parent.mkdir()
    args = ["--envs", "sokoban", "--methods", "grpo,hgpo_k2", "--seeds", "1",
            "--iterations", "1", "--workers", "1", "--out", str(out), "--doc", str(doc),
            "--set", "eval.episodes=4", "--set", "eval.every=1", "--set", "bc.episodes=8",
            "--set", "bc.epochs=1", "--set", "rollout.groups_per_batch=2",
            "--set", "rollout.group_size=2", "--set", "model.tiny.hidden_size=32",
            "--set", "model.tiny.num_layers=1", "--set", "model.tiny.intermediate_size=64"]
    assert fidelity.main(args) == 0
    text = doc.read_text()
    assert "| GRPO | 1 |" in text and "| HGPO K=2 | 1 |" in text
    assert "Budget per run: 1 iterations × 2 tasks × 2 episodes" in text
    png = doc.parent / "results" / "sokoban_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    numbers = json.loads((doc.parent / "results" / "fidelity.json").read_text())
    assert set(numbers["sokoban"]) == {"grpo", "hgpo_k2"}
    summaries = sorted(out.glob("sokoban/*-seed0-*/summary.json"))
    assert len(summaries) == 2
    s = json.loads(summaries[0].read_text())
    assert [c[0] for c in s["curve"]] == [0, 1] and s["env_steps"] > 0
    assert s["group"]["step_group_size"] >= 1.0
    assert sum(v for k, v in s["group"].items() if k.startswith("depth_")) == \
        pytest.approx(1.0)
    # a second call runs nothing: every run is cached by its config hash
    stamps = [p.stat().st_mtime_ns for p in summaries]
    capsys.readouterr()
    assert fidelity.main(args) == 0
    assert "(2 cached)" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in summaries] == stamps
    # an interrupted run (no summary yet) is resumed from its checkpoint, not restarted
    summaries[1].unlink()
    assert fidelity.main(args) == 0
    resumed = json.loads(summaries[1].read_text())
    assert resumed["resumed"] is True and [c[0] for c in resumed["curve"]] == [0, 1]
    assert fidelity.main(args + ["--report-only"]) == 0


def test_a_crashing_run_is_retried_then_reported_without_ending_the_study(fidelity,
                                                                         monkeypatch):
    calls = []

    def flaky(job):
        calls.append(job)
        if len(calls) == 1:
            raise RuntimeError("env 0: construction failed")
        return {"ok": True}

    job = fidelity.Job("twx_coin", "hgpo_k2", 0, {}, None, "unused")
    monkeypatch.setattr(fidelity, "run_job", flaky)
    assert fidelity.run_job_retrying(job) == {"ok": True} and calls == [job, job]

    def broken(job):
        raise RuntimeError("JVM did not start")

    monkeypatch.setattr(fidelity, "run_job", broken)
    assert fidelity.run_job_retrying(job) == {"error": "RuntimeError: JVM did not start"}
