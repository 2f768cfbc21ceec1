"""Loading reasoning datasets and preference pairs: builtin, JSONL/JSON/Parquet, hf: cache."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from grouprl.data import (
    DataError,
    PreferencePair,
    ReasoningExample,
    arithmetic_dataset,
    arithmetic_pairs,
    gsm8k_gold,
    load_pairs,
    load_reasoning_dataset,
    split_holdout,
)

ROWS = [
    {"prompt": "What is 2 + 2?", "answer": "4", "solution": "<answer>4</answer>", "id": 1},
    {"prompt": "What is 3 * 3?", "answer": 9, "difficulty": 2, "source": "x"},
    {"prompt": "Half of 5?", "answer": 2.5},
]


def write_jsonl(path, rows, blank_line=False):
    lines = [json.dumps(r) for r in rows]
    if blank_line:
        lines.insert(1, "")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_builtin_source_matches_the_generator():
    data = load_reasoning_dataset("builtin:arithmetic", split="test", difficulty=[1, 2], size=30,
                                  seed=3)
    assert data == arithmetic_dataset("test", difficulty=[1, 2], size=30, seed=3)
    assert load_pairs("builtin:arithmetic_pairs", size=5) == arithmetic_pairs(size=5)
    with pytest.raises(ValueError, match="unknown builtin 'builtin:nope'"):
        load_reasoning_dataset("builtin:nope")


def test_jsonl_fields_metadata_and_blank_lines(tmp_path):
    src = write_jsonl(tmp_path / "data.jsonl", ROWS, blank_line=True)
    data = load_reasoning_dataset(src)
    assert data[0] == ReasoningExample("What is 2 + 2?", "4", "<answer>4</answer>", None,
                                       {"id": 1})
    assert data[1] == ReasoningExample("What is 3 * 3?", "9", None, 2, {"source": "x"})
    assert data[2].answer == "2.5" and data[2].solution is None
    assert load_reasoning_dataset(src, size=2) == data[:2]
    assert load_reasoning_dataset(src, solution_field=None)[0].metadata == {
        "id": 1, "solution": "<answer>4</answer>"}
    with pytest.raises(DataError, match=r"data\.jsonl line 1: missing field 'difficulty'"):
        load_reasoning_dataset(src, difficulty=[2])


def test_difficulty_filter_on_files(tmp_path):
    rows = [{"prompt": f"q{i}", "answer": i, "difficulty": i % 3 + 1} for i in range(9)]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    data = load_reasoning_dataset(src, difficulty=[1, 3], size=4)
    assert [(e.prompt, e.difficulty) for e in data] == [("q0", 1), ("q2", 3), ("q3", 1),
                                                        ("q5", 3)]
    assert [e.prompt for e in load_reasoning_dataset(src, difficulty=2)] == ["q1", "q4", "q7"]


def test_field_mapping(tmp_path):
    src = write_jsonl(tmp_path / "q.jsonl", [{"question": "Q?", "final": "7", "level": 3}])
    (ex,) = load_reasoning_dataset(src, prompt_field="question", answer_field="final")
    assert (ex.prompt, ex.answer, ex.metadata) == ("Q?", "7", {"level": 3})


def test_jsonl_errors_name_file_line_and_field(tmp_path):
    rows = [{"prompt": "a", "answer": "1"}] * 6 + [{"prompt": "b", "final": "2"}]
    src = write_jsonl(tmp_path / "data.jsonl", rows)
    with pytest.raises(DataError, match=r"data\.jsonl line 7: missing field 'answer' \(set "
                       r"prompt_field/answer_field to your column names\); the record has "
                       r"fields: prompt, final"):
        load_reasoning_dataset(src)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", answer}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl line 2: invalid JSON"):
        load_reasoning_dataset(str(bad))
    src = write_jsonl(tmp_path / "t.jsonl", [{"prompt": 5, "answer": "1"}])
    with pytest.raises(DataError, match=r"line 1: field 'prompt' must be a string, got int"):
        load_reasoning_dataset(src)
    src = write_jsonl(tmp_path / "n.jsonl", [{"prompt": "p", "answer": None}])
    with pytest.raises(DataError, match=r"line 1: field 'answer' must be a string or a number"):
        load_reasoning_dataset(src)
    src = write_jsonl(tmp_path / "l.jsonl", [[1, 2]])
    with pytest.raises(DataError, match=r"line 1: expected an object with named fields"):
        load_reasoning_dataset(src)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no records"):
        load_reasoning_dataset(str(tmp_path / "empty.jsonl"))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_reasoning_dataset(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match=r"unknown 'data\.csv'; accepted: 'builtin:arithmetic'"):
        load_reasoning_dataset("data.csv")


def test_json_list(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(ROWS))
    assert load_reasoning_dataset(str(path)) == load_reasoning_dataset(
        write_jsonl(tmp_path / "same.jsonl", ROWS))
    path.write_text(json.dumps({"data": ROWS[:1]}))
    assert len(load_reasoning_dataset(str(path))) == 1
    path.write_text(json.dumps([ROWS[0], {"prompt": "x"}]))
    with pytest.raises(DataError, match=r"data\.json record 2: missing field 'answer'"):
        load_reasoning_dataset(str(path))
    path.write_text(json.dumps({"prompt": "x"}))
    with pytest.raises(DataError, match="must be a list of objects"):
        load_reasoning_dataset(str(path))


def test_parquet(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "Q1?", "answer": 3, "tag": "a"},
                                         {"question": "Q2?", "answer": 4, "tag": "b"}]), path)
    data = load_reasoning_dataset(str(path), prompt_field="question")
    assert [(e.prompt, e.answer, e.metadata) for e in data] == [
        ("Q1?", "3", {"tag": "a"}), ("Q2?", "4", {"tag": "b"})]
    with pytest.raises(DataError, match=r"data\.parquet row 1: missing field 'prompt'"):
        load_reasoning_dataset(str(path))
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"^reading \.parquet needs pyarrow: pip install "
                       r"'grouprl\[data\]'$"):
        load_reasoning_dataset(str(path))


def test_gsm8k_answers(tmp_path):
    assert gsm8k_gold("48/2 = <<48/2=24>>24\n48+24 = <<48+24=72>>72\n#### 72") == "72"
    assert gsm8k_gold("so #### $1,234") == "1234"
    assert gsm8k_gold("no marker 5") is None
    rows = [{"question": "Q?", "answer": "3+4 = <<3+4=7>>7\n#### 7"},
            {"question": "R?", "answer": "just 8"}]
    src = write_jsonl(tmp_path / "gsm.jsonl", rows)
    (ex,) = load_reasoning_dataset(src, prompt_field="question", gsm8k_answers=True, size=1)
    assert ex.answer == "7" and ex.metadata["rationale"].endswith("#### 7")
    with pytest.raises(DataError, match=r"gsm\.jsonl line 2: field 'answer' has no '#### "):
        load_reasoning_dataset(src, prompt_field="question", gsm8k_answers=True)


def test_hf_source_is_offline_and_fails_clearly_when_not_cached(monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    before = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    flag = datasets.config.HF_HUB_OFFLINE
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"hf:grouprl-test/no-such-dataset-xyz.*local "
                       r"Hugging Face cache.*grouprl never downloads"):
        load_reasoning_dataset("hf:grouprl-test/no-such-dataset-xyz")
    elapsed = time.monotonic() - start
    if elapsed > 20:
        pytest.skip(f"datasets took {elapsed:.0f}s: it may have tried the network")
    assert {k: os.environ.get(k) for k in before} == before
    assert datasets.config.HF_HUB_OFFLINE == flag


def test_hf_source_records_and_offline_flags(monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants as hub
    seen = {}

    def fake_load_dataset(name, config=None, split=None):
        seen.update(name=name, config=config, split=split, env=os.environ.get("HF_HUB_OFFLINE"),
                    ds=datasets.config.HF_HUB_OFFLINE, hub=hub.HF_HUB_OFFLINE)
        return [{"question": "Q?", "answer": "1\n#### 1"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    (ex,) = load_reasoning_dataset("hf:openai/gsm8k:main", split="test",
                                   prompt_field="question", gsm8k_answers=True)
    assert seen == {"name": "openai/gsm8k", "config": "main", "split": "test", "env": "1",
                    "ds": True, "hub": True}
    assert ex.answer == "1"
    fake = [{"prompt": "p"}]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: fake)
    with pytest.raises(DataError, match=r"hf:x row 1: missing field 'answer'"):
        load_reasoning_dataset("hf:x")


def test_hf_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'grouprl\[data\]'"):
        load_reasoning_dataset("hf:openai/gsm8k")


def test_pairs_plain_and_conversational(tmp_path):
    rows = [
        {"prompt": "P1", "chosen": "good", "rejected": "bad", "score": 1},
        {"prompt": [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "P2"}],
         "chosen": [{"role": "assistant", "content": "c2"}],
         "rejected": [{"role": "assistant", "content": "r2"}]},
        {"chosen": [{"role": "user", "content": "P3"}, {"role": "assistant", "content": "c3"}],
         "rejected": [{"role": "user", "content": "P3"},
                      {"role": "assistant", "content": "r3"}]},
    ]
    src = write_jsonl(tmp_path / "pairs.jsonl", rows)
    pairs = load_pairs(src)
    assert pairs == [PreferencePair("P1", "good", "bad", {"score": 1}),
                     PreferencePair("P2", "c2", "r2", {"system": "Be brief."}),
                     PreferencePair("P3", "c3", "r3", {})]
    assert load_pairs(src, size=1) == pairs[:1]
    src = write_jsonl(tmp_path / "m.jsonl", [{"q": "P", "good": "a", "bad": "b"}])
    assert load_pairs(src, prompt_field="q", chosen_field="good", rejected_field="bad") == [
        PreferencePair("P", "a", "b", {})]


def test_pairs_errors(tmp_path):
    src = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"},
                                                 {"prompt": "p", "chosen": "c"}])
    with pytest.raises(DataError, match=r"pairs\.jsonl line 2: missing field 'rejected' \(set "
                       r"prompt_field/chosen_field/rejected_field"):
        load_pairs(src)
    src = write_jsonl(tmp_path / "np.jsonl", [{"chosen": "c", "rejected": "r"}])
    with pytest.raises(DataError, match=r"line 1: missing field 'prompt'"):
        load_pairs(src)
    src = write_jsonl(tmp_path / "na.jsonl", [
        {"prompt": "p", "chosen": [{"role": "user", "content": "x"}], "rejected": "r"}])
    with pytest.raises(DataError, match=r"line 1: field 'chosen' is a conversation without an? "
                       r"'assistant' message"):
        load_pairs(src)
    with pytest.raises(ValueError, match="unknown builtin"):
        load_pairs("builtin:arithmetic")


def test_split_holdout():
    items = list(range(100))
    kept, held = split_holdout(items, 0.1, seed=0)
    assert len(held) == 10 and len(kept) == 90
    assert sorted(kept + held) == items and kept == sorted(kept) and held == sorted(held)
    assert split_holdout(items, 0.1, seed=0) == (kept, held)
    assert split_holdout(items, 0.1, seed=1)[1] != held
    assert split_holdout(items, 0.0, seed=0) == (items, [])
    assert split_holdout([], 0.5, seed=0) == ([], [])
    assert len(split_holdout(list(range(5)), 0.5, seed=0)[1]) == 3  # halves round up
    for bad in (1.0, -0.1, "0.1"):
        with pytest.raises(ValueError, match="fraction"):
            split_holdout(items, bad, seed=0)
