"""``VLLMColocated``: a vLLM engine in the trainer's process, on the trainer's GPU (TRL's
colocate mode, spec-scale-out §1d).

* **Engine**: ``vllm.LLM(model=dir, distributed_executor_backend="external_launcher",
  logprobs_mode="processed_logprobs", enable_sleep_mode=..., gpu_memory_utilization=...)``; the
  external launcher keeps the engine core in this process (vLLM turns V1 multiprocessing off
  for it), so the model is reachable at
  ``llm.llm_engine.model_executor.driver_worker(.worker).model_runner.model``.
  :meth:`VLLMColocated.from_policy` writes the policy's config, generation config and tokenizer
  to a work directory, starts the engine with ``load_format="dummy"`` (no checkpoint read; verl's
  hybrid engine does the same) and loads the policy's current weights as version 0.
* **Generation**: token ids in (``TokensPrompt``), one ``SamplingParams(n, temperature, top_p,
  top_k, max_tokens, stop, stop_token_ids=EOS ids, include_stop_str_in_output=True, logprobs=0,
  seed)`` per prompt; prompt ``i`` gets seed ``base + i`` so identical prompts of a group do not
  draw identical samples. Outputs become a :class:`~grouprl.policy.generate.Generation`
  (:func:`outputs_to_generation`): the prompts left-padded, responses right-padded with the
  EOS / stop-completing token kept in the mask (as the HF loop does), texts decoded by the
  policy's tokenizer and cut after the first stop string, ``truncated = finish_reason !=
  "stop"``.
* **Log-probs**: ``logprob_kind = "processed"`` (after temperature and top-k/top-p, the
  distribution actually sampled); a vLLM without ``logprobs_mode`` returns raw log-probs
  (``"raw"``). Either way the trainer recomputes ``old_logp`` and uses these only as
  ``rollout_logp`` (:func:`~grouprl.policy.backends.base.engine_logprobs`).
* **Weights**: :meth:`VLLMColocated.update_weights` wakes the weights if the engine sleeps,
  streams the named tensors into ``model.load_weights`` and resets the prefix cache (TRL's
  ``sync_weights``). ``sleep(level)`` frees the GPU memory for the update (level 1 offloads the
  weights to CPU, level 2 discards them: the next ``update_weights`` reloads every tensor);
  ``generate`` wakes the KV cache and refuses to run on weights discarded and not reloaded
  (vLLM would silently produce garbage, vllm#29341).

vLLM is imported lazily here; a missing or CPU-only install raises
:class:`~grouprl.policy.backends.base.BackendUnavailable` naming ``pip install 'grouprl[vllm]'``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ...validation import check_bool, check_choice, check_number
from ..generate import Generation, _eos_ids, _limit_prompts
from .base import (
    VLLM_INSTALL_HINT,
    BackendUnavailable,
    named_weights,
    repeat_prompts,
    require_vllm,
)
from .vllm_outputs import outputs_to_generation

__all__ = ["VLLMColocated", "VLLM_DTYPES"]

VLLM_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _import_vllm() -> Any:
    require_vllm()
    try:
        import vllm
    except ImportError as err:
        raise BackendUnavailable(f"rollout.generation_backend=vllm: importing vLLM failed "
                                 f"({err}): {VLLM_INSTALL_HINT}") from None
    return vllm


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _single_process_env() -> None:
    """The torch.distributed variables the external launcher reads, for a run not started by
    torchrun (rank 0 of 1); variables already set (torchrun) are kept."""
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                       ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())


def _supports_logprobs_mode() -> bool:
    try:
        from vllm.engine.arg_utils import EngineArgs
    except ImportError:
        return False
    return "logprobs_mode" in {f.name for f in dataclasses.fields(EngineArgs)}


class VLLMColocated:
    """A colocated vLLM engine behind the generation-backend protocol (module docstring).

    Args:
        model_dir: a Hugging Face model directory vLLM starts from (config + tokenizer; also
            weights unless ``load_format="dummy"``).
        tokenizer: the policy's tokenizer (pad id, response texts).
        eos_ids: token ids that end a response (the HF loop's: tokenizer + generation config).
        max_prompt_tokens: longer prompts keep their last tokens; None = ``context_length``
            (``max_model_len`` when set) minus ``max_new_tokens``.
        context_length: the model's context (``max_position_embeddings``), None = unknown.
        generator: draws each call's base seed when ``generate`` gets no ``seed`` (the recipe's
            checkpointed sampling generator); None = vLLM's own RNG (seeded by ``seed``).
        seed: the engine's seed.
        gpu_memory_utilization, enable_sleep_mode, max_model_len, dtype, load_format: the
            ``vllm.LLM`` arguments of those names; ``sleep_level`` is the level ``sleep()``
            uses by default (1 offload weights to CPU, 2 discard them).
        engine_kwargs: further ``vllm.LLM`` keyword arguments (e.g. ``max_num_seqs``,
            ``enforce_eager``); they override the ones above.
    """

    shares_weights = False

    def __init__(self, model_dir: str | Path, tokenizer, *, eos_ids: Sequence[int] = (),
                 max_prompt_tokens: int | None = None, context_length: int | None = None,
                 generator: torch.Generator | None = None, seed: int = 0,
                 gpu_memory_utilization: float = 0.3, enable_sleep_mode: bool = True,
                 sleep_level: int = 2, max_model_len: int | None = None, dtype: str = "auto",
                 load_format: str = "auto", engine_kwargs: Mapping[str, Any] | None = None
                 ) -> None:
        check_number("gpu_memory_utilization", gpu_memory_utilization, 0.0, 1.0,
                     low_open=True)
        check_bool("enable_sleep_mode", enable_sleep_mode)
        check_choice("sleep_level", sleep_level, (1, 2))
        check_number("max_model_len", max_model_len, 1, integer=True, none_ok=True)
        check_choice("dtype", dtype, VLLM_DTYPES)
        vllm = _import_vllm()
        _single_process_env()
        self.tokenizer, self.generator = tokenizer, generator
        self.eos_ids = [int(i) for i in eos_ids]
        self.max_prompt_tokens = max_prompt_tokens
        self.context_length = max_model_len or context_length
        self.enable_sleep_mode, self.sleep_level = enable_sleep_mode, sleep_level
        kwargs: dict[str, Any] = dict(
            model=str(model_dir), tokenizer=str(model_dir), dtype=dtype, seed=seed,
            gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=enable_sleep_mode,
            max_model_len=max_model_len, load_format=load_format,
            distributed_executor_backend="external_launcher")
        self.logprob_kind = "raw"
        if _supports_logprobs_mode():
            kwargs["logprobs_mode"] = "processed_logprobs"
            self.logprob_kind = "processed"
        kwargs.update(engine_kwargs or {})
        self.llm = vllm.LLM(**kwargs)
        self._sampling_params = vllm.SamplingParams
        try:
            from vllm.inputs import TokensPrompt
        except ImportError:        # a TypedDict: a plain dict is the same request
            TokensPrompt = dict    # noqa: N806
        self._tokens_prompt = TokensPrompt
        self._asleep: set[str] = set()
        self._weights_valid = load_format != "dummy"
        self.version = 0

    @classmethod
    def from_policy(cls, model: torch.nn.Module, tokenizer, work_dir: str | Path, *,
                    generator: torch.Generator | None = None,
                    max_prompt_tokens: int | None = None, seed: int = 0,
                    **options: Any) -> VLLMColocated:
        """An engine for ``model`` (a HF causal LM or a PEFT model): its config, generation
        config and tokenizer written to ``work_dir``, the engine started without reading any
        checkpoint (``load_format="dummy"``), then ``model``'s current weights (LoRA merged)
        loaded as version 0. ``options``: the constructor's engine options."""
        require_vllm()
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        work_dir = Path(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(base.config)
        config.architectures = [type(base).__name__]
        config.save_pretrained(work_dir)
        if getattr(base, "generation_config", None) is not None:
            base.generation_config.save_pretrained(work_dir)
        tokenizer.save_pretrained(work_dir)
        context = getattr(config, "max_position_embeddings", None)
        backend = cls(work_dir, tokenizer, eos_ids=_eos_ids(base, tokenizer),
                      max_prompt_tokens=max_prompt_tokens,
                      context_length=context if isinstance(context, int) else None,
                      generator=generator, seed=seed, load_format="dummy", **options)
        backend.update_weights(named_weights(model), version=0)
        return backend

    # ------------------------------------------------------------------------ memory
    def sleep(self, level: int | None = None) -> None:
        """Free the engine's GPU memory (``level`` default: ``sleep_level``); a no-op
        without ``enable_sleep_mode``."""
        if not self.enable_sleep_mode or self._asleep:
            return
        level = self.sleep_level if level is None else check_choice("level", level, (1, 2))
        self.llm.sleep(level=level)
        self._asleep = {"weights", "kv_cache"}
        if level == 2:
            self._weights_valid = False

    def wake_up(self, tags: Sequence[str] = ("weights", "kv_cache")) -> None:
        """Re-allocate the sleeping parts among ``tags`` (``weights``, ``kv_cache``)."""
        todo = [t for t in tags if t in self._asleep]
        if todo:
            torch.cuda.empty_cache()
            self.llm.wake_up(tags=todo)
            self._asleep.difference_update(todo)

    # ----------------------------------------------------------------------- weights
    def _engine_model(self) -> torch.nn.Module:
        worker = self.llm.llm_engine.model_executor.driver_worker
        runner = getattr(worker, "worker", worker).model_runner
        return runner.get_model() if hasattr(runner, "get_model") else runner.model

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]],
                       version: int) -> None:
        """Stream full tensors (Hugging Face names, e.g. :func:`named_weights`) into the
        engine's model, then reset its prefix cache (cached prompts hold old-weight keys)."""
        self.wake_up(("weights",))
        self._engine_model().load_weights(iter(named_tensors))
        self.llm.reset_prefix_cache()
        self._weights_valid = True
        self.version = version

    # -------------------------------------------------------------------- generation
    def _base_seed(self, seed: int | None) -> int | None:
        if seed is not None or self.generator is None:
            return seed
        g = self.generator
        return int(torch.randint(0, 2 ** 31 - 1, (1,), generator=g, device=g.device))

    def generate(self, prompt_ids: Sequence[Sequence[int]], *, n: int = 1, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 stop_strings: Sequence[str] = (), seed: int | None = None) -> Generation:
        """``len(prompt_ids) * n`` samples, prompt-major; ``temperature == 0`` is greedy."""
        repeat_prompts([], n)                       # checks n
        check_number("max_new_tokens", max_new_tokens, 1, integer=True)
        if not self._weights_valid:
            raise RuntimeError("VLLMColocated.generate: the engine's weights were discarded "
                               "by sleep(level=2) and not reloaded; call update_weights first")
        limit = self.max_prompt_tokens
        if limit is None and self.context_length is not None:
            limit = max(1, self.context_length - max_new_tokens)
        id_lists, cut = _limit_prompts([list(p) for p in prompt_ids], limit)
        self.wake_up(("weights", "kv_cache"))
        base = self._base_seed(seed)
        stops = list(stop_strings)
        params = [self._sampling_params(
            n=n, temperature=float(temperature), top_p=float(top_p), top_k=int(top_k),
            max_tokens=max_new_tokens, stop=stops or None, stop_token_ids=self.eos_ids or None,
            include_stop_str_in_output=True, logprobs=0,
            seed=None if base is None else base + i) for i in range(len(id_lists))]
        prompts = [self._tokens_prompt(prompt_token_ids=ids) for ids in id_lists]
        outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        return outputs_to_generation(outputs, id_lists, cut, n, self.tokenizer,
                                     stop_strings=stops, max_new_tokens=max_new_tokens)
