"""grouprl.data.store: a dataset file is parsed once per machine; processes share the store."""

from __future__ import annotations

import json
import os
import pickle

import pytest

import grouprl.data.store as store_module
import grouprl.envs.reasoning as reasoning_module
from grouprl.data import DataError, load_reasoning_dataset
from grouprl.data.store import STORE_SUFFIX, SharedExamples, shared_reasoning_dataset
from grouprl.envs import EnvPool
from grouprl.envs.reasoning import ReasoningEnv


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv("GROUPRL_CACHE_DIR", str(directory))
    reasoning_module.clear_dataset_cache()
    yield directory / "datasets"
    reasoning_module.clear_dataset_cache()


@pytest.fixture
def parses(monkeypatch):
    """Counts the calls that parse a dataset (load_reasoning_dataset as the store calls it)."""
    calls = []

    def counting(**kwargs):
        calls.append(kwargs["source"])
        return load_reasoning_dataset(**kwargs)

    monkeypatch.setattr(store_module, "load_reasoning_dataset", counting)
    return calls


def _write(path, n, start=0, **extra):
    path.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "answer": i + 1,
                                        "solution": f"<answer>{i + 1}</answer>", **extra}) + "\n"
                            for i in range(start, start + n)), encoding="utf-8")
    return str(path)


def _kwargs(source, **over):
    return {"source": source, "split": "train", "difficulty": None, "size": None, "seed": 0,
            "prompt_field": "prompt", "answer_field": "answer", "solution_field": "solution",
            "gsm8k_answers": False, **over}


def test_a_file_is_parsed_once_and_read_back_exactly(tmp_path, cache_dir, parses):
    source = _write(tmp_path / "d.jsonl", 50, tag={"k": [1, 2.5, None]})
    first = shared_reasoning_dataset(_kwargs(source))
    second = shared_reasoning_dataset(_kwargs(source))
    assert parses == [source]  # the second process-like call opened the store
    assert isinstance(first, SharedExamples) and isinstance(second, SharedExamples)
    assert list(first) == list(second) == load_reasoning_dataset(source)
    assert first[-1] == load_reasoning_dataset(source)[-1] and first[3:5] == list(first)[3:5]
    with pytest.raises(IndexError):
        first[50]
    assert list(pickle.loads(pickle.dumps(first))) == list(first)
    assert len(list(cache_dir.glob(f"*{STORE_SUFFIX}"))) == 1


def test_an_edited_file_is_parsed_again_and_the_old_store_removed(tmp_path, cache_dir, parses):
    source = _write(tmp_path / "d.jsonl", 5)
    assert len(shared_reasoning_dataset(_kwargs(source))) == 5
    _write(tmp_path / "d.jsonl", 7)
    assert len(shared_reasoning_dataset(_kwargs(source))) == 7
    assert parses == [source, source]
    assert len(list(cache_dir.glob(f"*{STORE_SUFFIX}"))) == 1
    # other loading arguments are another store
    assert len(shared_reasoning_dataset(_kwargs(source, size=2))) == 2
    assert len(list(cache_dir.glob(f"*{STORE_SUFFIX}"))) == 2


def test_a_damaged_store_is_detected_and_rebuilt(tmp_path, cache_dir, parses):
    source = _write(tmp_path / "d.jsonl", 5)
    shared_reasoning_dataset(_kwargs(source))
    (path,) = cache_dir.glob(f"*{STORE_SUFFIX}")
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # flip a byte of the offsets table
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        SharedExamples(path)
    items = shared_reasoning_dataset(_kwargs(source))
    assert list(items) == load_reasoning_dataset(source) and len(parses) == 2
    path.write_bytes(b"")
    assert list(shared_reasoning_dataset(_kwargs(source))) == load_reasoning_dataset(source)


def test_records_that_do_not_round_trip_stay_in_memory(tmp_path, cache_dir, parses):
    # an object key that is not a string would come back as a string from JSON
    source = _write(tmp_path / "d.jsonl", 3)
    original = store_module.load_reasoning_dataset

    def with_int_keys(**kwargs):
        items = original(**kwargs)
        items[0].metadata[1] = "one"
        return items

    store_module.load_reasoning_dataset = with_int_keys
    try:
        items = shared_reasoning_dataset(_kwargs(source))
    finally:
        store_module.load_reasoning_dataset = original
    assert isinstance(items, tuple) and items[0].metadata == {1: "one"}
    assert not list(cache_dir.glob(f"*{STORE_SUFFIX}"))


def test_builtin_data_is_not_stored(cache_dir, parses):
    items = shared_reasoning_dataset(_kwargs("builtin:arithmetic", size=4))
    assert isinstance(items, tuple) and len(items) == 4
    assert not cache_dir.exists() or not list(cache_dir.glob(f"*{STORE_SUFFIX}"))


def test_process_workers_open_the_store_without_parsing(tmp_path, cache_dir):
    """Finding 9: each process-backend worker re-parsed the dataset. The trainer prepares the
    data once; then the file is overwritten with garbage of the same size and time stamp, so a
    worker that parsed it again would fail to start: the workers serve the original prompts."""
    path = tmp_path / "d.jsonl"
    source = _write(path, 40)
    assert ReasoningEnv.prepare_data(source) == 40
    stat = path.stat()
    path.write_bytes(b"x" * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(DataError, match="invalid JSON"):
        load_reasoning_dataset(source)  # the file itself is garbage now
    with EnvPool("reasoning", {"dataset": source}, 3, backend="process", step_timeout=60,
                 start_method="spawn") as pool:
        resets = pool.reset([0, 7, 39])
        assert [r.observation for r in resets] == [f"What is {i} + 1?" for i in (0, 7, 39)]
        results = pool.step(["<answer>1</answer>", "<answer>0</answer>", "<answer>40</answer>"])
        assert [r.reward for r in results] == [1.0, 0.0, 1.0]
