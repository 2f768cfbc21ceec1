"""MetricsLogger (jsonl, truncation, optional sinks), read_metrics and ProgressBar."""

from __future__ import annotations

import io
import json
import math
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from grouprl.train.metrics import MetricsLogger, ProgressBar, read_metrics


def test_log_writes_one_json_line_per_call(tmp_path):
    with MetricsLogger(tmp_path / "run") as logger:
        logger.log(1, {"train/success_rate": 0.25, "train/rows": 12})
        logger.log(2, {"actor/kl": np.float32(0.5), "actor/pg_loss": torch.tensor(-1.5),
                       "flag": True, "n": np.int64(3), "note": "warmup"})
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"iteration": 1, "train/success_rate": 0.25, "train/rows": 12},
        {"iteration": 2, "actor/kl": 0.5, "actor/pg_loss": -1.5, "flag": True, "n": 3,
         "note": "warmup"},
    ]
    assert read_metrics(tmp_path / "run") == [json.loads(line) for line in lines]
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[0]["iteration"] == 1


def test_non_finite_values_become_null(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log(0, {"a": float("nan"), "b": float("inf"), "c": torch.tensor(-math.inf),
                       "d": 1.0})
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert read_metrics(tmp_path) == [{"iteration": 0, "a": None, "b": None, "c": None,
                                       "d": 1.0}]


def test_invalid_values_name_the_offending_key(tmp_path):
    logger = MetricsLogger(tmp_path)
    with pytest.raises(TypeError, match=r"metrics\['vec'\].*shape \(2,\)"):
        logger.log(0, {"vec": torch.ones(2)})
    with pytest.raises(TypeError, match=r"metrics\['obj'\]"):
        logger.log(0, {"obj": object()})
    with pytest.raises(ValueError, match="'iteration' is reserved"):
        logger.log(0, {"iteration": 3})
    with pytest.raises(ValueError, match="iteration: expected an int >= 0"):
        logger.log(-1, {"a": 1.0})
    logger.close()
    with pytest.raises(RuntimeError, match="closed"):
        logger.log(1, {"a": 1.0})
    assert read_metrics(tmp_path) == []  # nothing half-written


def test_truncate_after_makes_resumed_log_equal_uninterrupted(tmp_path):
    def run(run_dir, crash_at=None, resume_from=None):
        logger = MetricsLogger(run_dir)
        if resume_from is not None:
            logger.truncate_after(resume_from)
        for it in range(resume_from or 0, 6):
            if it == crash_at:
                logger.close()
                return
            logger.log(it + 1, {"loss": 1.0 / (it + 1)})
        logger.close()

    run(tmp_path / "a")
    run(tmp_path / "b", crash_at=4)  # logged 1..4; say the last checkpoint was at 2
    assert [r["iteration"] for r in read_metrics(tmp_path / "b")] == [1, 2, 3, 4]
    run(tmp_path / "b", resume_from=2)
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() == \
        (tmp_path / "b" / "metrics.jsonl").read_bytes()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["metrics.jsonl"]


def test_torn_last_line_from_a_crash_is_dropped_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1, "a": 1.0}\n{"iteration": 2, "a"')
    with pytest.warns(UserWarning, match="dropped a torn last line"):
        logger = MetricsLogger(tmp_path)
    logger.log(2, {"a": 2.0})
    logger.close()
    assert path.read_text() == '{"iteration": 1, "a": 1.0}\n{"iteration": 2, "a": 2.0}\n'
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing malformed is left
        assert [r["iteration"] for r in read_metrics(tmp_path)] == [1, 2]
    # a malformed line inside the file (a hand edit) is skipped with a warning, and dropped by
    # the next rewrite
    path.write_text('{"iteration": 1, "a": 1.0}\nnot json\n{"iteration": 2, "a": 2.0}\n')
    with pytest.warns(UserWarning, match="malformed"):
        assert [r["iteration"] for r in read_metrics(tmp_path)] == [1, 2]
    with pytest.warns(UserWarning, match="malformed"):
        logger = MetricsLogger(tmp_path)
    assert logger.truncate_after(1) == [{"iteration": 1, "a": 1.0}]
    logger.close()
    assert path.read_text() == '{"iteration": 1, "a": 1.0}\n'
    with pytest.raises(FileNotFoundError, match="run_dir"):
        read_metrics(tmp_path / "missing")


def test_each_record_is_one_write_of_a_whole_line(tmp_path, monkeypatch):
    """A crash can cut the file only between lines or inside the last one (dropped on open)."""
    import grouprl.train.metrics as metrics_mod

    writes: list[bytes] = []
    real = metrics_mod.os.write

    def spy(fd, data):
        writes.append(bytes(data))
        return real(fd, data)

    with MetricsLogger(tmp_path) as logger:
        monkeypatch.setattr(metrics_mod.os, "write", spy)
        big = {f"k{i}": float(i) for i in range(2000)}  # ~20 KB: more than a stdio buffer
        logger.log(1, big)
        logger.log(2, {"a": 1.0})
        monkeypatch.undo()
    assert len(writes) == 2 and all(w.endswith(b"\n") and w.count(b"\n") == 1 for w in writes)
    assert (tmp_path / "metrics.jsonl").read_bytes() == b"".join(writes)
    assert logger.lines() == [w.decode() for w in writes]


def test_restore_recreates_a_lost_or_damaged_history_from_the_saved_lines(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        for it in range(4):
            logger.log(it, {"loss": 1.0 / (it + 1)})
        saved = logger.lines()[:3]  # what a checkpoint at iteration 2 holds
    path = tmp_path / "metrics.jsonl"
    full = path.read_text()
    # intact file: no problem reported; the records after the checkpoint are dropped
    with MetricsLogger(tmp_path) as logger:
        assert logger.restore(2, saved) is None
    assert path.read_text() == "".join(saved)
    # deleted: recreated
    path.unlink()
    with MetricsLogger(tmp_path) as logger:
        assert logger.restore(2, saved) == f"{path} was missing"
    assert path.read_text() == "".join(saved)
    # truncated (a row lost) or edited: rewritten from the saved copy
    path.write_text(full.splitlines(keepends=True)[0])
    with MetricsLogger(tmp_path) as logger:
        assert "held 1 records up to iteration 2, the checkpoint's copy 3" in \
            logger.restore(2, saved)
        logger.log(3, {"loss": 0.25})
    assert path.read_text() == full
    path.write_text(full.replace("0.5", "0.75"))
    with MetricsLogger(tmp_path) as logger:
        assert "contents differ" in logger.restore(2, saved)
    assert path.read_text() == "".join(saved)


def test_missing_optional_packages_raise_one_line_import_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError) as err:
        MetricsLogger(tmp_path / "tb", tensorboard=True)
    assert str(err.value) == "tensorboard is not installed: pip install 'grouprl[logging]'"
    with pytest.raises(ImportError) as err:
        MetricsLogger(tmp_path / "wb", wandb=True)
    assert str(err.value) == "wandb is not installed: pip install 'grouprl[logging]'"
    assert not (tmp_path / "tb").exists() and not (tmp_path / "wb").exists()


def test_tensorboard_and_wandb_sinks_receive_raw_values(tmp_path, monkeypatch):
    calls: list[tuple] = []

    class FakeWriter:
        def __init__(self, log_dir, purge_step=None):
            calls.append(("writer", log_dir, purge_step))

        def add_scalar(self, key, value, step):
            calls.append(("scalar", key, value, step))

        def add_text(self, key, text):
            calls.append(("text", key, json.loads(text)))

        def close(self):
            calls.append(("close",))

    class FakeRun:
        def log(self, data, step):
            calls.append(("wandb", data, step))

        def finish(self):
            calls.append(("finish",))

    fake_tb = types.ModuleType("torch.utils.tensorboard")
    fake_tb.SummaryWriter = FakeWriter
    fake_wandb = types.ModuleType("wandb")
    fake_wandb.init = lambda **kw: calls.append(("init", kw)) or FakeRun()
    monkeypatch.setitem(sys.modules, "tensorboard", types.ModuleType("tensorboard"))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake_tb)
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)

    logger = MetricsLogger(tmp_path, tensorboard=True, wandb=True, wandb_project="p",
                           run_name="r", config={"lr": 0.1})
    logger.log(3, {"loss": float("nan"), "note": "x"})
    logger.truncate_after(2)
    logger.close()
    assert calls[0] == ("writer", str(tmp_path / "tensorboard"), None)
    assert calls[1] == ("text", "config", {"lr": 0.1})
    assert calls[2] == ("init", {"project": "p", "name": "r", "config": {"lr": 0.1},
                                 "dir": str(tmp_path)})
    kind, key, value, step = calls[3]
    assert (kind, key, step) == ("scalar", "loss", 3) and math.isnan(value)
    assert calls[4][0] == "wandb" and list(calls[4][1]) == ["loss"] and calls[4][2] == 3
    assert calls[5:] == [("close",), ("writer", str(tmp_path / "tensorboard"), 3),
                         ("close",), ("finish",)]


def test_progress_bar_plain_lines_when_not_a_tty():
    stream = io.StringIO()
    bar = ProgressBar(25, desc="RL", print_every=10, stream=stream)
    for it in range(1, 26):
        bar.update(it, success=it / 25)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("RL 10/25 (40%) | ") and lines[0].endswith("success=0.4")
    assert lines[2].startswith("RL 25/25 (100%)") and "success=1" in lines[2]
    assert "it/s" in lines[1] and "eta" in lines[1]


def test_progress_bar_resume_close_and_disabled():
    stream = io.StringIO()
    with ProgressBar(100, initial=40, print_every=50, stream=stream) as bar:
        bar.update(41, success=0.5)
        bar.update(42, success=0.75)
    (line,) = stream.getvalue().splitlines()  # close printed the unprinted last state
    assert line.startswith("train 42/100 (42%) | ") and line.endswith(" | success=0.75")
    quiet = io.StringIO()
    with ProgressBar(5, enabled=False, stream=quiet) as off:
        for it in range(1, 6):
            off.update(it, success=1.0)
    assert quiet.getvalue() == "" and off.n == 5
    with pytest.raises(ValueError, match="print_every"):
        ProgressBar(5, print_every=0)
    with pytest.raises(ValueError, match="total"):
        ProgressBar(-1)


def test_progress_bar_uses_tqdm_on_a_tty():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    bar = ProgressBar(10, desc="RL", initial=2, stream=stream)
    assert bar._bar is not None
    bar.update(3, success=0.5)
    bar.close()
    out = stream.getvalue()
    assert "RL" in out and "3/10" in out and "success=0.5" in out
