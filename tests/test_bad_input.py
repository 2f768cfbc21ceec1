"""Issue 13, findings 8 and 9: bad input gives one clean user error (the UserError family, which
the CLI prints without a traceback, exit code 2), and inputs that explode are bounded.

Each test reproduces a finding and asserts the new behaviour: non-UTF-8, field-less or empty
dataset files, incomplete model directories, unsupported devices and rollouts that cannot fit in
memory are refused before any work with a message naming the file/line/field or key and the fix;
tokenizer training sees a bounded sample; long prompts are left-truncated to
``rollout.max_prompt_tokens``; duplicate rows and pairs with chosen == rejected are dropped and
counted.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import grouprl.policy.tiny as tiny_module
from grouprl.agent.prompts import get_template
from grouprl.data import DataError, DataWarning, PreferencePair, load_pairs, load_reasoning_dataset
from grouprl.policy import build_tiny_policy, generate, train_tokenizer
from grouprl.policy.generate import PromptTruncationWarning, prompt_token_limit
from grouprl.policy.load import ModelPathError, check_model_dir, load_policy
from grouprl.policy.tiny import tokenizer_sample
from grouprl.train.checks import check_model_config, check_resources, check_rl_config
from grouprl.train.config import ConfigError, load_config
from grouprl.train.pair_data import load_preference_data, tokenize_preference_pairs
from grouprl.train.setup import resolve_device
from grouprl.validation import UserError

REASONING = ["env.name=reasoning", "env.max_steps=1", "agent.template=reasoning",
             "agent.history_length=0", "agent.action_tag=null", "rollout.stop=[</answer>]"]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUPRL_CACHE_DIR", str(tmp_path / "cache"))


def reasoning_cfg(tmp_path: Path, dataset: Path, *extra: str):
    return load_config(None, [*REASONING, f"env.kwargs={{dataset: {dataset}}}",
                              f"run_dir={tmp_path / 'run'}", *extra])


def preference_cfg(tmp_path: Path, dataset: Path, *extra: str):
    return load_config(None, ["mode=preference", f"preference.dataset={dataset}",
                              f"run_dir={tmp_path / 'run'}", *extra])


def jsonl(path: Path, *records: dict) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny():
    texts = [f"What is {i} + {i}? <answer>{2 * i}</answer>" for i in range(60)]
    return build_tiny_policy(texts, vocab_size=300, seed=0, hidden_size=32, num_layers=2,
                             num_heads=2, num_kv_heads=1, intermediate_size=64)


# ------------------------------------------------------------------------ the error family

def test_every_user_error_is_one_family():
    for cls in (ConfigError, DataError, ModelPathError):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError)
    assert issubclass(ModelPathError, FileNotFoundError)  # what load_policy raised before


# --------------------------------------------------------------------------- dataset files

def test_non_utf8_jsonl_line_names_file_line_and_byte(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "1+1", "answer": "2"}\n{"prompt": "caf\xe9", "answer": "3"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl line 2: not valid UTF-8 \(byte 0xe9 at "
                       r"byte 16 of the line\); save the file as UTF-8"):
        load_reasoning_dataset(str(path))
    with pytest.raises(ConfigError, match=r"^env\.kwargs: .*latin1\.jsonl line 2: not valid "
                       r"UTF-8"):
        check_rl_config(reasoning_cfg(tmp_path, path))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n'
                      b'{"prompt": "q\xe9", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(ConfigError, match=r"^preference\.dataset: .*pairs\.jsonl line 2: not "
                       r"valid UTF-8"):
        load_preference_data(preference_cfg(tmp_path, pairs))


def test_non_utf8_json_file_names_the_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b'[\n {"prompt": "a", "answer": 1},\n {"prompt": "\xff", "answer": 2}\n]')
    with pytest.raises(DataError, match=r"d\.json: not valid UTF-8 \(byte 0xff at line 3, "
                       r"byte 14 of the line\)"):
        load_reasoning_dataset(str(path))


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "1+1", "answer": 2}\n')
    assert load_reasoning_dataset(str(path))[0].answer == "2"


def test_missing_answer_names_line_field_and_the_fields_present(tmp_path):
    path = jsonl(tmp_path / "noanswer.jsonl", {"prompt": "1+1", "answer": 2},
                 {"prompt": "2+2", "gold": 4, "id": 7})
    with pytest.raises(ConfigError, match=r"^env\.kwargs: .*noanswer\.jsonl line 2: missing "
                       r"field 'answer' \(set prompt_field/answer_field to your column names\); "
                       r"the record has fields: prompt, gold, id$"):
        check_rl_config(reasoning_cfg(tmp_path, path))
    # the eval kwargs are checked too when they select other data
    good = jsonl(tmp_path / "good.jsonl", {"prompt": "1+1", "answer": 2})
    cfg = reasoning_cfg(tmp_path, good, f"eval.env_kwargs={{dataset: {path}}}")
    with pytest.raises(ConfigError, match=r"^eval\.env_kwargs: .*line 2: missing field"):
        check_rl_config(cfg)


def test_empty_file_says_so(tmp_path):
    for name, content in (("empty.jsonl", ""), ("blank.jsonl", "\n  \n")):
        path = tmp_path / name
        path.write_text(content)
        with pytest.raises(ConfigError, match=r"^env\.kwargs: source '.*" + name +
                           r"': no records \(the file is empty or holds only blank lines\)"):
            check_rl_config(reasoning_cfg(tmp_path, path))
        with pytest.raises(ConfigError, match=r"^preference\.dataset: .*no records \(the file "
                           r"is empty"):
            load_preference_data(preference_cfg(tmp_path, path))


def test_missing_dataset_file_and_filters_that_leave_nothing(tmp_path):
    with pytest.raises(ConfigError, match=r"^env\.kwargs: source '.*nope\.jsonl': no such file"):
        check_rl_config(reasoning_cfg(tmp_path, tmp_path / "nope.jsonl"))
    path = jsonl(tmp_path / "d.jsonl", {"prompt": "1+1", "answer": 2, "difficulty": 1})
    cfg = reasoning_cfg(tmp_path, path, "env.kwargs.difficulty=[3]")
    with pytest.raises(ConfigError, match=r"^env\.kwargs: dataset: .* has no examples"):
        check_rl_config(cfg)


# ----------------------------------------------------------------------------- model paths

def _model_dir(tmp_path: Path, *files: str) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    for name in files:
        (d / name).write_text(json.dumps({"model_type": "qwen2"}) if name.endswith(".json")
                              else "x")
    return d


@pytest.mark.parametrize("files, message", [
    ((), r"is an empty directory; download it beforehand \(e\.g\. `hf download"),
    (("config.json",), r"has no weights \(model\.safetensors, model-\*\.safetensors or "
                       r"pytorch_model\*\.bin; it holds: config\.json\)"),
    (("config.json", "model.safetensors"), r"has no tokenizer files \(tokenizer\.json, "
                                           r"tokenizer\.model"),
    (("tokenizer.json", "model.safetensors"), r"has no config\.json, so it is not a Hugging "
                                              r"Face model directory"),
    (("config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
      "tokenizer.json"), r"model\.safetensors\.index\.json names 1 shard\(s\) that are missing "
                         r"\(model-00002-of-00002\.safetensors\)"),
])
def test_incomplete_model_directories_each_have_their_message(tmp_path, files, message):
    d = _model_dir(tmp_path, *files)
    if "model.safetensors.index.json" in files:
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
            "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ModelPathError, match=message):
        check_model_dir(d)
    with pytest.raises(ModelPathError, match=message):
        load_policy(d)  # checked before transformers sees it
    cfg = load_config(None, [f"model.path={d}"])
    with pytest.raises(ConfigError, match=r"^model\.path: '.*model':? " + message):
        check_model_config(cfg)


def test_bad_config_json_and_a_file_instead_of_a_directory(tmp_path):
    d = _model_dir(tmp_path, "model.safetensors", "tokenizer.json")
    (d / "config.json").write_text("{trunc")
    with pytest.raises(ModelPathError, match=r"config\.json is not readable JSON"):
        check_model_dir(d)
    with pytest.raises(ModelPathError, match="is a file, not a model directory"):
        check_model_dir(d / "tokenizer.json")
    with pytest.raises(ModelPathError, match="never downloads"):
        check_model_dir(tmp_path / "absent")


def test_a_saved_tiny_model_passes_the_check(tmp_path, tiny):
    from grouprl.policy import save_policy

    save_policy(*tiny, tmp_path / "saved")
    assert check_model_dir(tmp_path / "saved") == tmp_path / "saved"


# ---------------------------------------------------------------------------------- devices

@pytest.mark.parametrize("device, message", [
    ("mps", r"'mps' is not supported \(grouprl runs on CPU and CUDA devices\); use cpu, cuda, "
            r"cuda:N or auto"),
    ("xpu:0", "'xpu:0' is not supported"),
    ("meta", "'meta' is not supported"),
    ("gpu", r"'gpu' is not a device; use cpu, cuda, cuda:N or auto"),
    ("cuda:99", r"'cuda:99' (requested but CUDA is not available|is not available: \d+ CUDA)"),
])
def test_unsupported_devices_are_refused_up_front(device, message):
    with pytest.raises(ConfigError, match=r"^model\.device: " + message):
        resolve_device(device)
    with pytest.raises(ConfigError, match=r"^model\.device: "):
        check_model_config(load_config(None, [f"model.device={device}"]))
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")


# ---------------------------------------------------------------------------------- memory

def test_a_rollout_that_cannot_fit_is_refused_before_it_starts(tiny):
    model, tok = tiny
    template = get_template("reasoning")
    cfg = load_config(None, [*REASONING, "rollout.group_size=100000", "rollout.max_new_tokens=72"])
    est = check_resources(cfg, model, tok, template, available={"device": None, "host": None})
    assert est.rows == est.generation_rows == 800_000
    assert est.prompt_tokens == 1  # the reasoning template adds no text: the lower bound is 1
    # KV cache: 2 (K, V) × 2 layers × 1 kv head × 16 dims × 4 bytes per token and row
    assert est.kv_cache == 800_000 * (est.prompt_tokens + 72) * 2 * 2 * 1 * 16 * 4
    assert est.logits == 800_000 * len(tok) * 4 * 2
    with pytest.raises(ConfigError, match=r"^rollout memory: generating 800000 rows at once "
                       r"\(rollout\.groups_per_batch=8 × rollout\.group_size=100000 = 800000 "
                       r"rows; rollout\.generation_batch_size=None\) needs about .* GiB on host "
                       r".*but 4\.0 GiB is available and the kept rollout takes 1\.3 GiB of "
                       r"it; set rollout\.generation_batch_size=\d+ \(or less\)"):
        check_resources(cfg, model, tok, template, available={"device": 4 << 30,
                                                               "host": 4 << 30})
    # the suggested generation batch size does fit
    message = ""
    try:
        check_resources(cfg, model, tok, template, available={"device": 4 << 30,
                                                              "host": 4 << 30})
    except ConfigError as err:
        message = str(err)
    fits = int(message.split("generation_batch_size=")[-1].split()[0])
    ok = load_config(None, [*REASONING, "rollout.group_size=100000", "rollout.max_new_tokens=72",
                            f"rollout.generation_batch_size={fits}"])
    check_resources(ok, model, tok, template, available={"device": 4 << 30, "host": 4 << 30})


def test_a_rollout_too_big_to_keep_names_the_batch_keys(tiny):
    model, tok = tiny
    cfg = load_config(None, ["rollout.group_size=1000000000"])  # measured memory: none has this
    with pytest.raises(ConfigError, match=r"^rollout memory: keeping one rollout of "
                       r"rollout\.groups_per_batch=8 × rollout\.group_size=1000000000 = "
                       r"8000000000 rows .* lower rollout\.group_size or "
                       r"rollout\.groups_per_batch"):
        check_resources(cfg, model, tok, get_template("sokoban"))
    est = check_resources(load_config(), model, tok, get_template("sokoban"))  # the default fits
    assert est.prompt_tokens > 100  # the Sokoban template's own text: a lower bound


# ---------------------------------------------------------------------------- big inputs

def test_tokenizer_training_sees_a_bounded_sample(monkeypatch):
    seen = []
    original = tiny_module.tokenizer_sample

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out)
        return out

    monkeypatch.setattr(tiny_module, "tokenizer_sample", spy)
    megabyte = "7" * 1_000_000  # one unbroken 1 MB text: quadratic for BPE
    tok = train_tokenizer([megabyte, "short text <action>up</action>"], 300,
                          special_tokens=("<action>", "</action>"))
    (sample,) = seen
    assert sample == ["7" * tiny_module.TOKENIZER_MAX_TEXT_CHARS, "short text ", "up"]
    assert tok.decode(tok("7777 up")["input_ids"]) == "7777 up"
    # the total cap keeps whole pieces, in corpus order, a seeded subset
    texts = [f"text {i} " * 50 for i in range(400)]  # 400 texts of ~350 chars
    a = tokenizer_sample(texts, max_chars=10_000)
    assert 9_000 < sum(map(len, a)) <= 10_000 and a == tokenizer_sample(texts,
                                                                                  max_chars=10_000)
    assert set(a) <= set(texts) and a == sorted(a, key=texts.index)
    assert tokenizer_sample(texts, max_chars=None, max_text_chars=None) == texts


def test_long_prompts_are_left_truncated_to_max_prompt_tokens(tiny):
    model, tok = tiny
    long = "What is 1 + 1? " * 400
    short = "What is 2 + 2?"
    ids = tok([long], add_special_tokens=False)["input_ids"][0]
    with pytest.warns(PromptTruncationWarning, match=r"prompts longer than 16 tokens are "
                      r"left-truncated .*rollout\.max_prompt_tokens"):
        gen = generate(model, tok, [long, short], max_new_tokens=2, do_sample=False,
                       max_prompt_tokens=16)
    assert gen.prompt_truncated.tolist() == [True, False]
    assert gen.prompt_ids.shape[1] == 16 and gen.prompt_ids[0].tolist() == ids[-16:]
    # default: the model's context minus max_new_tokens
    context = model.config.max_position_embeddings
    assert prompt_token_limit(model, 8) == context - 8
    with pytest.warns(PromptTruncationWarning):
        gen = generate(model, tok, [long * 2], max_new_tokens=8, do_sample=False)
    assert gen.prompt_ids.shape[1] == context - 8 and bool(gen.prompt_truncated[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gen = generate(model, tok, [short], max_new_tokens=2, do_sample=False)
    assert not bool(gen.prompt_truncated[0])
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        generate(model, tok, [short], max_new_tokens=2, max_prompt_tokens=0)
    cfg = load_config(None, ["rollout.max_prompt_tokens=256"])
    assert cfg.rollout.max_prompt_tokens == 256
    with pytest.raises(ConfigError, match=r"rollout\.max_prompt_tokens: must be >= 1"):
        load_config(None, ["rollout.max_prompt_tokens=0"])


def test_duplicate_examples_are_dropped_and_counted(tmp_path):
    a = {"prompt": "1+1", "answer": 2, "solution": "<answer>2</answer>"}
    b = {"prompt": "2+2", "answer": 4}
    path = jsonl(tmp_path / "dup.jsonl", a, b, a, {**a, "id": 9}, {**a, "answer": 3}, b)
    with pytest.warns(DataWarning, match=r"dup\.jsonl: dropped 3 duplicate examples \(same "
                      r"prompt, answer, solution, difficulty\) \(first: .*dup\.jsonl line 3\)"):
        items = load_reasoning_dataset(str(path))
    assert [(x.prompt, x.answer) for x in items] == [("1+1", "2"), ("2+2", "4"), ("1+1", "3")]
    with pytest.warns(DataWarning):
        assert len(load_reasoning_dataset(str(path), size=3)) == 3  # size counts kept ones


def test_pairs_with_chosen_equal_rejected_and_duplicates_are_dropped(tmp_path):
    p = {"prompt": "q", "chosen": "good", "rejected": "bad"}
    path = jsonl(tmp_path / "pairs.jsonl", p, {"prompt": "q2", "chosen": "same",
                                               "rejected": " same "}, p,
                 {"prompt": "q3", "chosen": "x", "rejected": "y"})
    with pytest.warns(DataWarning, match=r"pairs\.jsonl: dropped 1 duplicate pairs .*line 3\) "
                      r"and 1 pairs whose chosen and rejected responses are identical "
                      r"\(first: .*line 2\)"):
        pairs = load_pairs(str(path))
    assert [x.prompt for x in pairs] == ["q", "q3"]
    # in the preference recipe's data path too
    with pytest.warns(DataWarning, match="identical"):
        train, _ = load_preference_data(preference_cfg(tmp_path, path,
                                                       "preference.eval_fraction=0"))
    assert len(train) == 2


def test_pairs_identical_after_truncation_are_dropped(tiny):
    _, tok = tiny
    keep = PreferencePair("What is 1 + 1?", "<answer>2</answer>", "<answer>3</answer>")
    cut = PreferencePair("What is 2 + 2?", "<answer>4</answer> and more text here",
                         "<answer>4</answer> and other text")
    full = tokenize_preference_pairs(tok, [keep, cut])
    assert len(full) == 2
    with pytest.warns(DataWarning, match=r"dropped 1 of 2 preference pairs whose chosen and "
                      r"rejected tokens are identical after truncation to "
                      r"preference\.max_length=12; raise it"):
        data = tokenize_preference_pairs(tok, [keep, cut], max_length=12)
    assert len(data) == 1
    with pytest.raises(ConfigError, match="all 1 pairs have identical chosen and rejected"):
        tokenize_preference_pairs(tok, [cut], max_length=12)
