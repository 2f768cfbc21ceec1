"""grouprl.policy.save: save_pretrained without progress bars, switch state restored."""

from __future__ import annotations

import pytest
import torch
from transformers.utils import logging as hf_logging

from grouprl.policy import build_tiny_policy, load_policy, no_progress_bars, save_policy

TEXTS = ["You are playing Sokoban.\n#_OX\nMove: <action>up</action>"] * 20


@pytest.fixture(scope="module")
def policy():
    return build_tiny_policy(TEXTS, vocab_size=280, seed=0, hidden_size=32, num_layers=1)


@pytest.fixture(autouse=True)
def _bars_on():
    """Each test starts with transformers' bars on (the library default) and ends so."""
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    yield
    if not was:
        hf_logging.disable_progress_bar()


def test_save_policy_prints_no_bar_and_reloads(policy, tmp_path, capfd):
    model, tok = policy
    capfd.readouterr()
    out = save_policy(model, tok, tmp_path / "a" / "b")
    captured = capfd.readouterr()
    assert "Writing model shards" not in captured.err + captured.out
    assert out == tmp_path / "a" / "b" and (out / "config.json").is_file()
    assert hf_logging.is_progress_bar_enabled()  # restored
    again, tok2 = load_policy(out)
    ids = torch.tensor([tok(TEXTS[0])["input_ids"]])
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)
    assert tok2(TEXTS[0])["input_ids"] == tok(TEXTS[0])["input_ids"]


def test_plain_save_pretrained_still_draws_the_bar(policy, tmp_path, capfd):
    """The bar is on outside :func:`no_progress_bars` (so the test above is not vacuous)."""
    model, _ = policy
    capfd.readouterr()
    model.save_pretrained(tmp_path)
    assert "Writing model shards" in capfd.readouterr().err


def test_build_tiny_policy_saves_quietly(tmp_path, capfd):
    capfd.readouterr()
    build_tiny_policy(TEXTS, vocab_size=280, seed=0, hidden_size=32, num_layers=1,
                      save_dir=tmp_path)
    assert "Writing model shards" not in capfd.readouterr().err
    assert (tmp_path / "tokenizer.json").is_file()


def _draw(desc: str) -> None:
    for _ in hf_logging.tqdm(range(2), desc=desc):
        pass


@pytest.mark.skipif(not hasattr(hf_logging, "set_tqdm_hook"), reason="transformers < 5")
def test_no_progress_bars_chains_and_restores_the_previous_hook(capfd):
    seen: list[dict] = []

    def user_hook(factory, args, kwargs):
        seen.append(dict(kwargs))
        return factory(*args, **kwargs)

    hf_logging.set_tqdm_hook(user_hook)
    try:
        capfd.readouterr()
        with pytest.raises(RuntimeError, match="boom"):
            with no_progress_bars():
                _draw("quiet bar")
                raise RuntimeError("boom")
        assert "quiet bar" not in capfd.readouterr().err
        assert seen == [{"desc": "quiet bar", "disable": True}]  # the user's hook still ran
        assert hf_logging.is_progress_bar_enabled()  # the global switch is never flipped
        _draw("loud bar")
        assert "loud bar" in capfd.readouterr().err
        assert seen[-1] == {"desc": "loud bar"}
    finally:
        assert hf_logging.set_tqdm_hook(None) is user_hook  # restored after the error


def test_no_progress_bars_without_hook_api_uses_the_switch(monkeypatch, capfd):
    """transformers < 5 has no set_tqdm_hook: the on/off switch is flipped and put back."""
    monkeypatch.delattr(hf_logging, "set_tqdm_hook", raising=False)
    capfd.readouterr()
    with pytest.raises(RuntimeError, match="boom"):
        with no_progress_bars():
            assert not hf_logging.is_progress_bar_enabled()
            _draw("quiet bar")
            raise RuntimeError("boom")
    assert "quiet bar" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    with no_progress_bars():
        assert not hf_logging.is_progress_bar_enabled()
    assert not hf_logging.is_progress_bar_enabled()  # the user's "off" is left alone


def test_save_policy_rejects_wrong_arguments(policy, tmp_path):
    model, tok = policy
    with pytest.raises(TypeError, match="model"):
        save_policy(object(), tok, tmp_path)
    with pytest.raises(TypeError, match="tokenizer"):
        save_policy(model, object(), tmp_path)
    with pytest.raises(ValueError, match="directory"):
        save_policy(model, tok, 3)
