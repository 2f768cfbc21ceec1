"""The BERT-style signal classifier: input layout, seeded and deterministic training that
leaves the global RNG alone, learning the marker rule from the query alone, query+response
input, and loading a local BERT checkpoint offline."""

from __future__ import annotations

import pytest
import torch
from presafe_testing import tiny_lm
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from grouprl.presafe import (
    build_bert_classifier,
    classifier_accuracy,
    classifier_logits,
    load_bert_classifier,
    toy_prompts,
    train_classifier,
)
from grouprl.validation import UserError


def _data():
    harmful = [p.text for p in toy_prompts(24)]
    benign = [f"What is {a} + {b}?" for a in range(4) for b in range(6)]
    return harmful + benign, [1] * len(harmful) + [0] * len(benign)


def test_scratch_input_layout():
    _, tok = tiny_lm()
    clf = build_bert_classifier(tok, hidden_size=16, num_heads=2, max_length=12)
    enc = clf.encode(["What is 3 + 4?"], ["The answer is 7."])
    ids, types = enc["input_ids"][0].tolist(), enc["token_type_ids"][0].tolist()
    q = tok("What is 3 + 4?", add_special_tokens=False)["input_ids"]
    r = tok("The answer is 7.", add_special_tokens=False)["input_ids"]
    cls, sep = len(tok), len(tok) + 1
    assert (clf.cls_id, clf.sep_id) == (cls, sep)
    assert ids == [cls, *q, sep, *r, sep][:12]                        # cut to max_length
    assert types == ([0] * (len(q) + 2) + [1] * (len(r) + 1))[:12]
    short = clf.encode(["q", "a longer query here"])
    assert short["attention_mask"][0].sum() < short["attention_mask"][1].sum()
    assert clf.model.config.vocab_size == len(tok) + 2


def test_training_is_seeded_deterministic_and_learns_the_marker_rule():
    _, tok = tiny_lm()
    queries, labels = _data()
    test_q = [p.text for p in toy_prompts(60)[40:]] + [f"What is {a} + {b}?" for a in range(4, 9)
                                                       for b in range(6, 10)]
    test_y = [1] * 20 + [0] * 20
    torch.manual_seed(11)
    rng = torch.random.get_rng_state()
    runs = []
    for _ in range(2):
        clf = build_bert_classifier(tok, hidden_size=32, num_heads=2, seed=3)
        losses = train_classifier(clf, queries, labels, epochs=15, batch_size=8, lr=2e-3,
                                  seed=3)
        runs.append((losses, classifier_logits(clf, test_q)))
    assert torch.equal(torch.random.get_rng_state(), rng)                 # global RNG untouched
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert runs[0][0][-1] < runs[0][0][0]
    assert classifier_accuracy(runs[0][1], test_y) >= 0.9                  # held-out prompts


def test_query_plus_response_input_trains():
    _, tok = tiny_lm()
    queries, labels = _data()
    responses = ["I'm sorry." if y else "The answer is 3." for y in labels]
    clf = build_bert_classifier(tok, hidden_size=16, num_heads=2, seed=0)
    losses = train_classifier(clf, queries, labels, responses=responses, epochs=3, lr=2e-3)
    assert len(losses) == 3 * 2 and classifier_logits(clf, queries, responses).shape == (48, 2)
    with pytest.raises(ValueError, match="label"):
        train_classifier(clf, ["q"], [2])


def test_a_local_bert_checkpoint_loads_offline(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is", "poison", "the", "?"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    config = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    clf = load_bert_classifier(tmp_path, max_length=64)
    assert clf.own_tokenizer and clf.max_length == 32                  # the checkpoint's limit
    enc = clf.encode(["what is the poison ?"])
    assert enc["input_ids"][0, 0].item() == 2                          # its own [CLS]
    train_classifier(clf, ["what is the poison ?", "what is the ?"], [1, 0], epochs=2)
    assert classifier_logits(clf, ["what is ?"]).shape == (1, 2)
    with pytest.raises(UserError, match="presafe.bert_path"):
        load_bert_classifier(tmp_path / "missing")
