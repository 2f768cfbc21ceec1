"""Issue 13, findings 5–7: files a run writes, and resume.

5. a warm start half-written by a kill, or built with another config;
6. a resume that changes the config;
7. a damaged checkpoint, a lost metrics history, a duplicate iteration-0 row.

Every run here is a tiny Sokoban RL run (seconds); ``REFERENCE`` is one uninterrupted run that the
interrupted-and-resumed ones must reproduce exactly (timings aside).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from grouprl.recipes import train
from grouprl.train import ConfigError, load_config
from grouprl.train.checkpoint import latest_checkpoint, verify_checkpoint
from grouprl.train.metrics import read_metrics
from grouprl.train.run import resume_config

TINY = ["model.tiny.vocab_size=300", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
        "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1", "model.tiny.intermediate_size=64",
        "model.tiny.tokenizer_episodes=8", "logging.progress=false", "threads=1",
        "env.name=sokoban", "env.kwargs={dim_room: [5, 5]}", "env.max_steps=2",
        "rollout.groups_per_batch=2", "rollout.group_size=2", "rollout.max_new_tokens=4",
        "eval.episodes=4", "eval.every=0", "bc.episodes=4", "bc.epochs=2", "bc.batch_size=4",
        "algorithm.num_mini_batches=1"]
RUN = [*TINY, "iterations=3", "save_every=1", "keep_last=3"]


def overrides(run_dir: Path, *extra: str) -> list[str]:
    return [*RUN, f"run_dir={run_dir}", *extra]


def config(run_dir: Path, *extra: str):
    return load_config(None, overrides(run_dir, *extra))


def quiet(text: str) -> None:
    pass


def rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("timing/")}
            for r in read_metrics(run_dir)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    """The metrics of an uninterrupted run."""
    run = tmp_path_factory.mktemp("reference") / "run"
    train(config(run), echo=quiet)
    return rows(run)


# --------------------------------------------------------------------------- 5: warm start


def test_killed_while_saving_the_warm_start_then_resume_works(tmp_path, reference):
    run = tmp_path / "run"
    script = textwrap.dedent("""
        import json, os, signal, sys
        import grouprl.train.saved_model as saved_model
        from grouprl.recipes import train
        from grouprl.train import load_config

        real = saved_model.write_manifest

        def killed(directory, header):  # every file written, the manifest not yet
            if directory.name.startswith(".tmp-warm_start-"):
                os.kill(os.getpid(), signal.SIGKILL)
            real(directory, header)

        saved_model.write_manifest = killed
        train(load_config(None, json.loads(sys.argv[1])), echo=lambda s: None)
    """)
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(overrides(run))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    leftovers = list(run.glob(".tmp-warm_start-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "model.safetensors").is_file()
    assert not (run / "warm_start").exists()  # never half-written at its real place
    assert (run / "base_model" / "manifest.json").is_file()
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        train(config(run), echo=quiet)
    said: list[str] = []
    train(config(run), resume=True, echo=said.append)
    assert not list(run.glob(".tmp-*"))
    assert (run / "warm_start" / "manifest.json").is_file()
    assert any(s.startswith("behaviour cloning") for s in said)  # redone, not skipped
    assert not any(s.startswith("building the tiny model") for s in said)  # base reused
    assert rows(run) == reference


def test_a_warm_start_without_manifest_is_refused_with_the_fix(tmp_path):
    # what the old code left after a kill: warm_start/config.json at 0 bytes, no manifest
    cfg = config(tmp_path / "run", "iterations=0")
    train(cfg, echo=quiet)
    warm = Path(cfg.run_dir) / "warm_start"
    weights = (warm / "model.safetensors").read_bytes()
    (warm / "manifest.json").unlink()
    (warm / "config.json").write_text("")
    with pytest.raises(ConfigError, match=r"warm_start: has no manifest.json, so it cannot be "
                                          r"verified .*; delete the folder to rebuild it"):
        train(cfg, resume=True, echo=quiet)
    shutil.rmtree(warm)
    train(cfg, resume=True, echo=quiet)  # rebuilt: the same behaviour cloning, the same weights
    assert (warm / "model.safetensors").read_bytes() == weights


def test_a_warm_start_built_with_another_config_is_refused_naming_the_keys(tmp_path):
    first = config(tmp_path / "a", "iterations=0")
    train(first, echo=quiet)
    other = config(tmp_path / "b", "iterations=0", "model.tiny.hidden_size=64", "bc.epochs=3")
    Path(other.run_dir).mkdir()
    shutil.copytree(Path(first.run_dir) / "warm_start", Path(other.run_dir) / "warm_start")
    with pytest.raises(ConfigError) as err:
        train(other, echo=quiet)
    message = str(err.value)
    assert "warm_start: was built with another config (bc.epochs: 2 → 3; " \
           "model.tiny.hidden_size: 32 → 64; saved → current)" in message
    assert "delete the folder to rebuild it with this config" in message
    # the same config (another seed and another estimator) reuses it
    same = config(tmp_path / "c", "iterations=0", "seed=5", "algorithm.estimator=grpo")
    Path(same.run_dir).mkdir()
    shutil.copytree(Path(first.run_dir) / "warm_start", Path(same.run_dir) / "warm_start")
    said: list[str] = []
    train(same, echo=said.append)
    assert not any(s.startswith(("behaviour cloning", "building")) for s in said)
    # flipped weight bytes are caught by the checksums, naming the file
    target = Path(same.run_dir) / "warm_start" / "model.safetensors"
    data = target.read_bytes()
    target.write_bytes(data[:-9] + bytes([data[-9] ^ 1]) + data[-8:])
    with pytest.raises(ConfigError, match=r"warm_start: damaged \(checkpoint file .*"
                                          r"model.safetensors: corrupted or modified"):
        train(same, resume=True, echo=quiet)


# --------------------------------------------------------------------------- 6: config on resume


def test_a_changed_config_on_resume_is_refused_unless_forced(tmp_path, capsys):
    from grouprl.cli import main

    cfg = config(tmp_path / "run", "iterations=1")
    run = Path(cfg.run_dir)
    train(cfg, echo=quiet)
    saved = (run / "config.json").read_text()
    with pytest.raises(ConfigError) as err:
        resume_config(run, ["algorithm.estimator=grpo", "model.tiny.hidden_size=64",
                            "iterations=2"])
    message = str(err.value)
    assert 'algorithm.estimator: "gigpo" → "grpo"; model.tiny.hidden_size: 32 → 64 ' \
           "(saved → new)" in message
    assert "iterations" not in message.split("keys a resume may change")[0]
    assert "pass --force" in message
    # the recipe refuses it too (a programmatic resume), before any work; nothing is rewritten
    changed = resume_config(run, ["algorithm.estimator=grpo"], force=True)
    with pytest.raises(ConfigError, match="algorithm.estimator"):
        train(changed, resume=True, echo=quiet)
    assert (run / "config.json").read_text() == saved
    # resumable keys: accepted and recorded, so a later plain --resume keeps them
    said: list[str] = []
    train(resume_config(run, ["iterations=2", "eval.episodes=2"]), resume=True,
          echo=said.append)
    assert "config change on resume: iterations: 1 → 2" in said
    assert json.loads((run / "config.json").read_text())["iterations"] == 2
    assert [r["iteration"] for r in read_metrics(run)][-1] == 2
    # --force: accepted, reported, recorded
    said.clear()
    forced = resume_config(run, ["algorithm.estimator=grpo", "iterations=3"], force=True)
    train(forced, resume=True, force=True, echo=said.append)
    assert 'config change on resume (--force): algorithm.estimator: "gigpo" → "grpo"' in said
    assert json.loads((run / "config.json").read_text())["algorithm"]["estimator"] == "grpo"
    assert [r["iteration"] for r in read_metrics(run)][-1] == 3
    # the command line: exit 2, one line listing the key and the way out
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "algorithm.estimator=gigpo"]) == 2
    err_text = capsys.readouterr().err
    assert 'algorithm.estimator: "grpo" → "gigpo"' in err_text and "--force" in err_text
    assert "Traceback" not in err_text and len(err_text.strip().splitlines()) == 1
    assert main(["train", "--resume", str(run), "--force", "algorithm.estimator=gigpo"]) == 0


# --------------------------------------------------------------------------- 7: damaged files


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, reference):
    cfg = config(tmp_path / "run")
    train(cfg, echo=quiet)
    ckpt = latest_checkpoint(cfg.run_dir)
    assert ckpt.name == "iter_000003"
    target = ckpt / "model.safetensors"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])  # truncated
    said: list[str] = []
    train(cfg, resume=True, echo=said.append)
    warning = next(s for s in said if s.startswith("warning: checkpoint iter_000003"))
    assert str(target) in warning and "falling back to iter_000002" in warning
    assert any(s.endswith("at iteration 2") for s in said)
    assert rows(cfg.run_dir) == reference  # iteration 3 again, logged once
    verify_checkpoint(latest_checkpoint(cfg.run_dir))  # re-saved intact


def test_a_deleted_metrics_file_is_recreated_from_the_checkpoint(tmp_path, reference):
    cfg = config(tmp_path / "run")
    train(cfg, echo=quiet)
    path = Path(cfg.run_dir) / "metrics.jsonl"
    history = path.read_text()
    path.unlink()
    said: list[str] = []
    train(cfg, resume=True, echo=said.append)  # a finished run: nothing to train
    assert path.read_text() == history
    assert any(f"{path} was missing; recreated it from checkpoint iter_000003" in s
               for s in said)
    # truncated to its first line: recreated as well
    path.write_text(history.splitlines(keepends=True)[0])
    said.clear()
    train(cfg, resume=True, echo=said.append)
    assert path.read_text() == history and any("recreated it" in s for s in said)


def test_killed_before_the_first_checkpoint_resumes_without_a_duplicate_row(tmp_path,
                                                                           reference,
                                                                           monkeypatch):
    from grouprl.train.sampling import Sampler

    cfg = config(tmp_path / "run", "save_every=0")  # the only checkpoint: at the end
    real = Sampler.rollout

    def crash(self, it, *args, **kwargs):
        if it == 1:
            raise RuntimeError("killed")
        return real(self, it, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Sampler, "rollout", crash)
        with pytest.raises(RuntimeError, match="killed"):
            train(cfg, echo=quiet)
    assert latest_checkpoint(cfg.run_dir) is None
    assert [r["iteration"] for r in read_metrics(cfg.run_dir)] == [0, 0, 1]  # bc, eval, it 1
    said: list[str] = []
    train(cfg, resume=True, echo=said.append)
    assert not any(s.startswith("held-out success before RL") for s in said)  # not re-run
    got = rows(cfg.run_dir)
    assert [r["iteration"] for r in got] == [0, 0, 1, 2, 3]
    assert got == reference
