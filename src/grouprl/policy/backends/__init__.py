"""Generation backends: the rollout engine behind one protocol (spec-scale-out §1d).

* ``base``: :class:`GenerationBackend` (token ids in, :class:`~grouprl.policy.Generation` out,
  ``n`` per prompt, declared ``logprob_kind``, ``update_weights``, optional ``sleep`` /
  ``wake_up``), the log-prob conventions (:data:`LEARNER_LOGPROB_KIND`,
  :func:`engine_logprobs`), :func:`named_weights` (full, LoRA-merged tensors) and the vLLM
  availability check (:func:`require_vllm`).
* ``hf``: :class:`HFBackend`, grouprl's own sampling loop on the training module.
* ``vllm_colocated``: :class:`VLLMColocated`, TRL's colocated vLLM engine (extra ``vllm``, its
  own CUDA environment; imported lazily); ``vllm_outputs``: :func:`outputs_to_generation`.
* ``factory``: :func:`make_backend` (``rollout.generation_backend``).
"""

from .base import (
    LEARNER_LOGPROB_KIND,
    LOGPROB_KINDS,
    VLLM_INSTALL_HINT,
    BackendUnavailable,
    GenerationBackend,
    engine_logprobs,
    named_weights,
    recomputes_old_logp,
    release_memory,
    repeat_prompts,
    require_vllm,
    sync_weights,
    tokenize_prompts,
)
from .factory import BACKENDS, make_backend
from .hf import HFBackend
from .vllm_colocated import VLLMColocated
from .vllm_outputs import outputs_to_generation

__all__ = ["BACKENDS", "LEARNER_LOGPROB_KIND", "LOGPROB_KINDS", "VLLM_INSTALL_HINT",
           "BackendUnavailable", "GenerationBackend", "HFBackend", "VLLMColocated",
           "engine_logprobs", "make_backend", "named_weights", "outputs_to_generation",
           "recomputes_old_logp", "release_memory", "repeat_prompts", "require_vllm",
           "sync_weights", "tokenize_prompts"]
