"""Batched sampling from a Hugging Face causal LM, and teacher-forced response log-probs.

:func:`generate` runs its own decoding loop over the model (not ``model.generate``): one
prefill forward over the left-padded prompts (``logits_to_keep=1``), then one forward per new
token for the whole batch with the KV cache (the ``cache=`` keyword and ``output.cache`` of
current transformers, ``past_key_values`` on releases that predate it). Owning the loop gives
exact control of

* the RNG: every step draws one ``torch.multinomial`` over the full (B, V) batch from
  ``generator`` (or the global torch RNG), whatever rows have finished, so the same batch, the
  same weights and the same generator state give the same samples;
* positions: ``position_ids = cumsum(attention_mask) - 1`` (clipped at 0) for the prompt and
  ``n_prompt_tokens + j`` for response token j, exactly what :func:`response_logprobs` rebuilds
  from the masks, so recorded and recomputed log-probs agree;
* the recorded log-prob of each sampled token, ``log_softmax(logits / temperature)`` taken
  *before* top-k/top-p truncation (as verl recomputes it in the learner); greedy decoding
  (``do_sample=False``) records log-probs at temperature 1;
* stop strings: after each step, the rows still running decode the tail of their response and
  stop as soon as it contains a stop string. The stop token is kept in the mask.

Long prompts: a prompt longer than ``max_prompt_tokens`` tokens is *left-truncated* (its last
``max_prompt_tokens`` tokens are kept: the question and the chat template's assistant header sit
at the end), flagged in ``Generation.prompt_truncated`` and reported once per limit with a
:class:`PromptTruncationWarning`. ``max_prompt_tokens=None`` uses the model's context,
``config.max_position_embeddings - max_new_tokens`` (at least 1), so a 1 MB prompt never reaches
the model whole (it would ask for terabytes of attention memory with a real model); a model
config without ``max_position_embeddings`` sets no limit.

Finished rows are fed the pad id and ignored; the loop ends when every row has finished or
after ``max_new_tokens`` steps. Identical prompts (a GRPO group) share one prefill: the distinct
prompts are run once and their KV-cache rows repeated, which divides the dominant cost of short
responses to long prompts by the group size.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..losses.logprobs import IGNORE_INDEX, token_logprobs
from .precision import autocast

__all__ = ["Generation", "PromptTruncationWarning", "generate", "left_pad",
           "prompt_token_limit", "response_logprobs"]


class PromptTruncationWarning(UserWarning):
    """Prompts longer than ``max_prompt_tokens`` were left-truncated (module docstring)."""


@dataclass
class Generation:
    """The result of :func:`generate` (B rows, in the order of the prompts).

    Attributes:
        prompt_ids: (B, P) prompt token ids, left-padded with the pad id.
        prompt_mask: (B, P) 1 on real prompt tokens.
        response_ids: (B, R) sampled ids, right-padded with the pad id; R = longest response.
        response_mask: (B, R) 1 on generated tokens up to and including the EOS / the token that
            completed a stop string.
        logprobs: (B, R) float32 ``log_softmax(logits / temperature)`` of each sampled token
            (before top-k/top-p truncation; temperature 1 for greedy); 0 on padding.
        texts: decoded responses (special tokens skipped), cut right after the first stop string.
        truncated: (B,) True when neither EOS nor a stop string appeared within max_new_tokens.
        prompt_truncated: (B,) True when the prompt was left-truncated to ``max_prompt_tokens``
            (``None`` for a Generation built by hand).
    """

    prompt_ids: torch.LongTensor
    prompt_mask: torch.LongTensor
    response_ids: torch.LongTensor
    response_mask: torch.LongTensor
    logprobs: torch.FloatTensor
    texts: list[str]
    truncated: torch.BoolTensor
    prompt_truncated: torch.BoolTensor | None = None

    @property
    def response_lengths(self) -> torch.LongTensor:
        """(B,) number of generated tokens of each row."""
        return self.response_mask.sum(-1)

    def __len__(self) -> int:
        return len(self.texts)


# ----------------------------------------------------------------------------------- helpers

def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _forward_parameters(model: torch.nn.Module) -> frozenset[str]:
    """Named parameters of the (base) model's ``forward`` (empty when it cannot be inspected)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return frozenset(inspect.signature(base.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the (base) model's forward takes ``logits_to_keep`` (transformers >= 4.50)."""
    return "logits_to_keep" in _forward_parameters(model)


def _cache_keyword(model: torch.nn.Module) -> str:
    """The name of the KV cache, both as a ``forward`` keyword and as a field of its output.

    Current transformers (5.2x) call it ``cache`` (a ``DynamicCache`` built by the model on the
    first ``use_cache=True`` forward) and deprecate ``past_key_values``, with a FutureWarning on
    every forward that passes it and a logged warning on every read of
    ``output.past_key_values``; older releases (down to grouprl's lower bound 4.51) and
    remote-code models only know ``past_key_values``. Same cache object either way, so the
    numerics do not depend on the name.
    """
    return "cache" if "cache" in _forward_parameters(model) else "past_key_values"


def _eos_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    """EOS ids from the tokenizer and the model's generation config (which may list several)."""
    ids: list[int] = []
    candidates = [getattr(tokenizer, "eos_token_id", None)]
    gen_config = getattr(model, "generation_config", None)
    if gen_config is not None:
        candidates.append(getattr(gen_config, "eos_token_id", None))
    for cand in candidates:
        for i in (cand if isinstance(cand, (list, tuple)) else [cand]):
            if isinstance(i, int) and i not in ids:
                ids.append(i)
    return ids


def _pad_id(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    if not isinstance(pad, int):
        raise ValueError("tokenizer: has neither a pad token nor an eos token; use "
                         "grouprl.policy.prepare_tokenizer or set tokenizer.pad_token")
    return pad


def _prompt_id_lists(tokenizer, prompts, add_special_tokens: bool) -> list[list[int]]:
    if isinstance(prompts, str):
        raise ValueError("prompts: expected a sequence of prompts, got a single string "
                         "(wrap it in a list)")
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2:
            raise ValueError(f"prompts: a tensor of ids must be 2-D, got {prompts.dim()}-D")
        prompts = prompts.tolist()
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts: expected at least one prompt, got an empty sequence")
    if all(isinstance(p, str) for p in prompts):
        lists = tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]
    elif not any(isinstance(p, str) for p in prompts):
        lists = []
        for i, p in enumerate(prompts):
            p = p.tolist() if isinstance(p, torch.Tensor) else list(p)
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in p):
                raise ValueError(f"prompts: item {i} must be a string or a sequence of int "
                                 f"token ids")
            lists.append(p)
    else:
        raise ValueError("prompts: expected all strings or all token-id sequences, got a mix")
    for i, ids in enumerate(lists):
        if not ids:
            raise ValueError(f"prompts: item {i} is empty; every prompt needs at least one token")
    return lists


def prompt_token_limit(model: torch.nn.Module, max_new_tokens: int,
                       max_prompt_tokens: int | None = None) -> int | None:
    """The prompt length :func:`generate` keeps: ``max_prompt_tokens`` if given, else the
    model's ``max_position_embeddings - max_new_tokens`` (at least 1), else ``None`` (no
    limit: the model config does not say its context)."""
    if max_prompt_tokens is not None:
        if isinstance(max_prompt_tokens, bool) or not isinstance(max_prompt_tokens, int) or \
                max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens: expected None or an int >= 1, got "
                             f"{max_prompt_tokens!r}")
        return max_prompt_tokens
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        return None
    return max(1, context - max_new_tokens)


def _limit_prompts(id_lists: list[list[int]], limit: int | None
                   ) -> tuple[list[list[int]], list[bool]]:
    """Left-truncate the id lists longer than ``limit``. The warning's text depends only on
    the limit, so Python's default filter shows it once, not on every call."""
    if limit is None:
        return id_lists, [False] * len(id_lists)
    cut = [len(ids) > limit for ids in id_lists]
    if any(cut):
        warnings.warn(f"prompts longer than {limit} tokens are left-truncated to their last "
                      f"{limit} tokens (Generation.prompt_truncated flags them); set "
                      "rollout.max_prompt_tokens (generate's max_prompt_tokens) to change the "
                      "limit, or shorten the prompts", PromptTruncationWarning, stacklevel=3)
        id_lists = [ids[len(ids) - limit:] if c else ids for ids, c in zip(id_lists, cut)]
    return id_lists, cut


def left_pad(id_lists: Sequence[Sequence[int]], pad_id: int,
             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token-id lists: ``(ids, mask)``, both (B, max_len) int64."""
    width = max(len(x) for x in id_lists)
    ids = torch.full((len(id_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(id_lists), width), dtype=torch.long)
    for row, x in enumerate(id_lists):
        if x:
            ids[row, width - len(x):] = torch.as_tensor(x, dtype=torch.long)
            mask[row, width - len(x):] = 1
    return ids.to(device), mask.to(device)


def _check_sampling(max_new_tokens, temperature, top_p, top_k, do_sample, batch_size) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or \
            max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected a positive int, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature: expected a finite number > 0, got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p: expected a number in (0, 1], got {top_p!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k: expected an int >= 0 (0 = off), got {top_k!r}")
    if do_sample not in (True, False):
        raise ValueError(f"do_sample: expected True or False, got {do_sample!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
            batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size: expected a positive int or None, got {batch_size!r}")


def _check_stop_strings(stop_strings) -> list[str]:
    if isinstance(stop_strings, str):
        raise ValueError(f"stop_strings: expected a sequence of strings, got the string "
                         f"{stop_strings!r} (wrap it in a tuple)")
    out = list(stop_strings)
    for s in out:
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop_strings: every entry must be a non-empty string, got {s!r}")
    return out


def _truncate(z: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then top-p (nucleus) filtering of (B, V) scaled logits: dropped entries → -inf."""
    if 0 < top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        probs = sorted_z.softmax(-1)
        # drop a token when the tokens ranked above it already hold >= top_p of the mass
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, float("-inf"))
    return z


def _cut_after_stop(text: str, stop_strings: list[str]) -> str:
    ends = [i + len(s) for s in stop_strings if (i := text.find(s)) >= 0]
    return text[:min(ends)] if ends else text


# -------------------------------------------------------------------------------- generation

def _prefill(model, id_lists, prompt_ids, prompt_mask, extra, cache_kw):
    """Prompt forward → (last logits (B, V), KV cache), computed once per distinct prompt.

    Group-based RL samples each prompt G times: the distinct prompts (padded to the same width
    P) are run once and their cache rows repeated with ``Cache.reorder_cache``. The cache is
    read from the output field ``cache_kw`` (see :func:`_cache_keyword`).
    """
    first_row: dict[tuple[int, ...], int] = {}  # distinct prompt → its first row
    for row, x in enumerate(id_lists):
        first_row.setdefault(tuple(x), row)
    if len(first_row) < len(id_lists):
        slot = {key: u for u, key in enumerate(first_row)}
        inverse = [slot[tuple(x)] for x in id_lists]
        uniq = torch.tensor(list(first_row.values()), device=prompt_ids.device)
        ids, mask = prompt_ids[uniq], prompt_mask[uniq]
        out = model(input_ids=ids, attention_mask=mask,
                    position_ids=(mask.cumsum(-1) - 1).clamp_min(0), use_cache=True, **extra)
        past = getattr(out, cache_kw)
        if hasattr(past, "reorder_cache"):
            index = torch.tensor(inverse, device=prompt_ids.device)
            past.reorder_cache(index)
            return out.logits[:, -1][index], past
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask,
                position_ids=(prompt_mask.cumsum(-1) - 1).clamp_min(0), use_cache=True, **extra)
    return out.logits[:, -1], getattr(out, cache_kw)


@torch.no_grad()
def _generate_chunk(model, tokenizer, id_lists, *, max_new_tokens, temperature, top_p, top_k,
                    do_sample, stop_strings, generator, pad_id, eos_ids, keep_arg,
                    cache_kw) -> Generation:
    device = _model_device(model)
    prompt_ids, prompt_mask = left_pad(id_lists, pad_id, device)
    bsz = prompt_ids.shape[0]
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    extra = {"logits_to_keep": 1} if keep_arg else {}

    logits, past = _prefill(model, id_lists, prompt_ids, prompt_mask, extra, cache_kw)
    attn = prompt_mask
    next_pos = prompt_mask.sum(-1, keepdim=True)

    tokens = torch.full((bsz, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logps = torch.zeros((bsz, max_new_tokens), dtype=torch.float32, device=device)
    finished = torch.zeros(bsz, dtype=torch.bool, device=device)
    stopped = torch.zeros(bsz, dtype=torch.bool, device=device)
    lengths = torch.zeros(bsz, dtype=torch.long, device=device)
    # a stop string is covered by at most its byte length of tokens; decode a generous tail
    window = 2 * max((len(s.encode()) for s in stop_strings), default=0) + 4

    for step in range(max_new_tokens):
        z = logits.float()
        if do_sample and temperature != 1.0:
            z = z / temperature
        logp_all = torch.log_softmax(z, dim=-1)
        if do_sample:
            probs = _truncate(z, top_k, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        else:
            nxt = z.argmax(-1)
        active = ~finished
        lp = logp_all.gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
        nxt = torch.where(active, nxt, pad_id)
        tokens[:, step] = nxt
        logps[:, step] = torch.where(active, lp, 0.0)
        lengths += active.long()

        done = active & torch.isin(nxt, eos)
        if stop_strings:
            rows = (active & ~done).nonzero().squeeze(-1).tolist()
            if rows:
                start = max(0, step + 1 - window)
                tails = tokenizer.batch_decode(tokens[rows, start:step + 1].tolist(),
                                               skip_special_tokens=False,
                                               clean_up_tokenization_spaces=False)
                hits = [r for r, t in zip(rows, tails) if any(s in t for s in stop_strings)]
                if hits:
                    done[hits] = True
        finished |= done
        stopped |= done
        if step + 1 == max_new_tokens or bool(finished.all()):
            break
        attn = torch.cat([attn, torch.ones((bsz, 1), dtype=attn.dtype, device=device)], dim=1)
        out = model(input_ids=nxt.unsqueeze(-1), attention_mask=attn, position_ids=next_pos,
                    use_cache=True, **{cache_kw: past})
        logits, past = out.logits[:, -1], getattr(out, cache_kw)
        next_pos = next_pos + 1

    width = int(lengths.max())
    response_ids = tokens[:, :width].contiguous()
    response_mask = (torch.arange(width, device=device) < lengths.unsqueeze(-1)).long()
    texts = tokenizer.batch_decode([row[:n] for row, n in zip(response_ids.tolist(),
                                                                lengths.tolist())],
                                   skip_special_tokens=True, clean_up_tokenization_spaces=False)
    if stop_strings:
        texts = [_cut_after_stop(t, stop_strings) for t in texts]
    return Generation(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                      response_mask=response_mask, logprobs=logps[:, :width].contiguous(),
                      texts=texts, truncated=~stopped)


def _pad_cat(tensors: list[torch.Tensor], value: float | int, left: bool) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    padded = []
    for t in tensors:
        gap = width - t.shape[1]
        padded.append(torch.nn.functional.pad(t, (gap, 0) if left else (0, gap), value=value)
                      if gap else t)
    return torch.cat(padded, dim=0)


def _concat(parts: list[Generation], pad_id: int) -> Generation:
    if len(parts) == 1:
        return parts[0]
    return Generation(
        prompt_ids=_pad_cat([g.prompt_ids for g in parts], pad_id, left=True),
        prompt_mask=_pad_cat([g.prompt_mask for g in parts], 0, left=True),
        response_ids=_pad_cat([g.response_ids for g in parts], pad_id, left=False),
        response_mask=_pad_cat([g.response_mask for g in parts], 0, left=False),
        logprobs=_pad_cat([g.logprobs for g in parts], 0.0, left=False),
        texts=[t for g in parts for t in g.texts],
        truncated=torch.cat([g.truncated for g in parts]))


def generate(model: torch.nn.Module, tokenizer, prompts: Sequence[str] | Sequence[Sequence[int]],
             *, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
             top_k: int = 0, do_sample: bool = True, stop_strings: Sequence[str] = (),
             generator: torch.Generator | None = None, batch_size: int | None = None,
             add_special_tokens: bool = False, max_prompt_tokens: int | None = None,
             autocast_dtype: torch.dtype | None = None) -> Generation:
    """Sample responses for a batch of prompts (see the module docstring for the loop).

    Args:
        model: a Hugging Face causal LM (or a peft model wrapping one); run in eval mode for
            the call, its previous mode restored afterwards.
        tokenizer: its tokenizer (pad id: ``pad_token_id``, else ``eos_token_id``).
        prompts: strings (tokenized with ``add_special_tokens``; apply any chat template
            beforehand) or token-id sequences.
        max_new_tokens: the most tokens generated per prompt.
        temperature: sampling temperature; log-probs are recorded at this temperature.
        top_p: nucleus sampling mass (1 = off). top_k: keep the k best tokens (0 = off).
        do_sample: False for greedy decoding (temperature/top-p/top-k ignored, log-probs at
            temperature 1).
        stop_strings: a row stops as soon as its decoded response contains one of them.
        generator: RNG for sampling, on the model's device (default: the global torch RNG).
        batch_size: generate in chunks of this many prompts (results concatenated and padded).
        add_special_tokens: passed to the tokenizer for string prompts (e.g. a BOS token).
        max_prompt_tokens: longer prompts keep their last ``max_prompt_tokens`` tokens;
            ``None``: the model's context minus ``max_new_tokens`` (:func:`prompt_token_limit`).
        autocast_dtype: run the forwards under ``torch.autocast`` in this dtype (one region
            for the whole call; :mod:`grouprl.policy.precision`); None = the model's dtype.

    Returns:
        a :class:`Generation`.
    """
    _check_sampling(max_new_tokens, temperature, top_p, top_k, do_sample, batch_size)
    stops = _check_stop_strings(stop_strings)
    limit = prompt_token_limit(model, max_new_tokens, max_prompt_tokens)
    id_lists, cut = _limit_prompts(_prompt_id_lists(tokenizer, prompts, add_special_tokens),
                                   limit)
    pad_id = _pad_id(tokenizer)
    eos_ids = _eos_ids(model, tokenizer)
    keep_arg = _accepts_logits_to_keep(model)
    cache_kw = _cache_keyword(model)
    device = _model_device(model)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator: must live on the model's device ({device.type}), got a "
                         f"{generator.device.type} generator")
    chunk = batch_size or len(id_lists)
    was_training = model.training
    model.eval()
    try:
        with autocast(device, autocast_dtype):
            parts = [_generate_chunk(model, tokenizer, id_lists[i:i + chunk],
                                     max_new_tokens=max_new_tokens,
                                     temperature=float(temperature), top_p=float(top_p),
                                     top_k=top_k, do_sample=do_sample, stop_strings=stops,
                                     generator=generator, pad_id=pad_id, eos_ids=eos_ids,
                                     keep_arg=keep_arg, cache_kw=cache_kw)
                     for i in range(0, len(id_lists), chunk)]
    finally:
        model.train(was_training)
    out = _concat(parts, pad_id)
    out.prompt_truncated = torch.tensor(cut, dtype=torch.bool, device=out.truncated.device)
    return out


# --------------------------------------------------------------------- teacher-forced log-probs

def _check_pair(name_ids: str, ids, name_mask: str, mask) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
        raise ValueError(f"{name_ids}: expected a 2-D integer tensor, got "
                         f"{getattr(ids, 'shape', type(ids).__name__)}")
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"{name_mask}: expected a tensor of shape {tuple(ids.shape)}, got "
                         f"{tuple(getattr(mask, 'shape', ())) or type(mask).__name__}")


def response_logprobs(model: torch.nn.Module, prompt_ids: torch.Tensor,
                      prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                      response_mask: torch.Tensor, *, temperature: float = 1.0,
                      with_entropy: bool = False, micro_batch_size: int | None = None,
                      autocast_dtype: torch.dtype | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Teacher-forced log-probs (and entropy) of the response tokens; differentiable.

    One forward over ``[prompt | response]`` with ``attention_mask = [prompt_mask |
    response_mask]`` and ``position_ids = cumsum(mask) - 1`` clipped at 0 (what :func:`generate`
    used); the logits of positions ``P-1 … P+R-2`` go to
    :func:`grouprl.losses.token_logprobs` at ``temperature``.

    Args:
        prompt_ids, prompt_mask: (B, P), left-padded (the last column is all real tokens).
        response_ids, response_mask: (B, R), right-padded.
        temperature: the sampling temperature (1 for greedy).
        with_entropy: also return the per-token entropy.
        micro_batch_size: rows per forward (default: all); results are concatenated.
        autocast_dtype: run each forward under ``torch.autocast`` in this dtype (the
            log-softmax stays float32); None = the model's dtype.

    Returns:
        ``(logp, entropy)``: (B, R) float32 (float64 for a float64 model), 0 on padding;
        ``entropy`` is None unless ``with_entropy``.
    """
    _check_pair("prompt_ids", prompt_ids, "prompt_mask", prompt_mask)
    _check_pair("response_ids", response_ids, "response_mask", response_mask)
    if prompt_ids.shape[0] != response_ids.shape[0]:
        raise ValueError(f"response_ids: batch size {response_ids.shape[0]} differs from "
                         f"prompt_ids batch size {prompt_ids.shape[0]}")
    if prompt_ids.shape[1] == 0 or not bool(prompt_mask[:, -1].bool().all()):
        raise ValueError("prompt_mask: prompts must be left-padded with a real token in the last "
                         "column of every row")
    if micro_batch_size is not None and (isinstance(micro_batch_size, bool) or not isinstance(
            micro_batch_size, int) or micro_batch_size < 1):
        raise ValueError(f"micro_batch_size: expected a positive int or None, got "
                         f"{micro_batch_size!r}")
    bsz, width = response_ids.shape
    if width == 0:
        empty = torch.zeros((bsz, 0), dtype=torch.float32, device=response_ids.device)
        return empty, (empty.clone() if with_entropy else None)
    extra = {"logits_to_keep": width + 1} if _accepts_logits_to_keep(model) else {}
    step = micro_batch_size or bsz
    logps, ents = [], []
    for i in range(0, bsz, step):
        r_ids, r_mask = response_ids[i:i + step], response_mask[i:i + step]
        ids = torch.cat([prompt_ids[i:i + step], r_ids], dim=1)
        mask = torch.cat([prompt_mask[i:i + step], r_mask], dim=1).long()
        with autocast(ids.device, autocast_dtype):
            logits = model(input_ids=ids, attention_mask=mask,
                           position_ids=(mask.cumsum(-1) - 1).clamp_min(0), use_cache=False,
                           **extra).logits
        logits = logits[:, -(width + 1):-1]
        labels = r_ids.masked_fill(r_mask == 0, IGNORE_INDEX)
        out = token_logprobs(logits, labels, temperature=temperature, with_entropy=with_entropy)
        if with_entropy:
            lp, ent = out
            ents.append(ent * r_mask.to(ent.dtype))
        else:
            lp = out
        logps.append(lp)
    logp = torch.cat(logps) if len(logps) > 1 else logps[0]
    if not with_entropy:
        return logp, None
    return logp, (torch.cat(ents) if len(ents) > 1 else ents[0])
