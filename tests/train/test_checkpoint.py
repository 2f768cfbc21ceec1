"""Checkpoints: bitwise resume, RNG continuation, atomicity under crashes, pruning, peft,
checksums, and loading that never unpickles arbitrary objects."""

from __future__ import annotations

import ast
import hashlib
import json
import math
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import grouprl.train.checkpoint as ckpt_mod
from grouprl.train import ConfigError
from grouprl.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint_state,
    save_checkpoint,
    verify_checkpoint,
)
from grouprl.train.resume import resume_checkpoint

K, N = 3, 6  # save after K steps, train to N


# --------------------------------------------------------------------------- helpers


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


class TinyNet(torch.nn.Module):
    """Dropout makes every step consume the global torch RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
                                       torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _tiny_qwen() -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, tie_word_embeddings=True)
    return Qwen2ForCausalLM(cfg)


def _lora(model: torch.nn.Module) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=2, lora_alpha=4, lora_dropout=0.1,
                                            target_modules=["q_proj", "v_proj"]))


def _optim(model: torch.nn.Module):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4))
    return opt, sched


def _loss(model: torch.nn.Module, gen: torch.Generator) -> torch.Tensor:
    if isinstance(model, TinyNet):
        x = torch.randn(8, 4, generator=gen)  # data: named generator
        target = torch.randn(8, 1) * (np.random.rand() + random.random())  # global RNGs
        return ((model(x) - target) ** 2).mean()
    ids = torch.randint(0, 64, (2, 6), generator=gen)
    ids[:, 0] = int(np.random.randint(0, 64)) + 0 * random.randrange(2)
    return model(input_ids=ids, labels=ids).loss


def _step(model, opt, sched, gen) -> None:
    model.train()
    opt.zero_grad()
    _loss(model, gen).backward()
    opt.step()
    sched.step()


def _draws(gen: torch.Generator) -> tuple:
    return (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _resume_matches(tmp_path: Path, make) -> tuple[torch.nn.Module, Path]:
    """Train N steps saving at K; resume fresh objects from K; both end bitwise equal."""
    _seed_all(0)
    model = make()
    opt, sched = _optim(model)
    gen = torch.Generator().manual_seed(1)
    for _ in range(K):
        _step(model, opt, sched, gen)
    path = save_checkpoint(tmp_path, iteration=K, model=model, optimizer=opt, scheduler=sched,
                           generators={"data": gen}, state={"counters": {"steps": K}},
                           config={"lr": 1e-2, "betas": (0.9, 0.999)})
    for _ in range(N - K):
        _step(model, opt, sched, gen)
    expected, expected_draws = _params(model), _draws(gen)
    expected_opt = opt.state_dict()

    _seed_all(123)  # different init and RNG: everything must come from the checkpoint
    fresh = make()
    opt2, sched2 = _optim(fresh)
    gen2 = torch.Generator().manual_seed(999)
    info = load_checkpoint(tmp_path, model=fresh, optimizer=opt2, scheduler=sched2,
                           generators={"data": gen2})
    assert info["iteration"] == K and info["path"] == path
    assert info["state"] == {"counters": {"steps": K}}
    assert info["config"] == {"lr": 1e-2, "betas": [0.9, 0.999]}
    for _ in range(N - K):
        _step(fresh, opt2, sched2, gen2)
    _assert_bitwise(_params(fresh), expected)
    assert sched2.get_last_lr() == sched.get_last_lr()
    for idx, st in expected_opt["state"].items():
        for key, value in st.items():
            assert torch.equal(opt2.state_dict()["state"][idx][key], value), (idx, key)
    for got, want in zip(_draws(gen2), expected_draws):
        assert np.array_equal(np.asarray(got), np.asarray(want))
    return fresh, path


# --------------------------------------------------------------------------- resume


def test_resume_small_model_is_bitwise_identical(tmp_path):
    _resume_matches(tmp_path, TinyNet)
    names = sorted(p.name for p in latest_checkpoint(tmp_path).iterdir())
    assert names == ["COMPLETE", "config.json", "manifest.json", "model.safetensors",
                     "optimizer.pt", "rng.pt", "scheduler.pt", "state.pt"]
    opt_state = torch.load(latest_checkpoint(tmp_path) / "optimizer.pt", weights_only=True)
    assert {"step", "exp_avg", "exp_avg_sq"} <= set(opt_state["state"][0])
    assert opt_state["state"][0]["step"].item() == K


def test_resume_without_rng_restore_diverges(tmp_path):
    """Guards the bitwise test: the RNG state really matters for this training loop."""
    _seed_all(0)
    model = TinyNet()
    opt, sched = _optim(model)
    gen = torch.Generator().manual_seed(1)
    for _ in range(K):
        _step(model, opt, sched, gen)
    save_checkpoint(tmp_path, iteration=K, model=model, optimizer=opt, scheduler=sched,
                    generators={"data": gen})
    _step(model, opt, sched, gen)
    _seed_all(5)
    fresh = TinyNet()
    opt2, sched2 = _optim(fresh)
    gen2 = torch.Generator()
    load_checkpoint(tmp_path, model=fresh, optimizer=opt2, scheduler=sched2,
                    generators={"data": gen2}, restore_rng=False)  # named ones still restored
    _step(fresh, opt2, sched2, gen2)
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))


def test_resume_qwen2_tied_embeddings_bitwise(tmp_path):
    fresh, path = _resume_matches(tmp_path, _tiny_qwen)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight  # still tied after load
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert ("lm_head.weight" in keys) != ("model.embed_tokens.weight" in keys)  # stored once


# --------------------------------------------------------------------------- atomicity


def test_exception_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = TinyNet()
    opt, sched = _optim(model)
    first = save_checkpoint(tmp_path, iteration=1, model=model, optimizer=opt, scheduler=sched)
    saved = _params(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    real = ckpt_mod.save_torch

    def failing(path, obj, what):
        if path.name == "scheduler.pt":
            raise OSError("disk full")
        real(path, obj, what)

    monkeypatch.setattr(ckpt_mod, "save_torch", failing)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, iteration=2, model=model, optimizer=opt, scheduler=sched)
    monkeypatch.undo()
    root = tmp_path / "checkpoints"
    assert latest_checkpoint(tmp_path) == first
    assert sorted(p.name for p in root.iterdir()) == ["iter_000001", "latest"]  # tmp cleaned
    load_checkpoint(tmp_path, model=model, optimizer=opt, scheduler=sched)
    _assert_bitwise(_params(model), saved)


def test_killed_process_mid_save_keeps_previous_checkpoint(tmp_path):
    script = textwrap.dedent(f"""
        import importlib.util, os, sys, torch
        spec = importlib.util.spec_from_file_location("ckpt", {ckpt_mod.__file__!r})
        ckpt = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ckpt)
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.AdamW(model.parameters())
        ckpt.save_checkpoint(sys.argv[1], iteration=1, model=model, optimizer=opt)
        real = ckpt.save_torch
        def die(path, obj, what):
            if path.name == "state.pt":
                os._exit(17)  # no cleanup, no finally: like SIGKILL / power loss
            real(path, obj, what)
        ckpt.save_torch = die
        with torch.no_grad():
            model.weight.add_(1.0)
        ckpt.save_checkpoint(sys.argv[1], iteration=2, model=model, optimizer=opt)
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 17, proc.stderr
    root = tmp_path / "checkpoints"
    leftovers = list(root.glob(".tmp-iter_000002-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "model.safetensors").is_file()
    assert latest_checkpoint(tmp_path) == root / "iter_000001"
    assert list_checkpoints(tmp_path) == [root / "iter_000001"]
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    expected = _params(model)
    with torch.no_grad():
        model.weight.zero_()
    opt = torch.optim.AdamW(model.parameters())
    assert load_checkpoint(tmp_path, model=model, optimizer=opt)["iteration"] == 1
    _assert_bitwise(_params(model), expected)
    # the next save succeeds and removes the leftover
    save_checkpoint(tmp_path, iteration=2, model=model, optimizer=opt)
    assert not list(root.glob(".tmp-*"))
    assert latest_checkpoint(tmp_path) == root / "iter_000002"


def test_latest_falls_back_and_ignores_incomplete_dirs(tmp_path):
    model = TinyNet()
    assert latest_checkpoint(tmp_path) is None
    for it in (1, 2):
        save_checkpoint(tmp_path, iteration=it, model=model, keep_last=None)
    root = tmp_path / "checkpoints"
    (root / "iter_000009").mkdir()  # no COMPLETE marker
    (root / "iter_000009" / "manifest.json").write_text('{"format_version": 2, "files": {}}')
    (root / ".tmp-iter_000010-1").mkdir()
    assert latest_checkpoint(tmp_path) == root / "iter_000002"
    (root / "latest").unlink()
    assert latest_checkpoint(tmp_path) == root / "iter_000002"
    (root / "latest").write_text("iter_000009\n")  # pointer to an incomplete dir
    assert latest_checkpoint(tmp_path) == root / "iter_000002"
    (root / "latest").write_text("iter_000001\n")  # the pointer wins over the newest dir
    assert latest_checkpoint(tmp_path) == root / "iter_000001"
    with pytest.raises(CheckpointError, match="path: .*iter_000009.*COMPLETE"):
        load_checkpoint(root / "iter_000009", model=model)
    (root / "iter_000008").mkdir()  # COMPLETE but no manifest: never used either
    (root / "iter_000008" / "COMPLETE").write_text("8\n")
    assert latest_checkpoint(tmp_path) == root / "iter_000001"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["iter_000001", "iter_000002"]
    with pytest.raises(FileNotFoundError, match="path"):
        load_checkpoint(tmp_path / "nope", model=model)


def test_keep_last_prunes_older_checkpoints(tmp_path):
    model = TinyNet()
    for it in range(1, 6):
        save_checkpoint(tmp_path, iteration=it, model=model, keep_last=2)
    root = tmp_path / "checkpoints"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["iter_000004", "iter_000005"]
    assert sorted(p.name for p in root.iterdir()) == ["iter_000004", "iter_000005", "latest"]
    # an older iteration (rollback) is kept and becomes latest; newer ones are left alone
    save_checkpoint(tmp_path, iteration=3, model=model, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["iter_000003", "iter_000004",
                                                            "iter_000005"]
    assert latest_checkpoint(tmp_path) == root / "iter_000003"
    for it in range(6, 9):
        save_checkpoint(tmp_path, iteration=it, model=model, keep_last=None)
    assert len(list_checkpoints(tmp_path)) == 6
    with pytest.raises(ValueError, match="keep_last"):
        save_checkpoint(tmp_path, iteration=9, model=model, keep_last=0)
    with pytest.raises(ValueError, match="iteration"):
        save_checkpoint(tmp_path, iteration=-1, model=model)


def test_resaving_an_iteration_replaces_it(tmp_path):
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, iteration=4, model=model)
    with torch.no_grad():
        model.weight.fill_(3.0)
    save_checkpoint(tmp_path, iteration=4, model=model)
    fresh = torch.nn.Linear(2, 2)
    load_checkpoint(tmp_path, model=fresh)
    assert torch.equal(fresh.weight, torch.full((2, 2), 3.0))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_000004",
                                                                          "latest"]


# --------------------------------------------------------------------------- state, RNG, errors


def test_state_round_trips_exactly_and_rejects_tensors(tmp_path):
    model = torch.nn.Linear(2, 1)
    state = {"pos": (3, 7), "history": {0: [0.5, float("nan")], 17: []},
             "np": np.int64(4), "name": "x", "flag": None, "raw": b"\x00\xff",
             "arr": np.arange(4, dtype=np.int32),
             "shaper": {"history": {"mode": "min", "value": {"p1": 12.0}, "count": {"p1": 3}}}}
    save_checkpoint(tmp_path, iteration=1, model=model, state=state)
    got = load_checkpoint(tmp_path, model=model)["state"]
    assert got["pos"] == (3, 7) and got["np"] == 4 and got["name"] == "x" and got["flag"] is None
    assert type(got["np"]) is int and got["raw"] == b"\x00\xff"
    assert got["history"][17] == [] and got["history"][0][0] == 0.5
    assert math.isnan(got["history"][0][1])
    assert got["arr"].dtype == np.int32 and got["arr"].tolist() == [0, 1, 2, 3]
    assert got["shaper"] == state["shaper"]
    with pytest.raises(TypeError, match=r"state: field 'buf\.1' is a tensor"):
        save_checkpoint(tmp_path, iteration=2, model=model, state={"buf": [1, torch.ones(2)]})
    with pytest.raises(TypeError, match=r"state: field 'a\.b' has unsupported type object"):
        save_checkpoint(tmp_path, iteration=2, model=model, state={"a": {"b": object()}})
    with pytest.raises(TypeError, match=r"state: field 's' is a numpy array of dtype <U1"):
        save_checkpoint(tmp_path, iteration=2, model=model, state={"s": np.array(["x"])})
    with pytest.raises(TypeError, match="config"):
        save_checkpoint(tmp_path, iteration=2, model=model, config={"f": object()})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["iter_000001"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_read_checkpoint_state_without_loading_the_model(tmp_path):
    model = torch.nn.Linear(2, 1)
    state = {"counters": {"steps": 3}, "reward_stage": {"pass_rates": [0.25, 0.5]}}
    path = save_checkpoint(tmp_path, iteration=3, model=model, state=state)
    assert read_checkpoint_state(path) == state
    assert read_checkpoint_state(tmp_path) == state  # a run directory: its latest checkpoint


def test_named_numpy_and_python_generators(tmp_path):
    model = torch.nn.Linear(2, 1)
    gens = {"np": np.random.default_rng(3), "legacy": np.random.RandomState(4),
            "py": random.Random(5), "torch": torch.Generator().manual_seed(6),
            "mt": np.random.Generator(np.random.MT19937(7))}  # its state holds a numpy array
    save_checkpoint(tmp_path, iteration=1, model=model, generators=gens)
    want = (gens["np"].random(4), gens["legacy"].rand(4), gens["py"].random(),
            torch.rand(4, generator=gens["torch"]), gens["mt"].random(4))
    fresh = {"np": np.random.default_rng(0), "legacy": np.random.RandomState(0),
             "py": random.Random(0), "torch": torch.Generator(),
             "mt": np.random.Generator(np.random.MT19937(0))}
    load_checkpoint(tmp_path, model=model, generators=fresh)
    got = (fresh["np"].random(4), fresh["legacy"].rand(4), fresh["py"].random(),
           torch.rand(4, generator=fresh["torch"]), fresh["mt"].random(4))
    for a, b in zip(got, want):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(KeyError, match="'other'"):
        load_checkpoint(tmp_path, model=model, generators={"other": torch.Generator()})
    with pytest.raises(TypeError, match=r"generators\['py'\]"):
        load_checkpoint(tmp_path, model=model, generators={"py": torch.Generator()})
    with pytest.raises(FileNotFoundError, match="optimizer"):
        load_checkpoint(tmp_path, model=model,
                        optimizer=torch.optim.AdamW(model.parameters()))


# --------------------------------------------------------------------------- checksums


def _saved(tmp_path: Path) -> tuple[TinyNet, Path]:
    model = TinyNet()
    opt, sched = _optim(model)
    _step(model, opt, sched, torch.Generator().manual_seed(0))
    path = save_checkpoint(tmp_path, iteration=1, model=model, optimizer=opt, scheduler=sched,
                           config={"lr": 0.1}, state={"counters": {"steps": 1}},
                           generators={"data": torch.Generator().manual_seed(2)})
    return model, path


def _load_all(path: Path) -> dict:
    fresh = TinyNet()
    opt, sched = _optim(fresh)
    return load_checkpoint(path, model=fresh, optimizer=opt, scheduler=sched,
                           generators={"data": torch.Generator()})


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_records_sha256_of_every_file(tmp_path):
    _, path = _saved(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["iteration"] == 1
    written = {p.name for p in path.iterdir()} - {"manifest.json", "COMPLETE"}
    assert set(manifest["files"]) == written
    for name, entry in manifest["files"].items():
        assert entry == {"sha256": _sha(path / name), "size": (path / name).stat().st_size}
    assert verify_checkpoint(tmp_path) == path


@pytest.mark.parametrize("name, damage, message", [
    ("model.safetensors", "flip", "corrupted or modified: sha256"),
    ("optimizer.pt", "truncate", "truncated or modified"),
    ("state.pt", "empty", "truncated or modified: 0 bytes"),
    ("rng.pt", "delete", "missing"),
    ("scheduler.pt", "flip", "corrupted or modified"),
    ("config.json", "flip", "corrupted or modified"),
])
def test_damaged_file_raises_checkpoint_error_naming_it(tmp_path, name, damage, message):
    model, path = _saved(tmp_path)
    target = path / name
    data = target.read_bytes()
    if damage == "flip":
        i = len(data) // 2
        target.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        target.write_bytes(b"")
    else:
        target.unlink()
    fresh = TinyNet()
    before = _params(fresh)
    opt, sched = _optim(fresh)
    with pytest.raises(CheckpointError, match=rf"{name}: {message}") as err:
        load_checkpoint(path, model=fresh, optimizer=opt, scheduler=sched,
                        generators={"data": torch.Generator()})
    assert err.value.path == target and isinstance(err.value, ValueError)
    _assert_bitwise(_params(fresh), before)  # nothing was modified before the error
    assert opt.state_dict()["state"] == {}
    with pytest.raises(CheckpointError, match=name):
        verify_checkpoint(path)
    # the checkpoint stays listed: the caller decides to fall back to an older one
    assert latest_checkpoint(tmp_path) == path


def test_damaged_manifest_raises_checkpoint_error(tmp_path):
    _, path = _saved(tmp_path)
    (path / "manifest.json").write_text('{"format_version": 2, "files": ')
    with pytest.raises(CheckpointError, match=r"manifest\.json: unreadable") as err:
        _load_all(path)
    assert err.value.path == path / "manifest.json"
    (path / "manifest.json").write_text('{"format_version": 1, "files": {}}')
    with pytest.raises(CheckpointError, match="manifest.json: expected format_version 2, got 1"):
        _load_all(path)
    (path / "manifest.json").write_text('{"format_version": 2, "files": {"rng.pt": {}}}')
    with pytest.raises(CheckpointError, match="manifest.json: malformed"):
        _load_all(path)
    (path / "manifest.json").write_text('{"format_version": 2, "files": {}}')
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not listed in"):
        load_checkpoint(path, model=TinyNet())


def test_legacy_checkpoint_is_refused_with_a_clear_error(tmp_path):
    legacy = tmp_path / "checkpoints" / "iter_000004"
    legacy.mkdir(parents=True)
    (legacy / "COMPLETE").write_text("4\n")
    (legacy / "state.json").write_text('{"iteration": 4, "state": {}}')
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(CheckpointError, match="older grouprl .*format_version 1"):
        load_checkpoint(legacy, model=TinyNet())


# --------------------------------------------------------------------------- resume: fallback


def _flip(path: Path) -> None:
    data = path.read_bytes()
    i = len(data) // 2
    path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])


def _three_checkpoints(tmp_path: Path) -> dict[int, dict[str, torch.Tensor]]:
    """Checkpoints at iterations 1, 2, 3 (a step between each); their weights by iteration."""
    model = TinyNet()
    opt, sched = _optim(model)
    gen = torch.Generator().manual_seed(0)
    weights = {}
    for it in (1, 2, 3):
        _step(model, opt, sched, gen)
        save_checkpoint(tmp_path, iteration=it, model=model, optimizer=opt, scheduler=sched,
                        generators={"data": gen}, keep_last=None,
                        metrics=[f'{{"iteration": {i}, "loss": {i}}}\n' for i in range(it + 1)])
        weights[it] = _params(model)
    return weights


def _resume(tmp_path: Path, said: list[str]):
    fresh = TinyNet()
    opt, sched = _optim(fresh)
    info = resume_checkpoint(tmp_path, model=fresh, optimizer=opt, scheduler=sched,
                             generators={"data": torch.Generator()}, echo=said.append)
    return info, _params(fresh)


def test_damaged_latest_checkpoint_falls_back_to_the_previous_intact_one(tmp_path):
    weights = _three_checkpoints(tmp_path)
    root = tmp_path / "checkpoints"
    said: list[str] = []
    info, params = _resume(tmp_path, said)
    assert info["iteration"] == 3 and said == []
    _assert_bitwise(params, weights[3])
    assert info["metrics"] == [f'{{"iteration": {i}, "loss": {i}}}\n' for i in range(4)]

    _flip(root / "iter_000003" / "model.safetensors")  # flipped weight bytes
    info, params = _resume(tmp_path, said)
    assert info["iteration"] == 2 and info["path"] == root / "iter_000002"
    _assert_bitwise(params, weights[2])
    assert len(said) == 1 and "iter_000003" in said[0]
    assert str(root / "iter_000003" / "model.safetensors") in said[0]
    assert "corrupted or modified" in said[0] and "falling back to iter_000002" in said[0]

    said.clear()
    (root / "iter_000002" / "optimizer.pt").write_bytes(b"")  # an empty file
    info, params = _resume(tmp_path, said)
    assert info["iteration"] == 1
    _assert_bitwise(params, weights[1])
    assert str(root / "iter_000002" / "optimizer.pt") in said[1] and "0 bytes" in said[1]

    said.clear()
    (root / "iter_000001" / "manifest.json").unlink()  # not even a manifest left
    info, _ = _resume(tmp_path, said)
    assert info is None
    assert "manifest.json is missing" in said[2]
    assert "no intact checkpoint" in said[-1] and "restarts from iteration 0" in said[-1]


def test_checkpoints_newer_than_latest_are_never_resumed(tmp_path):
    weights = _three_checkpoints(tmp_path)
    root = tmp_path / "checkpoints"
    (root / "latest").write_text("iter_000002\n")  # 3 is an abandoned branch
    _flip(root / "iter_000002" / "rng.pt")
    said: list[str] = []
    info, params = _resume(tmp_path, said)
    assert info["iteration"] == 1 and "iter_000002" in said[0]
    _assert_bitwise(params, weights[1])


def test_an_old_format_checkpoint_is_refused_not_skipped(tmp_path):
    legacy = tmp_path / "checkpoints" / "iter_000004"
    legacy.mkdir(parents=True)
    (legacy / "COMPLETE").write_text("4\n")
    (legacy / "state.json").write_text('{"iteration": 4, "state": {}}')
    with pytest.raises(ConfigError, match=r"iter_000004 was written by an older grouprl "
                                          r"\(checkpoint format 1, without manifest.json\)"):
        _resume(tmp_path, [])
    # older than the newest intact checkpoint: not in the way
    _three_checkpoints(tmp_path / "b")
    old = tmp_path / "b" / "checkpoints" / "iter_000000"
    old.mkdir()
    (old / "COMPLETE").write_text("0\n")
    (old / "state.json").write_text("{}")
    assert _resume(tmp_path / "b", [])[0]["iteration"] == 3


def test_a_generator_saved_on_another_device_type_is_refused_clearly(tmp_path):
    model = TinyNet()
    path = save_checkpoint(tmp_path, iteration=1, model=model,
                           generators={"sampling": torch.Generator().manual_seed(0)})
    rng = torch.load(path / "rng.pt", weights_only=False)
    rng["generators"]["sampling"]["device"] = "cuda:0"  # as if saved by a run on a GPU
    _tamper(path, "rng.pt", rng)
    with pytest.raises(ValueError, match=r"generators\['sampling'\]: checkpoint .* holds the "
                                         r"state of a cuda:0 generator, got one on cpu"):
        load_checkpoint(path, model=model, generators={"sampling": torch.Generator()})


def test_metrics_lines_are_saved_checked_and_returned(tmp_path):
    model = TinyNet()
    lines = ['{"iteration": 0, "eval/success_rate": 0.5}\n', '{"iteration": 1, "loss": 2}\n']
    path = save_checkpoint(tmp_path, iteration=1, model=model, metrics=lines)
    assert (path / "metrics.jsonl").read_text() == "".join(lines)
    assert "metrics.jsonl" in json.loads((path / "manifest.json").read_text())["files"]
    assert load_checkpoint(path, model=model)["metrics"] == lines
    assert load_checkpoint(save_checkpoint(tmp_path, iteration=2, model=model),
                           model=model)["metrics"] is None
    _flip(path / "metrics.jsonl")
    with pytest.raises(CheckpointError, match=r"metrics\.jsonl: corrupted or modified"):
        load_checkpoint(path, model=model)
    for bad in ("not a line", ['{"iteration": 1}'], ["a\nb\n"]):
        with pytest.raises((TypeError, ValueError), match="metrics"):
            save_checkpoint(tmp_path, iteration=3, model=model, metrics=bad)


# --------------------------------------------------------------------------- no unpickling


_SIDE_EFFECTS: list[str] = []


def _record(tag: str) -> str:
    _SIDE_EFFECTS.append(tag)
    return tag


class _Payload:
    """Unpickling this with the full unpickler would call ``_record`` (arbitrary code)."""

    def __reduce__(self):
        return (_record, ("executed",))


def _tamper(path: Path, name: str, obj) -> None:
    """Replace one file and fix up its manifest entry, so only the unpickler can refuse it."""
    torch.save(obj, path / name)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"][name] = {"sha256": _sha(path / name), "size": (path / name).stat().st_size}
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["state.pt", "optimizer.pt", "rng.pt"])
def test_loading_refuses_non_allowlisted_objects(tmp_path, name):
    model, path = _saved(tmp_path)
    payload = {"iteration": 1, "state": {"x": _Payload()}}
    _tamper(path, name, payload)
    _SIDE_EFFECTS.clear()
    with pytest.raises(CheckpointError, match=rf"{name}: cannot be loaded with "
                                              r"torch.load\(weights_only=True\)") as err:
        _load_all(path)
    assert "_record" in str(err.value) and err.value.path == path / name
    if name == "state.pt":
        with pytest.raises(CheckpointError, match="weights_only"):
            read_checkpoint_state(path)
    assert _SIDE_EFFECTS == []  # never executed
    verify_checkpoint(path)  # the checksums are fine: the refusal is the unpickler's
    torch.load(path / name, weights_only=False)  # guard: the full unpickler runs the payload
    assert _SIDE_EFFECTS == ["executed"]


def test_loading_goes_through_weights_only(tmp_path, monkeypatch):
    model, path = _saved(tmp_path)
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append((Path(args[0]).name, kwargs.get("weights_only"),
                      kwargs.get("map_location")))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    info = _load_all(path)
    assert info["iteration"] == 1 and info["state"] == {"counters": {"steps": 1}}
    assert sorted(calls) == [(n, True, "cpu") for n in ("optimizer.pt", "rng.pt",
                                                         "scheduler.pt", "state.pt")]


def test_saving_refuses_state_a_safe_load_could_not_read(tmp_path):
    class Warmup:  # a callable object: LambdaLR saves its __dict__
        def __init__(self) -> None:
            self.owner = object()

        def __call__(self, step: int) -> float:
            return 1.0

    model = TinyNet()
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, Warmup())
    with pytest.raises(TypeError, match=r"scheduler: holds objects that cannot be loaded "
                                        r"safely .*builtins\.object"):
        save_checkpoint(tmp_path, iteration=1, model=model, optimizer=opt, scheduler=sched)
    assert list_checkpoints(tmp_path) == []
    assert not list((tmp_path / "checkpoints").iterdir())


def test_numpy_allowlist_is_scoped_to_the_load(tmp_path):
    before = list(torch.serialization.get_safe_globals())
    _, path = _saved(tmp_path)
    _load_all(path)
    assert list(torch.serialization.get_safe_globals()) == before
    torch.save({"a": np.arange(3)}, tmp_path / "plain.pt")
    with pytest.raises(Exception, match="weights_only|Weights only"):
        torch.load(tmp_path / "plain.pt", weights_only=True)  # outside our loader: refused


@pytest.mark.parametrize("module, n_loads", [("checkpoint", 0), ("safe_io", 1),
                                             ("rng_state", 0)])
def test_source_loads_only_with_weights_only(module, n_loads):
    import importlib

    source = Path(importlib.import_module(f"grouprl.train.{module}").__file__).read_text()
    tree = ast.parse(source)
    banned = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal",
              "shelve"}
    loads = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & banned
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] not in banned
            assert "load" not in {a.name for a in node.names} or node.module != "torch"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "load":
            assert isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
            kw = {k.arg: k.value for k in node.keywords}
            assert isinstance(kw.get("weights_only"), ast.Constant)
            assert kw["weights_only"].value is True
            loads.append(node)
    assert len(loads) == n_loads and "pickle." not in source


# --------------------------------------------------------------------------- peft


def test_peft_lora_round_trip_saves_adapter_only(tmp_path):
    def make():
        torch.manual_seed(0)  # the base model is rebuilt identically, like from_pretrained
        base = _tiny_qwen()
        torch.manual_seed(int(np.random.randint(1000)))  # adapter init differs per call
        return _lora(base)

    fresh, path = _resume_matches(tmp_path, make)
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k for k in keys)
    full_bytes = sum(p.numel() * p.element_size() for p in fresh.base_model.parameters())
    assert (path / "model.safetensors").stat().st_size < full_bytes / 5
    adapter_cfg = json.loads((path / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 2 and sorted(adapter_cfg["target_modules"]) == ["q_proj",
                                                                               "v_proj"]
    with pytest.raises(ValueError, match="model: .*peft"):
        load_checkpoint(path, model=_tiny_qwen())
    save_checkpoint(tmp_path / "full", iteration=0, model=_tiny_qwen())
    with pytest.raises(ValueError, match="model: .*full model"):
        load_checkpoint(tmp_path / "full", model=fresh)
