"""The generation-backend contract, the log-prob conventions, and the policy's weights as named
full tensors (what a backend that holds its own copy of the weights loads).

The protocol follows spec-scale-out §1d ("The interface grouprl should expose now"), modelled on
verl's token-in/token-out ``BaseRollout`` and TRL's colocated vLLM engine:

* **token ids in, a** :class:`~grouprl.policy.generate.Generation` **out**: the prompts are the
  exact ids the learner scores (no re-tokenisation drift, verl#3720/#6719); ``n`` samples per
  prompt, rows prompt-major (prompt ``i``'s samples are rows ``i*n … i*n+n-1``);
* **declared log-prob semantics** (``logprob_kind``): ``"pre_truncation"`` is grouprl's HF loop,
  ``log_softmax(logits / T)`` before top-k/top-p truncation — the learner's recompute convention
  (:func:`grouprl.policy.response_logprobs`, verl's recomputed ``old_log_prob``);
  ``"processed"`` is vLLM's ``processed_logprobs`` (after temperature *and* truncation,
  renormalised); ``"raw"`` is vLLM's ``raw_logprobs`` (unprocessed logits, temperature 1);
  ``"none"``: the engine records none. Whenever the kind is not the learner's, the trainer
  recomputes ``old_logp`` and uses the engine's log-probs only as ``rollout_logp`` for the
  truncated importance-sampling correction (spec-losses §8), never as ``ℓ^old``;
* ``update_weights(named_tensors, version)``: full (unsharded, LoRA-merged) tensors under the
  Hugging Face parameter names, streamed; a backend that generates with the training module
  itself (``shares_weights``) ignores them;
* optional ``sleep(level)`` / ``wake_up(tags)`` for engines colocated with the trainer on one GPU.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import torch
from peft.tuners.lora import LoraLayer

from ...validation import UserError
from ..generate import Generation, _prompt_id_lists
from ..load import is_lora_model

__all__ = ["GenerationBackend", "LEARNER_LOGPROB_KIND", "LOGPROB_KINDS", "VLLM_INSTALL_HINT",
           "BackendUnavailable", "cut_after_stop", "engine_logprobs", "named_weights",
           "recomputes_old_logp", "release_memory", "repeat_prompts", "require_vllm",
           "sync_weights", "tokenize_prompts"]

LEARNER_LOGPROB_KIND = "pre_truncation"
"""The learner's convention: ``log_softmax(logits / T)`` of the sampled token, before top-k/top-p
truncation (:func:`grouprl.policy.generate.generate`, :func:`grouprl.policy.response_logprobs`)."""

LOGPROB_KINDS = ("pre_truncation", "processed", "raw", "none")

VLLM_INSTALL_HINT = ("pip install 'grouprl[vllm]' in its own CUDA environment (vLLM's wheels are "
                     "CUDA-only and pin their own torch; see docs/distributed.md)")


class BackendUnavailable(UserError, ImportError):
    """A generation backend's package or hardware is missing (one line: what and how to fix;
    the CLI prints it and exits with code 2)."""


@runtime_checkable
class GenerationBackend(Protocol):
    """What the trainer needs from a rollout engine (module docstring).

    Attributes:
        logprob_kind: one of :data:`LOGPROB_KINDS`: what ``Generation.logprobs`` holds.
        shares_weights: True when the backend generates with the training module itself, so
            ``update_weights`` has nothing to do (the HF loop on the policy).
    """

    logprob_kind: str
    shares_weights: bool

    def generate(self, prompt_ids: Sequence[Sequence[int]], *, n: int = 1, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 stop_strings: Sequence[str] = (), seed: int | None = None) -> Generation:
        """``len(prompt_ids) * n`` rows, prompt-major; ``temperature == 0`` is greedy."""
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]],
                       version: int) -> None:
        """Load full tensors (Hugging Face names) as weights ``version``."""
        ...


def engine_logprobs(backend: GenerationBackend) -> bool:
    """True when the backend records log-probs in a convention other than the learner's: the
    trainer then recomputes ``old_logp`` and passes the engine's only as ``rollout_logp``."""
    return backend.logprob_kind not in (LEARNER_LOGPROB_KIND, "none")


def recomputes_old_logp(backend: GenerationBackend) -> bool:
    """True when the learner must recompute ``old_logp`` itself: the backend's ``logprob_kind``
    is not the learner's convention (:data:`LEARNER_LOGPROB_KIND`)."""
    return backend.logprob_kind != LEARNER_LOGPROB_KIND


def sync_weights(backend: GenerationBackend, model: torch.nn.Module, version: int) -> None:
    """Load ``model``'s weights (:func:`named_weights`) into a backend that generates with its
    own copy; nothing for one that shares the training module's weights."""
    if not backend.shares_weights:
        backend.update_weights(named_weights(model), version=version)


def release_memory(backend: GenerationBackend) -> None:
    """Put a colocated engine to sleep before the policy update (its optional ``sleep()``;
    the next ``update_weights`` / ``generate`` wakes it)."""
    sleep = getattr(backend, "sleep", None)
    if sleep is not None:
        sleep()


def require_vllm() -> None:
    """Raise :class:`BackendUnavailable` (one line) unless vLLM is importable here and this
    machine has a CUDA device (checked without importing vLLM, which takes seconds)."""
    try:
        found = importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise BackendUnavailable(f"rollout.generation_backend=vllm: vLLM is not installed: "
                                 f"{VLLM_INSTALL_HINT}")
    if not torch.cuda.is_available():
        raise BackendUnavailable("rollout.generation_backend=vllm: vLLM needs a CUDA GPU and a "
                                 "CUDA build of torch, and this environment has none: "
                                 f"{VLLM_INSTALL_HINT}")


def repeat_prompts(prompt_ids: Sequence[Sequence[int]], n: int) -> list[list[int]]:
    """Each prompt ``n`` times in a row (the protocol's prompt-major row order)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int (samples per prompt), got {n!r}")
    return [list(p) for p in prompt_ids for _ in range(n)]


def cut_after_stop(text: str, stop_strings: Sequence[str]) -> str:
    """``text`` cut right after the earliest stop string it contains (the HF loop's rule)."""
    ends = [i + len(s) for s in stop_strings if (i := text.find(s)) >= 0]
    return text[:min(ends)] if ends else text


def _lora_deltas(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{base weight's parameter name: Σ_active adapters ΔW}`` of every unmerged LoRA layer
    (PEFT's ``get_delta_weight`` = ``scale · B @ A``, transposed for fan-in-fan-out layers)."""
    deltas: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or module.merged or module.disable_adapters:
            continue
        names = [a for a in module.active_adapters
                 if a in module.lora_A or a in getattr(module, "lora_embedding_A", {})]
        if any(module.use_dora.get(a, False) for a in names):
            raise ValueError(f"{name}: DoRA adapters are not supported by named_weights; "
                             "merge them first (model.merge_and_unload())")
        if names:
            deltas[f"{name}.base_layer.weight"] = sum(module.get_delta_weight(a) for a in names)
    return deltas


def _hf_name(name: str) -> str:
    """A PEFT parameter name → the base model's Hugging Face name."""
    return (name.removeprefix("base_model.model.").replace(".base_layer", "")
            .replace(".modules_to_save.default", ""))


@torch.no_grad()
def named_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights as ``(Hugging Face name, full tensor)``, LoRA adapters merged.

    A plain model yields its ``named_parameters()`` (tied weights once), detached. A PEFT model
    yields the base model's names with each adapted weight ``W + Σ ΔW`` computed out of place
    (the live ``merge_adapter``/``unmerge_adapter`` round trip of TRL would drift the trained
    base weights by rounding), and skips the adapter matrices and ``original_module`` copies.
    An FSDP2-sharded parameter (a ``DTensor``) is gathered with ``full_tensor()``, a collective:
    every rank must iterate (TRL's FSDP2 sync does the same).
    """
    if not is_lora_model(model):
        for name, p in model.named_parameters():
            t = p.detach()
            yield name, (t.full_tensor() if hasattr(t, "full_tensor") else t)
        return
    deltas = _lora_deltas(model)
    for name, p in model.named_parameters():
        if "lora_" in name or ".original_module." in name:
            continue
        t = p.detach()
        if name in deltas:
            t = t + deltas[name].to(t.dtype)
        yield _hf_name(name), t


def tokenize_prompts(tokenizer, prompts: Sequence[str] | Sequence[Sequence[int]]
                     ) -> list[list[int]]:
    """Prompts (strings, no special tokens added; or token-id sequences) → id lists, exactly as
    :func:`~grouprl.policy.generate.generate` tokenizes them (same checks and messages)."""
    return _prompt_id_lists(tokenizer, prompts, add_special_tokens=False)
