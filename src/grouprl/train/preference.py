"""Offline pairwise preference training (DPO, cDPO, rDPO, IPO, SimPO, ORPO, HyPO): the recipe.

The recipe (one screen, nanoGPT style) — :func:`train_preference`::

    pairs  = load_pairs(preference.dataset)  (+ held-out pairs)               (grouprl.data)
    policy = model.path (+ LoRA)  |  tiny model built on the pairs' text, then SFT on (x, y_w)
    ref    = the policy as it starts (the SFT warm start, the loaded model, or the LoRA base):
             Λ^ref(y_w), Λ^ref(y_l) computed ONCE, cached in run_dir/reference_logprobs.*
    for step in range(epochs · ⌈N / batch_size⌉):                 (pairs reshuffled per epoch)
        Λ^θ(y_w), Λ^θ(y_l)  = summed response log-probs; chosen and rejected in one forward
        loss, m = preference_loss(loss, Λ^θ_w, Λ^θ_l, Λ^ref_w, Λ^ref_l, **loss_options)
        backward per micro-batch, weighted by its share of the batch; clip; AdamW; LR schedule
        held-out eval every eval_every (and at step 0 and the end); checkpoint every save_every

Losses: :func:`grouprl.losses.preference.preference_loss` (spec-losses §6). With summed response
log-probs ``Λ(y) = Σ_t m_t ℓ_t`` (fp32 sums), ``Δ_θ = Λ^θ(y_w) − Λ^θ(y_l)``,
``Δ_ref = Λ^ref(y_w) − Λ^ref(y_l)`` and ``h = Δ_θ − Δ_ref``: DPO ``−logσ(βh)`` (β = 0.1),
cDPO/rDPO (label smoothing ε), IPO ``(h̄ − 1/(2β))²``, HyPO ``−logσ(β(Δ_θ − max{0, Δ_ref}))``,
and the reference-free SimPO and ORPO (no reference pass, no cache). The logged rewards are the
loss's implicit rewards ``β·(Λ^θ − Λ^ref)`` (``β·Λ̄^θ`` for SimPO/ORPO), as in TRL; a pair is
*pessimistic* when ``Δ_ref < 0`` (HyPO; length-normalised when the loss is) and
``pref/pessimistic_frac`` reports that fraction for every reference-based loss.

Tokenisation (once, before training): the prompt (wrapped in the tokenizer's chat template when
it has one and ``agent.use_chat_template``) is left-padded, each response right-padded, with
the EOS token appended to every response (TRL's DPO convention: the model learns to stop).
With ``preference.max_length = M``, a pair whose prompt plus longer response exceeds M keeps
the prompt's *right* end (the part next to the answer), at least ``M // 2`` tokens of it, and
the responses' *left* part (their beginnings) in the rest.

The reference cache ``run_dir/reference_logprobs.safetensors`` (+ ``.json`` sidecar) is keyed
by a SHA-256 fingerprint of (a) every tokenised tensor of every split (ids and masks, so any
change of data, template, truncation or tokenizer shows) and (b) the reference model's identity:
for every state-dict entry its name, dtype, shape, 4,096 strided values (exact bytes) and its
float64 sum of squares (rounded to 10 significant digits, so the same weights match across
devices). A run that is resumed, or re-run on the same data and warm start, reuses the cache;
any other fingerprint recomputes it (and says so). Both files are written atomically.

Determinism: the pair order of epoch ``e`` comes from one seeded ``torch.Generator`` whose
state at the start of the current epoch is saved in every checkpoint, so on CPU a run
interrupted after a checkpoint and resumed logs exactly the metrics of an uninterrupted run
(timing metrics aside).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.utils.rnn import pad_sequence

from grouprl.losses.preference import (
    PREFERENCE_LOSSES,
    canonical_preference_loss,
    preference_loss,
)
from grouprl.policy import left_pad, response_logprobs
from grouprl.train.config import ConfigError, TrainConfig, config_to_dict

if TYPE_CHECKING:
    from grouprl.train.trainer import TrainResult

__all__ = [
    "PairTensors", "tokenize_preference_pairs", "pair_logps", "batched_pair_logps",
    "reference_fingerprint", "cached_reference_logps", "accumulate_preference_gradients",
    "evaluate_pairs", "validate_preference_config", "load_preference_data", "train_preference",
    "REFERENCE_FILE", "TINY_SPECIAL_TOKENS",
]

REFERENCE_FILE = "reference_logprobs.safetensors"
_REFERENCE_VERSION = "grouprl-preference-reference-v1"
TINY_SPECIAL_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
TINY_ISOLATE_CHARS = "0123456789"
_SAMPLED_VALUES = 4096

# preference_loss metric → logged name (the "pref/" or "eval/" prefix is added)
_METRIC_NAMES = {"loss": "loss", "rewards/accuracies": "reward_accuracy",
                 "rewards/margins": "reward_margin", "rewards/chosen": "chosen_reward",
                 "rewards/rejected": "rejected_reward", "logps/chosen": "logp_chosen",
                 "logps/rejected": "logp_rejected", "nll_loss": "nll_loss",
                 "log_odds_ratio": "log_odds_ratio", "log_odds_chosen": "log_odds_chosen"}


# --------------------------------------------------------------------------- tokenised pairs

@dataclass
class PairTensors:
    """Tokenised preference pairs: prompts left-padded, responses right-padded to one width."""

    prompt_ids: torch.Tensor  # (N, P) int64, left-padded
    prompt_mask: torch.Tensor  # (N, P)
    chosen_ids: torch.Tensor  # (N, R) int64, right-padded
    chosen_mask: torch.Tensor  # (N, R)
    rejected_ids: torch.Tensor  # (N, R)
    rejected_mask: torch.Tensor  # (N, R)

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def chosen_length(self) -> torch.Tensor:
        return self.chosen_mask.sum(1)

    @property
    def rejected_length(self) -> torch.Tensor:
        return self.rejected_mask.sum(1)


def _truncate(prompt: list[int], chosen: list[int], rejected: list[int], max_length: int | None
              ) -> tuple[list[int], list[int], list[int]]:
    """Keep the prompt's right end (≥ max_length // 2 tokens) and the responses' left part."""
    if max_length is None:
        return prompt, chosen, rejected
    longest = max(len(chosen), len(rejected))
    if len(prompt) + longest <= max_length:
        return prompt, chosen, rejected
    keep = min(len(prompt), max(max_length - longest, max_length // 2))
    prompt = prompt[len(prompt) - keep:]
    room = max_length - keep
    return prompt, chosen[:room], rejected[:room]


def tokenize_preference_pairs(tokenizer: Any, pairs: Sequence[Any], *,
                              max_length: int | None = None, use_chat_template: bool = True,
                              append_eos: bool = True) -> PairTensors:
    """Tokenise ``pairs`` (objects with ``prompt``, ``chosen``, ``rejected``) once.

    The prompt goes through :func:`grouprl.agent.prompts.apply_chat_template` when the
    tokenizer has a chat template and ``use_chat_template``; nothing adds special tokens except
    the EOS appended to each response (``append_eos``, when the tokenizer has one). An empty
    prompt becomes the single BOS (else EOS) token. ``max_length``: see the module docstring.
    """
    from grouprl.agent.prompts import apply_chat_template

    if not pairs:
        raise ValueError("pairs: no preference pairs to tokenise (check preference.dataset)")
    templated = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
    prompts = [apply_chat_template(tokenizer, p.prompt) if templated else p.prompt for p in pairs]
    enc = lambda texts: tokenizer(list(texts), add_special_tokens=False)["input_ids"]  # noqa: E731
    p_ids, c_ids, r_ids = enc(prompts), enc([p.chosen for p in pairs]), \
        enc([p.rejected for p in pairs])
    eos = tokenizer.eos_token_id if append_eos else None
    fallback = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else \
        tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = []
    for i, (p, c, r) in enumerate(zip(p_ids, c_ids, r_ids)):
        if not p:
            if fallback is None:
                raise ValueError(f"pairs[{i}]: the prompt is empty and the tokenizer has neither "
                                 "a BOS nor an EOS token to stand in for it")
            p = [fallback]
        if eos is not None:
            c, r = [*c, eos], [*r, eos]
        rows.append(_truncate(list(p), list(c), list(r), max_length))
    prompt_ids, prompt_mask = left_pad([p for p, _, _ in rows], pad)
    responses = [torch.tensor(x, dtype=torch.long) for _, c, r in rows for x in (c, r)]
    width = max(1, max(len(x) for x in responses))
    responses.append(torch.zeros(width, dtype=torch.long))  # forces the common width
    ids = pad_sequence(responses, batch_first=True, padding_value=pad)[:-1]
    mask = pad_sequence([torch.ones_like(x) for x in responses], batch_first=True)[:-1]
    return PairTensors(prompt_ids, prompt_mask, ids[0::2].clone(), mask[0::2].clone(),
                       ids[1::2].clone(), mask[1::2].clone())


# --------------------------------------------------------------------------- log-probs

def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def pair_logps(model: torch.nn.Module, data: PairTensors, idx: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs ``(Λ(y_w), Λ(y_l))`` of pairs ``idx`` (fp32, differentiable).

    Chosen and rejected rows go through ONE forward (concatenated along the batch), trimmed to
    the longest prompt and response of these pairs.
    """
    dev = _model_device(model)
    pm = data.prompt_mask[idx]
    p = int(pm.sum(1).max())
    width = pm.shape[1]
    pm = pm[:, width - p:]
    prompt = data.prompt_ids[idx, width - p:]
    cm, rm = data.chosen_mask[idx], data.rejected_mask[idx]
    r = max(int(cm.sum(1).max()), int(rm.sum(1).max()), 1)
    ids = torch.cat([data.chosen_ids[idx, :r], data.rejected_ids[idx, :r]])
    mask = torch.cat([cm[:, :r], rm[:, :r]])
    logp, _ = response_logprobs(model, prompt.repeat(2, 1).to(dev), pm.repeat(2, 1).to(dev),
                                ids.to(dev), mask.to(dev))
    seq = (logp.float() * mask.to(dev, torch.float32)).sum(1)  # Λ(y) = Σ_t m_t ℓ_t, fp32
    m = int(idx.numel())
    return seq[:m], seq[m:]


def batched_pair_logps(model: torch.nn.Module, data: PairTensors, micro_batch_size: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Λ(y_w), Λ(y_l))`` of every pair, no grad, eval mode, in order; on the CPU."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    try:
        with torch.no_grad():
            for idx in torch.arange(len(data)).split(micro_batch_size):
                cw, cl = pair_logps(model, data, idx)
                chosen.append(cw.cpu())
                rejected.append(cl.cpu())
    finally:
        model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


# --------------------------------------------------------------------------- reference cache

def reference_fingerprint(model: torch.nn.Module, datasets: Mapping[str, PairTensors]) -> str:
    """SHA-256 of the tokenised data and the reference model's identity (module docstring)."""
    h = hashlib.sha256(_REFERENCE_VERSION.encode())
    for split in sorted(datasets):
        for key, t in datasets[split].tensors().items():
            t = t.detach().contiguous().cpu()
            h.update(f"data|{split}|{key}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            t = t.detach()
            h.update(f"model|{name}|{t.dtype}|{tuple(t.shape)}".encode())
            flat = t.reshape(-1)
            if flat.numel() == 0:
                continue
            k = min(flat.numel(), _SAMPLED_VALUES)
            stride = flat.numel() // k
            sample = flat[torch.arange(k, device=flat.device) * stride]
            h.update(sample.float().cpu().numpy().tobytes())
            if flat.is_floating_point():
                sq = sum(float(c.double().square().sum()) for c in flat.split(1 << 24))
                h.update(f"{sq:.9e}".encode())
    return h.hexdigest()


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def cached_reference_logps(model: torch.nn.Module, datasets: Mapping[str, PairTensors],
                           path: str | Path, *, micro_batch_size: int,
                           echo: Callable[[str], None] | None = None
                           ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{split: (Λ^ref(y_w), Λ^ref(y_l))}`` of ``model`` (the reference), from the cache at
    ``path`` when its fingerprint matches, else computed (no grad, eval mode) and cached."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    echo = echo or (lambda s: None)
    path = Path(path)
    meta_path = path.with_suffix(".json")
    fp = reference_fingerprint(model, datasets)
    if path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            with safe_open(str(path), "pt") as f:
                file_fp = (f.metadata() or {}).get("fingerprint")
            if meta.get("fingerprint") == fp == file_fp:
                tensors = load_file(str(path))
                out = {s: (tensors[f"{s}.chosen"], tensors[f"{s}.rejected"]) for s in datasets}
                if all(out[s][0].shape == (len(d),) == out[s][1].shape
                       for s, d in datasets.items()):
                    echo(f"reference log-probs: loaded from {path} (fingerprint "
                         f"{fp[:12]}, {', '.join(f'{len(d)} {s}' for s, d in datasets.items())} "
                         "pairs)")
                    return out
            echo(f"reference log-probs: the cache at {path} does not match this run's data and "
                 "reference model (fingerprint differs); recomputing")
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            echo(f"reference log-probs: cannot read the cache at {path} ({err}); recomputing")
    t0 = time.perf_counter()
    out = {s: batched_pair_logps(model, d, micro_batch_size) for s, d in datasets.items()}
    tensors = {f"{s}.{side}": t.contiguous() for s, (c, r) in out.items()
               for side, t in (("chosen", c), ("rejected", r))}
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"fingerprint": fp}))
    meta = {"fingerprint": fp, "version": _REFERENCE_VERSION,
            "pairs": {s: len(d) for s, d in datasets.items()}}
    _atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta, indent=1) + "\n",
                                                    encoding="utf-8"))
    echo(f"reference log-probs: computed for "
         f"{', '.join(f'{len(d)} {s}' for s, d in datasets.items())} pairs in "
         f"{time.perf_counter() - t0:.1f}s, cached at {path}")
    return out


# --------------------------------------------------------------------------- loss plumbing

def _normalizes(loss: str, options: Mapping[str, Any]) -> bool:
    """Whether ``loss`` with ``options`` divides each side by its token count."""
    if loss in ("simpo", "orpo"):
        return True
    return bool(options.get("length_normalize",
                            PREFERENCE_LOSSES[loss].defaults.get("length_normalize", False)))


def _loss_kwargs(loss: str, options: Mapping[str, Any], data: PairTensors, idx: torch.Tensor,
                 device: torch.device) -> dict[str, Any]:
    kwargs = dict(options)
    if _normalizes(loss, options):
        kwargs["chosen_length"] = data.chosen_length[idx].to(device, torch.float32)
        kwargs["rejected_length"] = data.rejected_length[idx].to(device, torch.float32)
    return kwargs


def _pessimistic(loss: str, options: Mapping[str, Any], data: PairTensors,
                 ref: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Per pair: Δ_ref < 0 (the reference prefers the rejected response; HyPO)."""
    rw, rl = ref
    if _normalizes(loss, options):
        rw = rw / data.chosen_length.clamp(min=1).float()
        rl = rl / data.rejected_length.clamp(min=1).float()
    return rw - rl < 0


def accumulate_preference_gradients(
        model: torch.nn.Module, data: PairTensors, idx: torch.Tensor,
        ref: tuple[torch.Tensor, torch.Tensor] | None, *, loss: str,
        loss_options: Mapping[str, Any], micro_batch_size: int
) -> tuple[dict[str, float], bool]:
    """Backward of the batch loss on pairs ``idx``, over micro-batches of ``micro_batch_size``
    pairs, each micro-batch's mean loss weighted by its share ``n_mb / n`` (so the accumulated
    gradient is that of the batch mean for any micro-batching; ORPO's token-mean NLL uses the
    whole batch's chosen-token count). Gradients add to ``.grad`` (zero them first).

    Returns the batch metrics (share-weighted means of :func:`preference_loss`'s metrics, with
    their ``pref/`` names) and whether every micro-batch loss was finite (on a non-finite one
    it stops at once; the caller should discard the gradient).
    """
    loss = canonical_preference_loss(loss)
    dev = _model_device(model)
    n = int(idx.numel())
    chosen_tokens = float(data.chosen_length[idx].clamp(min=1).sum())
    sums: dict[str, float] = {}
    for mb in idx.split(micro_batch_size):
        share = mb.numel() / n
        pw, pl = pair_logps(model, data, mb)
        kwargs = _loss_kwargs(loss, loss_options, data, mb, dev)
        if loss == "orpo":  # batch token mean of the chosen NLL, pre-divided by the share
            kwargs["nll_loss"] = -pw.sum() / chosen_tokens / share
        rw, rl = (ref[0][mb].to(dev), ref[1][mb].to(dev)) if ref is not None else (None, None)
        value, metrics = preference_loss(loss, pw, pl, rw, rl, **kwargs)
        if not torch.isfinite(value.detach()):
            return {"pref/" + _METRIC_NAMES[k]: sums[k] for k in sums if k in _METRIC_NAMES}, \
                False
        (value * share).backward()
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + share * v
    return {"pref/" + _METRIC_NAMES[k]: v for k, v in sums.items() if k in _METRIC_NAMES}, True


def evaluate_pairs(model: torch.nn.Module, data: PairTensors,
                   ref: tuple[torch.Tensor, torch.Tensor] | None, *, loss: str,
                   loss_options: Mapping[str, Any], micro_batch_size: int,
                   prefix: str = "eval/") -> dict[str, float]:
    """Held-out metrics (no grad, eval mode): the loss, reward accuracy / margin, mean rewards,
    ``chosen_logp_mean`` / ``rejected_logp_mean``, ``logp_accuracy`` (fraction of pairs whose
    summed log-prob is higher for the chosen response: the policy's own ranking, reference-free)
    and, for reference-based losses, ``pessimistic_frac``."""
    loss = canonical_preference_loss(loss)
    pw, pl = batched_pair_logps(model, data, micro_batch_size)
    idx = torch.arange(len(data))
    kwargs = _loss_kwargs(loss, loss_options, data, idx, pw.device)
    with torch.no_grad():
        _, m = preference_loss(loss, pw, pl, *(ref if ref is not None else (None, None)),
                               **kwargs)
    out = {prefix + _METRIC_NAMES[k]: v for k, v in m.items()
           if k in _METRIC_NAMES and not k.startswith("logps/")}
    out[prefix + "chosen_logp_mean"] = float(pw.mean())
    out[prefix + "rejected_logp_mean"] = float(pl.mean())
    out[prefix + "logp_accuracy"] = float((pw > pl).float().mean())
    if ref is not None:
        out[prefix + "pessimistic_frac"] = float(
            _pessimistic(loss, loss_options, data, ref).float().mean())
    return out


# --------------------------------------------------------------------------- config and data

def validate_preference_config(cfg: TrainConfig) -> str:
    """Checks of the ``preference`` section done before any work; the canonical loss name."""
    from grouprl.train.trainer import resolve_device

    pc = cfg.preference
    try:
        loss = canonical_preference_loss(pc.loss)
    except ValueError as err:
        raise ConfigError(f"preference.loss: {str(err).split(': ', 1)[-1]}") from None
    spec = PREFERENCE_LOSSES[loss]
    accepted = [k for k in spec.defaults if k != "nll_loss"]  # nll_loss is a tensor
    for key in pc.loss_options:
        if key not in accepted:
            raise ConfigError(f"preference.loss_options.{key}: not an option of the {loss!r} "
                              f"loss; accepted: {', '.join(accepted)}")
    one = torch.zeros(1)
    kwargs: dict[str, Any] = dict(pc.loss_options)
    if _normalizes(loss, pc.loss_options):
        kwargs.update(chosen_length=one + 1, rejected_length=one + 1)
    ref = (one - 1, one - 2) if spec.needs_ref else (None, None)
    try:
        preference_loss(loss, one - 1, one - 2, *ref, **kwargs)  # the loss's own validation
    except (ValueError, TypeError) as err:
        key, _, msg = str(err).partition(": ")
        where = f"preference.loss_options.{key}" if key in pc.loss_options else \
            "preference.loss_options"
        raise ConfigError(f"{where}: {msg or err}") from None
    if pc.micro_batch_size > pc.batch_size:
        raise ConfigError(f"preference.micro_batch_size: {pc.micro_batch_size} must be <= "
                          f"preference.batch_size ({pc.batch_size})")
    resolve_device(cfg.model.device)
    if cfg.model.path is not None and not Path(cfg.model.path).is_dir():
        raise ConfigError(f"model.path: {cfg.model.path!r} is not a local directory (grouprl "
                          "never downloads at run time; set model.path=null for the tiny model)")
    return loss


def load_preference_data(cfg: TrainConfig) -> tuple[list, list]:
    """``(train_pairs, held_out_pairs)``: ``preference.eval_dataset`` if set (its "test" split),
    else the built-in dataset's "test" split, else the last ``eval_fraction`` of the training
    pairs (:func:`grouprl.data.split_holdout`, seeded). ``limit`` caps the loaded training
    pairs (before any hold-out split)."""
    from grouprl.data import load_pairs, split_holdout

    pc = cfg.preference
    fields_ = {"prompt_field": pc.prompt_field, "chosen_field": pc.chosen_field,
               "rejected_field": pc.rejected_field}
    try:
        train = load_pairs(pc.dataset, split=pc.split, size=pc.limit, seed=cfg.seed, **fields_)
        held: list = []
        if pc.eval_dataset is None and pc.dataset.startswith("builtin:"):
            held = load_pairs(pc.dataset, split="test", seed=cfg.seed, **fields_)
        elif pc.eval_dataset is None and pc.eval_fraction > 0:
            train, held = split_holdout(train, pc.eval_fraction, seed=cfg.seed)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"preference.dataset: {err}") from None
    if pc.eval_dataset is not None:
        try:
            held = load_pairs(pc.eval_dataset, split="test", seed=cfg.seed, **fields_)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(f"preference.eval_dataset: {err}") from None
    if not train:
        raise ConfigError(f"preference.dataset: {pc.dataset!r} gave no training pairs")
    return list(train), list(held)


def _setup_model(cfg: TrainConfig, run_dir: Path, pairs: Sequence[Any], logger: Any,
                 echo: Callable[[str], None], device: torch.device) -> tuple[Any, Any]:
    """The starting policy (= the reference): a local model, else the tiny model (saved to
    ``base_model``) after SFT on the chosen responses (saved to ``warm_start``); saved
    directories are loaded, never rebuilt."""
    from grouprl.agent.prompts import apply_chat_template
    from grouprl.policy import build_tiny_policy, load_policy, resolve_dtype
    from grouprl.train.bc import ExpertSample, clone_behaviour
    from grouprl.train.trainer import BASE_MODEL_DIR, WARM_START_DIR

    m = cfg.model
    if m.path is not None:
        if cfg.preference.sft_epochs > 0:
            echo(f"model.path is set: no SFT warm start (preference.sft_epochs="
                 f"{cfg.preference.sft_epochs} applies to the tiny model only); the reference "
                 "is the model as loaded")
        model, tok = load_policy(m.path, dtype=m.dtype, trust_remote_code=m.trust_remote_code)
        return model.to(device), tok
    warm, base = run_dir / WARM_START_DIR, run_dir / BASE_MODEL_DIR
    if (warm / "config.json").is_file():
        model, tok = load_policy(warm, dtype=m.dtype)
        return model.to(device), tok
    if (base / "config.json").is_file():
        model, tok = load_policy(base, dtype=m.dtype)
    else:
        t = m.tiny
        texts = [x for p in pairs for x in (p.prompt, p.chosen, p.rejected)]
        echo(f"building the tiny model (tokenizer on {len(texts)} texts of "
             f"{cfg.preference.dataset})")
        model, tok = build_tiny_policy(
            texts, vocab_size=t.vocab_size, special_tokens=TINY_SPECIAL_TOKENS,
            isolate_chars=t.isolate_chars if t.isolate_chars is not None else TINY_ISOLATE_CHARS,
            seed=cfg.seed, save_dir=base, hidden_size=t.hidden_size, num_layers=t.num_layers,
            num_heads=t.num_heads, num_kv_heads=t.num_kv_heads,
            intermediate_size=t.intermediate_size)
        model = model.to(resolve_dtype(m.dtype))
    model.to(device)
    epochs = cfg.preference.sft_epochs
    if epochs > 0:
        b = cfg.bc
        templated = cfg.agent.use_chat_template and getattr(tok, "chat_template", None)
        eos = tok.eos_token or ""
        samples = [ExpertSample(apply_chat_template(tok, p.prompt) if templated else p.prompt,
                                p.chosen + eos) for p in pairs]
        t0 = time.perf_counter()
        losses = clone_behaviour(model, tok, samples, epochs=epochs, batch_size=b.batch_size,
                                 lr=b.lr, max_updates=b.max_updates, seed=cfg.seed)
        model.save_pretrained(warm, safe_serialization=True)
        tok.save_pretrained(warm)
        echo(f"SFT on {len(samples)} chosen responses: {len(losses)} updates, loss "
             f"{losses[0]:.3f} → {losses[-1]:.3f} ({time.perf_counter() - t0:.0f}s); this warm "
             "start is the reference model")
        logger.log(0, {"sft/loss_first": losses[0], "sft/loss_last": losses[-1],
                       "sft/updates": float(len(losses)), "timing/sft_s":
                       time.perf_counter() - t0})
    return model, tok


def _lr_lambda(total: int, warmup: int, schedule: str) -> Callable[[int], float]:
    """LR multiplier per optimizer step: linear warm-up, then constant / linear / cosine."""
    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        frac = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
        if schedule == "linear":
            return 1.0 - frac
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * frac))
        return 1.0
    return fn


# --------------------------------------------------------------------------- the recipe

def train_preference(cfg: TrainConfig, *, resume: bool = False,
                     echo: Callable[[str], None] | None = None) -> TrainResult:
    """Run the recipe of the module docstring; returns a ``grouprl.train.TrainResult`` whose
    ``iterations`` are optimizer steps and ``success_before`` / ``success_after`` the held-out
    reward accuracy at step 0 and at the end."""
    from grouprl.policy import LoraOptions, apply_lora
    from grouprl.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from grouprl.train.metrics import MetricsLogger, ProgressBar, read_metrics
    from grouprl.train.trainer import (
        TrainResult,
        _seed_everything,
        _stop_on_signal,
        _StopRequest,
        resolve_device,
    )

    echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
    pc = cfg.preference
    loss = validate_preference_config(cfg)
    run_dir = Path(cfg.run_dir)
    if not resume and (run_dir / "metrics.jsonl").exists():
        raise ConfigError(f"run_dir: {str(run_dir)!r} already holds a run; pass --resume to "
                          "continue it or choose another run_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt = latest_checkpoint(run_dir) if resume else None
    (run_dir / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
    _seed_everything(cfg.seed)
    device = resolve_device(cfg.model.device)

    # ---- data, policy (= reference), tokenised pairs, reference log-probs (cached)
    train_pairs, eval_pairs = load_preference_data(cfg)
    logger = MetricsLogger(run_dir, tensorboard=cfg.logging.tensorboard, wandb=cfg.logging.wandb,
                           wandb_project=cfg.logging.wandb_project, config=config_to_dict(cfg))
    model, tok = _setup_model(cfg, run_dir, train_pairs, logger, echo, device)
    tokenize = lambda ps: tokenize_preference_pairs(  # noqa: E731
        tok, ps, max_length=pc.max_length, use_chat_template=cfg.agent.use_chat_template)
    train_data = tokenize(train_pairs)
    eval_name = "held-out"
    if not eval_pairs:
        eval_pairs, eval_name = train_pairs, "training"
        echo("no held-out pairs (preference.eval_fraction=0): evaluating on the training pairs")
    eval_data = tokenize(eval_pairs)
    opts = dict(pc.loss_options)
    ref_train = ref_eval = pess_train = None
    if PREFERENCE_LOSSES[loss].needs_ref:
        ref = cached_reference_logps(model, {"train": train_data, "eval": eval_data},
                                     run_dir / REFERENCE_FILE,
                                     micro_batch_size=pc.micro_batch_size, echo=echo)
        ref_train, ref_eval = ref["train"], ref["eval"]
        pess_train = _pessimistic(loss, opts, train_data, ref_train)

    # ---- LoRA (reference = the base: its log-probs are already computed), optimizer
    if cfg.model.lora.enabled:
        lo = cfg.model.lora
        model = apply_lora(model, LoraOptions(rank=lo.rank, alpha=lo.alpha, dropout=lo.dropout,
                                              target_modules=tuple(lo.target_modules)))
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                  weight_decay=o.weight_decay)
    n = len(train_data)
    steps_per_epoch = math.ceil(n / pc.batch_size)
    total = pc.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total, o.warmup_iterations, o.schedule))
    shuffling = torch.Generator().manual_seed(cfg.seed + 1)
    counters = {"skipped_updates": 0}

    def run_eval() -> dict[str, float]:
        t0 = time.perf_counter()
        m = evaluate_pairs(model, eval_data, ref_eval, loss=loss, loss_options=opts,
                           micro_batch_size=pc.micro_batch_size)
        m["timing/eval_s"] = time.perf_counter() - t0
        return m

    start, before, logp_before = 0, None, None
    if ckpt is not None:
        info = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler,
                               generators={"shuffling": shuffling})
        start = int(info["iteration"])
        counters.update(info["state"].get("counters", {}))
        before = info["state"].get("success_before")
        logp_before = info["state"].get("logp_accuracy_before")
        logger.truncate_after(start)
        echo(f"resumed from {ckpt} at step {start}")
    elif resume:  # stopped before the first checkpoint: keep the step-0 rows (SFT, eval)
        logger.truncate_after(0)
        done = [r for r in read_metrics(run_dir) if "eval/reward_accuracy" in r]
        if done:
            before = done[0]["eval/reward_accuracy"]
            logp_before = done[0].get("eval/logp_accuracy")
    if start == 0 and before is None:
        m = run_eval()
        before, logp_before = m["eval/reward_accuracy"], m["eval/logp_accuracy"]
        logger.log(0, m)
        echo(f"{eval_name} reward accuracy before {loss}: {before:.1%} ({len(eval_data)} pairs; "
             f"policy prefers the chosen response by log-prob on {logp_before:.1%})")

    def save(step: int, generator_state: torch.Tensor) -> None:
        g = torch.Generator()
        g.set_state(generator_state)
        save_checkpoint(run_dir, iteration=step, model=model, optimizer=optimizer,
                        scheduler=scheduler, config=config_to_dict(cfg),
                        generators={"shuffling": g}, keep_last=cfg.keep_last,
                        state={"counters": counters, "success_before": before,
                               "logp_accuracy_before": logp_before})

    bar = ProgressBar(total, desc=loss, initial=start, enabled=cfg.logging.progress)
    stop = _StopRequest()
    step = start
    last_acc = before
    model.train()
    try:
        with _stop_on_signal(stop):
            while step < total:
                epoch_state = shuffling.get_state()  # saved mid-epoch: the order is redrawn
                perm = torch.randperm(n, generator=shuffling)
                for pos in range(step % steps_per_epoch, steps_per_epoch):
                    idx = perm[pos * pc.batch_size:(pos + 1) * pc.batch_size]
                    metrics = _optimizer_step(model, optimizer, params, train_data, idx,
                                              ref_train, loss, opts, pc.micro_batch_size,
                                              o.grad_clip)
                    scheduler.step()
                    step += 1
                    counters["skipped_updates"] += int(metrics["train/skipped_updates"])
                    metrics["train/skipped_updates_total"] = float(counters["skipped_updates"])
                    metrics["train/epoch"] = step / steps_per_epoch
                    if pess_train is not None:
                        metrics["pref/pessimistic_frac"] = float(pess_train[idx].float().mean())
                    if (pc.eval_every and step % pc.eval_every == 0) or step == total:
                        metrics.update(run_eval())
                        last_acc = metrics["eval/reward_accuracy"]
                        model.train()
                    logger.log(step, metrics)
                    bar.update(step, loss=metrics.get("pref/loss", float("nan")),
                               acc=metrics.get("pref/reward_accuracy", float("nan")),
                               eval=last_acc)
                    if stop.requested or (cfg.save_every and step % cfg.save_every == 0) \
                            or step == total:
                        save(step, epoch_state if step % steps_per_epoch else
                             shuffling.get_state())
                    if stop.requested:
                        echo(f"stopped after step {step}; checkpoint saved — continue with: "
                             f"grouprl train --resume {run_dir}")
                        raise KeyboardInterrupt
    finally:
        bar.close()
        logger.close()
    rows = read_metrics(run_dir)
    evals = [r for r in rows if r.get("eval/reward_accuracy") is not None]
    after = evals[-1]["eval/reward_accuracy"] if evals else None
    if after is not None and before is not None:
        logp_after = evals[-1].get("eval/logp_accuracy")
        echo(f"{eval_name} reward accuracy: before {before:.1%} → after {after:.1%} ({total} "
             f"steps of {loss}); policy prefers the chosen response by log-prob: "
             f"{logp_before:.1%} → {logp_after:.1%}")
    return TrainResult(run_dir, total, before, after, rows)


def _optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    params: list[torch.nn.Parameter], data: PairTensors, idx: torch.Tensor,
                    ref: tuple[torch.Tensor, torch.Tensor] | None, loss: str,
                    options: Mapping[str, Any], micro_batch_size: int,
                    grad_clip: float | None) -> dict[str, float]:
    """One optimizer step on pairs ``idx``; a non-finite loss or gradient skips it."""
    t0 = time.perf_counter()
    lr = float(optimizer.param_groups[0]["lr"])
    optimizer.zero_grad(set_to_none=True)
    metrics, finite = accumulate_preference_gradients(
        model, data, idx, ref, loss=loss, loss_options=options,
        micro_batch_size=micro_batch_size)
    grad_norm = float("nan")
    if finite:
        grads = [p for p in params if p.grad is not None]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(
            grads, grad_clip if grad_clip is not None else float("inf")))
        finite = math.isfinite(grad_norm)
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    metrics.update({"actor/grad_norm": grad_norm, "actor/lr": lr,
                    "train/skipped_updates": 0.0 if finite else 1.0,
                    "train/pairs": float(idx.numel()),
                    "timing/step_s": time.perf_counter() - t0})
    return metrics
