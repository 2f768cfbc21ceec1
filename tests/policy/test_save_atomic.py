"""save_policy never leaves a half-written model at a path that did not exist (issue 13)."""

from __future__ import annotations

import pytest

from grouprl.policy import build_tiny_policy, load_policy, save_policy

TEXTS = ["You are playing Sokoban.\n#_OX\nMove: <action>up</action>"] * 20


class FailingTokenizer:
    """Fails after the model's files are written, as a crash in the middle of a save would."""

    def save_pretrained(self, directory):
        raise OSError("disk full")


def test_a_failed_save_leaves_no_directory_and_no_leftover(tmp_path):
    model, tok = build_tiny_policy(TEXTS, vocab_size=280, seed=0, hidden_size=32, num_layers=1)
    target = tmp_path / "out" / "policy"
    with pytest.raises(OSError, match="disk full"):
        save_policy(model, FailingTokenizer(), target)
    assert not target.exists()
    assert list((tmp_path / "out").iterdir()) == []  # the temp folder is removed
    assert save_policy(model, tok, target) == target
    assert sorted(p.name for p in tmp_path.joinpath("out").iterdir()) == ["policy"]
    load_policy(target)


def test_saving_into_an_existing_directory_keeps_its_other_files(tmp_path):
    model, tok = build_tiny_policy(TEXTS, vocab_size=280, seed=0, hidden_size=32, num_layers=1)
    (tmp_path / "notes.txt").write_text("mine")
    save_policy(model, tok, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob(".tmp-*"))
