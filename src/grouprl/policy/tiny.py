"""Tiny from-scratch policies: a byte-level BPE tokenizer trained on the environment's own text
and a few-layer Qwen2 causal LM sized for CPU RL.

The tokenizer:

* byte-level BPE (lossless: any UTF-8 text, including Sokoban grids made of ``#_OX√PS`` and
  newlines, decodes back exactly);
* ``<|endoftext|>`` (id 0) is the EOS token and ``<|pad|>`` (id 1) a *separate* pad token, so a
  padding id is never mistaken for a generated EOS; both are special (skipped by
  ``decode(..., skip_special_tokens=True)``);
* ``special_tokens`` (e.g. ``<action>``, ``</action>``) are registered as *atomic* added tokens:
  always one id, never split or merged, but **not** flagged special, so they survive
  ``skip_special_tokens=True`` and the decoded action text still contains its tags;
* ``padding_side="left"`` (generation), no BOS, no post-processor, and no chat template: grouprl
  applies a chat template only when the tokenizer has one, so prompts go to the tiny model as
  plain text.

``len(tokenizer) <= vocab_size`` counts everything (the two special tokens, the atomic tokens and
the learned merges); on a small corpus BPE may stop early with fewer tokens.

Bounded training: BPE training time grows with the corpus and, for one long unbroken text,
roughly with the square of its length (a 1 MB prompt took over 10 minutes).  So the trainer sees a
bounded sample (:func:`tokenizer_sample`): each text (each piece between atomic tokens) contributes
at most its first ``max_text_chars`` (default :data:`TOKENIZER_MAX_TEXT_CHARS` = 4,096)
characters, and when the capped pieces hold more than ``max_chars`` (default
:data:`TOKENIZER_MAX_CHARS` = 2,000,000) characters a seeded random subset of whole pieces that
fits is kept, in corpus order.  A tiny model's corpus (a few hundred prompts and replies) is far
below both caps, so it is used whole.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    trainers,
)
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from .save import save_policy

__all__ = ["EOS_TOKEN", "PAD_TOKEN", "TOKENIZER_MAX_CHARS", "TOKENIZER_MAX_TEXT_CHARS",
           "build_tiny_model", "build_tiny_policy", "tiny_config", "tokenizer_sample",
           "train_tokenizer"]

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
_RESERVED = (EOS_TOKEN, PAD_TOKEN)
#: default cap on the characters the tokenizer trainer sees in all (module docstring)
TOKENIZER_MAX_CHARS = 2_000_000
#: default cap on the characters one text (piece between atomic tokens) contributes
TOKENIZER_MAX_TEXT_CHARS = 4_096


def _check_special_tokens(special_tokens: Sequence[str]) -> list[str]:
    if isinstance(special_tokens, str):
        raise ValueError(f"special_tokens: expected a sequence of strings, got the string "
                         f"{special_tokens!r} (wrap it in a tuple)")
    out: list[str] = []
    for tok in special_tokens:
        if not isinstance(tok, str) or not tok:
            raise ValueError(f"special_tokens: every entry must be a non-empty string, got {tok!r}")
        if tok in _RESERVED:
            raise ValueError(f"special_tokens: {tok!r} is reserved (EOS/pad are always added)")
        if tok not in out:
            out.append(tok)
    return out


def _pieces(texts: Iterable[str], atomic: list[str]) -> Iterator[str]:
    """The training texts with the atomic tokens cut out, so BPE spends no merges on them."""
    pattern = re.compile("|".join(re.escape(t) for t in sorted(atomic, key=len, reverse=True)))
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts: item {i} is {type(text).__name__}, expected str")
        if not atomic:
            yield text
            continue
        for piece in pattern.split(text):
            if piece:
                yield piece


def _cap(name: str, value: object) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name}: expected None or an int >= 1, got {value!r}")
    return value


def tokenizer_sample(texts: Iterable[str], special_tokens: Sequence[str] = (), *,
                     max_chars: int | None = TOKENIZER_MAX_CHARS,
                     max_text_chars: int | None = TOKENIZER_MAX_TEXT_CHARS) -> list[str]:
    """The pieces of ``texts`` the tokenizer trainer sees (module docstring, "Bounded training").

    The atomic ``special_tokens`` are cut out; each piece keeps its first ``max_text_chars``
    characters; if the pieces then hold more than ``max_chars`` characters, a subset of whole
    pieces chosen in a ``random.Random(0)`` order while they fit is kept, in corpus order.
    ``None`` lifts a cap. The result never holds more than ``max_chars`` characters.
    """
    _cap("max_chars", max_chars)
    _cap("max_text_chars", max_text_chars)
    atomic = [t for t in special_tokens if t not in _RESERVED]
    pieces = [p if max_text_chars is None else p[:max_text_chars]
              for p in _pieces(texts, atomic)]
    if max_chars is None or sum(map(len, pieces)) <= max_chars:
        return pieces
    order = list(range(len(pieces)))
    random.Random(0).shuffle(order)
    keep, used = [False] * len(pieces), 0
    for i in order:
        if used + len(pieces[i]) <= max_chars:
            keep[i], used = True, used + len(pieces[i])
            if used == max_chars:
                break
    return [p for p, k in zip(pieces, keep) if k]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, *, min_frequency: int = 2,
                    special_tokens: Sequence[str] = (), isolate_chars: str = "",
                    max_chars: int | None = TOKENIZER_MAX_CHARS,
                    max_text_chars: int | None = TOKENIZER_MAX_TEXT_CHARS
                    ) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (see the module docstring for its layout).

    Args:
        texts: the environment's own text (prompts, observations, actions).
        vocab_size: upper bound on ``len(tokenizer)``, special and atomic tokens included.
        min_frequency: minimum pair count for a BPE merge.
        special_tokens: extra strings that must be single ids (e.g. ``("<action>", "</action>")``).
        isolate_chars: characters that never merge with their neighbours (each occurrence is its
            own pre-token). Sokoban passes its grid symbols ``#_OX√PS`` so that one cell is one
            token and the model sees the grid's geometry instead of BPE chunks like ``"___#"``.
        max_chars, max_text_chars: the training sample's bounds (:func:`tokenizer_sample`;
            ``None`` lifts a bound).

    Returns:
        a ``transformers.PreTrainedTokenizerFast`` with ``padding_side="left"``.
    """
    atomic = _check_special_tokens(special_tokens)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ValueError(f"vocab_size: expected an int, got {vocab_size!r}")
    floor = len(_RESERVED) + len(atomic) + 256
    if vocab_size < floor:
        raise ValueError(f"vocab_size: must be >= {floor} (256 bytes + {len(_RESERVED)} special "
                         f"+ {len(atomic)} atomic tokens), got {vocab_size}")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency: expected an int >= 1, got {min_frequency!r}")

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if isolate_chars:
        chars = "".join(sorted(set(isolate_chars)))
        pattern = "[" + "".join("\\" + c if c in "\\^]-[" else c for c in chars) + "]"
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(pattern), behavior="isolated"), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(atomic), min_frequency=min_frequency,
        special_tokens=list(_RESERVED), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False)
    sample = tokenizer_sample(texts, atomic, max_chars=max_chars, max_text_chars=max_text_chars)
    tok.train_from_iterator(sample, trainer)
    if atomic:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in atomic])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN,
                                   pad_token=PAD_TOKEN, padding_side="left")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def tiny_config(tokenizer, *, hidden_size: int = 128, num_layers: int = 4, num_heads: int = 4,
                num_kv_heads: int = 2, intermediate_size: int = 384,
                max_position_embeddings: int = 2048, tie_word_embeddings: bool = True
                ) -> Qwen2Config:
    """A small ``transformers.Qwen2Config`` for ``tokenizer`` (dropout 0, vocab = len(tokenizer)).

    The defaults give about 0.85M parameters with a 512-token vocabulary.
    """
    for name, value in (("hidden_size", hidden_size), ("num_layers", num_layers),
                        ("num_heads", num_heads), ("num_kv_heads", num_kv_heads),
                        ("intermediate_size", intermediate_size),
                        ("max_position_embeddings", max_position_embeddings)):
        _positive_int(name, value)
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size: {hidden_size} must be divisible by num_heads={num_heads}")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_kv_heads: {num_kv_heads} must divide num_heads={num_heads}")
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer: has no eos_token; train it with train_tokenizer")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads, max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=bool(tie_word_embeddings), attention_dropout=0.0,
        use_sliding_window=False, rms_norm_eps=1e-6, initializer_range=0.02,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=pad, bos_token_id=None)


def build_tiny_model(tokenizer, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                     **config_kwargs) -> Qwen2ForCausalLM:
    """A freshly initialised ``Qwen2ForCausalLM`` for ``tokenizer``; same seed → same weights.

    The global torch RNG is left untouched (initialisation runs under ``fork_rng``).
    ``config_kwargs`` go to :func:`tiny_config`.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: expected an int, got {seed!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
    config = tiny_config(tokenizer, **config_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model = model.to(dtype)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model


def build_tiny_policy(texts: Iterable[str], *, vocab_size: int = 512,
                      special_tokens: Sequence[str] = (), isolate_chars: str = "", seed: int = 0,
                      save_dir: str | Path | None = None, **config_kwargs
                      ) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    """Train a tokenizer on ``texts`` and build a tiny model for it: ``(model, tokenizer)``.

    With ``save_dir`` both are written there (``model.safetensors`` + tokenizer files, with no
    progress bar, fsynced, and atomically when ``save_dir`` does not exist yet:
    :func:`grouprl.policy.save_policy`), so ``grouprl.policy.load_policy(save_dir)`` reloads
    them.
    """
    tokenizer = train_tokenizer(texts, vocab_size, special_tokens=special_tokens,
                                isolate_chars=isolate_chars)
    model = build_tiny_model(tokenizer, seed=seed, **config_kwargs)
    if save_dir is not None:
        save_policy(model, tokenizer, save_dir)
    return model, tokenizer
