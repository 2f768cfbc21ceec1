"""grouprl.policy.generate on transformers' current cache API: no deprecation warning from
generation or teacher-forced log-probs, and the KV-cached loop equals a no-cache reference."""

from __future__ import annotations

import copy
import inspect
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from grouprl.policy import build_tiny_policy, generate, left_pad, response_logprobs
from grouprl.policy.generate import _cache_keyword
from testing_utils import sokoban_corpus


@pytest.fixture(scope="module")
def policy():
    model, tok = build_tiny_policy(sokoban_corpus(60, seed=1, rows=4, cols=5), vocab_size=300,
                                   special_tokens=("<action>", "</action>"), seed=0)
    model.eval()
    return model, tok


def _prompts(tok) -> list[list[int]]:
    base = tok("You are playing Sokoban.\n#_OX√\n##PS_\nMove: ")["input_ids"]
    return [base[-3:], base, base[-9:], base[-3:]]  # mixed lengths; a repeat (shared prefill)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _strict(monkeypatch) -> Iterator[_Records]:
    """DeprecationWarning/FutureWarning raise; transformers' logged warnings are recorded.

    transformers logs its cache-rename warning with ``logger.warning_once`` (an lru-cached
    method on ``logging.Logger``): it is routed to plain ``warning`` here, so an earlier test
    that already logged it cannot hide it.
    """
    records = _Records()
    hf_logger = logging.getLogger("transformers")
    monkeypatch.setattr(logging.Logger, "warning_once",
                        lambda self, *args, **kwargs: self.warning(*args, **kwargs),
                        raising=False)
    hf_logger.addHandler(records)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            warnings.simplefilter("error", FutureWarning)
            yield records
    finally:
        hf_logger.removeHandler(records)


def _deprecations(records: _Records) -> list[str]:
    return [m for m in records.messages if "deprecat" in m.lower()]


def test_generation_and_logprobs_emit_no_deprecation_warning(policy, monkeypatch):
    model, tok = policy
    with _strict(monkeypatch) as records:
        gen = generate(model, tok, _prompts(tok), max_new_tokens=4, temperature=0.9,
                       generator=torch.Generator().manual_seed(0))
        greedy = generate(model, tok, _prompts(tok), max_new_tokens=3, do_sample=False,
                          batch_size=3)
        logp, ent = response_logprobs(model, gen.prompt_ids, gen.prompt_mask, gen.response_ids,
                                      gen.response_mask, temperature=0.9, with_entropy=True)
    assert _deprecations(records) == []
    assert gen.response_ids.shape[0] == 4 and greedy.response_ids.shape[0] == 4
    assert logp.shape == gen.response_ids.shape and ent is not None


def test_the_strict_check_catches_the_old_cache_keyword(policy, monkeypatch):
    """The check above is not vacuous: the pre-5.2x keyword does warn on this transformers."""
    model, tok = policy
    if _cache_keyword(model) != "cache":
        pytest.skip("this transformers predates the `cache` keyword")
    ids = torch.tensor([_prompts(tok)[0]])
    with torch.no_grad():
        past = model(input_ids=ids, use_cache=True).cache
    with _strict(monkeypatch), pytest.raises(FutureWarning, match="past_key_values"):
        with torch.no_grad():
            model(input_ids=ids[:, -1:], past_key_values=past, use_cache=True)


def test_cache_keyword_follows_the_forward_signature(policy):
    model, _ = policy

    class OldStyle(torch.nn.Module):
        def forward(self, input_ids=None, attention_mask=None, past_key_values=None,
                    use_cache=None):
            raise AssertionError("not called")

    expected = "cache" if "cache" in inspect.signature(model.forward).parameters else \
        "past_key_values"
    assert _cache_keyword(model) == expected
    assert _cache_keyword(OldStyle()) == "past_key_values"


@torch.no_grad()
def _no_cache_reference(model, tok, prompts, max_new_tokens: int, *, do_sample: bool,
                        temperature: float, generator: torch.Generator | None):
    """``(tokens, log-probs, lengths)`` decoded by a full forward over ``[prompt | tokens so
    far]`` at every step (no KV cache).

    Same masks, positions (``cumsum(mask) - 1``), RNG draws (one multinomial over the whole
    batch per step) and finished-row handling as :func:`generate`, no top-k/top-p.
    """
    pad, eos = tok.pad_token_id, tok.eos_token_id
    ids, mask = left_pad(prompts, pad)
    bsz = len(prompts)
    tokens = torch.empty((bsz, 0), dtype=torch.long)
    logps = torch.empty((bsz, 0), dtype=torch.float32)
    finished = torch.zeros(bsz, dtype=torch.bool)
    lengths = torch.zeros(bsz, dtype=torch.long)
    for _ in range(max_new_tokens):
        full_ids = torch.cat([ids, tokens], dim=1)
        full_mask = torch.cat([mask, torch.ones_like(tokens)], dim=1)
        logits = model(input_ids=full_ids, attention_mask=full_mask,
                       position_ids=(full_mask.cumsum(-1) - 1).clamp_min(0),
                       use_cache=False).logits[:, -1]
        z = logits.float() / temperature if do_sample else logits.float()
        if do_sample:
            nxt = torch.multinomial(z.softmax(-1), 1, generator=generator).squeeze(-1)
        else:
            nxt = z.argmax(-1)
        lp = torch.log_softmax(z, -1).gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
        lengths += (~finished).long()
        nxt = torch.where(finished, pad, nxt)
        tokens = torch.cat([tokens, nxt.unsqueeze(-1)], dim=1)
        logps = torch.cat([logps, torch.where(finished, 0.0, lp).unsqueeze(-1)], dim=1)
        finished |= nxt == eos
        if bool(finished.all()):
            break
    return tokens, logps, lengths


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
def test_cached_loop_equals_no_cache_reference(policy, do_sample):
    model, tok = policy
    prompts = _prompts(tok)
    kwargs = {"do_sample": do_sample, "temperature": 0.7}
    # float64 weights: the cache and the full forward differ by ~1e-16, below the float32
    # rounding of the recorded log-probs, so tokens AND log-probs must be bit-identical
    exact = copy.deepcopy(model).double()
    gen = generate(exact, tok, prompts, max_new_tokens=6,
                   generator=torch.Generator().manual_seed(5), **kwargs)
    tokens, logps, lengths = _no_cache_reference(exact, tok, prompts, 6,
                                        generator=torch.Generator().manual_seed(5), **kwargs)
    assert torch.equal(gen.response_lengths, lengths)
    assert torch.equal(gen.response_ids, tokens)
    assert torch.equal(gen.logprobs, logps)
    # float32 weights (what training runs): same tokens, log-probs up to float32 rounding
    gen32 = generate(model, tok, prompts, max_new_tokens=6,
                     generator=torch.Generator().manual_seed(5), **kwargs)
    tokens32, logps32, _ = _no_cache_reference(model, tok, prompts, 6,
                                            generator=torch.Generator().manual_seed(5), **kwargs)
    assert torch.equal(gen32.response_ids, tokens32)
    torch.testing.assert_close(gen32.logprobs, logps32, rtol=0, atol=5e-6)
