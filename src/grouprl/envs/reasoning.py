"""Single-turn reasoning as a one-step :class:`~grouprl.envs.base.TextEnv`.

A reasoning task (prompt → answer → verifier reward) runs through the same trainer as the
multi-turn agent tasks: ``reset(seed)`` shows a question, the model's whole reply is the one
action, ``step(reply)`` scores it with :class:`grouprl.rewards.verifier.Verifier` against the gold
answer and ends the episode.  Every group estimator and loss therefore works unchanged (each
trajectory has one row whose reward is the outcome).

Seeds map onto the dataset: ``reset(seed)`` shows item ``seed % len(dataset)``, so the same seed
always gives the same prompt (a group of ``n`` envs reset with one seed shares its question) and
consecutive seeds walk through the dataset in its order.  Use ``split="test"`` (builtin and
``hf:`` sources) or a separate file for evaluation: evaluation seeds map onto whatever dataset
the env was made with.

Rewards: 1.0 when the verifier says the reply is correct, else 0.0 (wrong, unparseable, timed
out, or an unparseable gold: ``info["correct"] is None``).  ``info["verify_reason"]`` tells why.

Where the check runs: a symbolic check can sit in native code for minutes holding the GIL
(sympy's big-integer power on ``\boxed{9^{9^{9^{9}}}}``), where no Python-level deadline can
stop it.  In a pool worker process (``EnvPool`` backend ``process``) the check runs in that
process, under math-verify's own alarm and the pool's ``step_timeout``; when the env runs in
the trainer's process (backends ``serial`` and ``thread``) the pool calls
:meth:`ReasoningEnv.isolate_native_calls` and every check runs in a verifier worker process
with the ``verifier_timeout`` deadline (a check past it scores 0 with reason ``"timeout"``).
Datasets are loaded once per process and argument set (a pool of 64 envs reads a file once),
and a dataset *file* is parsed once per machine: the first process parses it into a shared,
memory-mapped store that the pool's worker processes open without parsing
(:mod:`grouprl.data.store`).  :meth:`ReasoningEnv.prepare_data` does that in the trainer before
any worker starts, so a malformed file fails there with a :class:`~grouprl.data.DataError` naming
its line and field.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grouprl.data.sources import DataError
from grouprl.data.store import shared_reasoning_dataset
from grouprl.data.types import ReasoningExample
from grouprl.rewards.verifier import Verifier

__all__ = ["ReasoningEnv", "clear_dataset_cache"]

_CACHE: dict[tuple, Sequence[ReasoningExample]] = {}
_CACHE_LOCK = threading.Lock()


def clear_dataset_cache() -> None:
    """Forget the datasets loaded by :class:`ReasoningEnv` in this process."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _file_stamp(source: str) -> tuple[int, int] | None:
    """(mtime, size) of a file source, so an edited file is reloaded."""
    if source.startswith(("builtin:", "hf:")):
        return None
    try:
        st = Path(source).expanduser().stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _load(key: tuple, kwargs: dict[str, Any]) -> Sequence[ReasoningExample]:
    with _CACHE_LOCK:
        items = _CACHE.get(key)
        if items is None:
            items = shared_reasoning_dataset(kwargs)
            _CACHE[key] = items
        return items


def _examples(dataset: Any, split: str, difficulty: Sequence[int] | int | None,
              size: int | None, data_seed: int, prompt_field: str, answer_field: str,
              solution_field: str | None, gsm8k_answers: bool) -> Sequence[ReasoningExample]:
    """The examples an env with these arguments shows (cached per process, shared per machine);
    :class:`DataError` when there are none."""
    if not isinstance(dataset, str) or not dataset:
        raise DataError(f"dataset: must be 'builtin:arithmetic', a .jsonl/.json/.parquet "
                        f"path or 'hf:NAME[:CONFIG]', got {dataset!r}")
    levels = None if difficulty is None else (
        (difficulty,) if isinstance(difficulty, int) else tuple(sorted(set(difficulty))))
    kwargs = dict(source=dataset, split=split, difficulty=levels, size=size, seed=data_seed,
                  prompt_field=prompt_field, answer_field=answer_field,
                  solution_field=solution_field, gsm8k_answers=bool(gsm8k_answers))
    key = tuple(sorted(kwargs.items())) + (("_stamp", _file_stamp(dataset)),)
    items = _load(key, kwargs)
    if not items:
        raise DataError(f"dataset: {dataset!r} (split={split!r}, difficulty={difficulty!r}, "
                        f"size={size!r}) has no examples")
    return items


ANSWER_ONLY_REPLY = {"answer_tag": "<think></think><answer>{answer}</answer>",
                     "boxed": "\\boxed{{{answer}}}", "gsm8k": "#### {answer}", "free": "{answer}"}
"""The expert reply of an item without a worked solution, per verifier mode."""


class ReasoningEnv:
    """A one-step env over a reasoning dataset (module docstring).

    Args:
        dataset: ``"builtin:arithmetic"`` (default), a ``.jsonl``/``.json``/``.parquet`` path,
            or ``"hf:NAME[:CONFIG]"`` from the local Hugging Face cache
            (:func:`grouprl.data.load_reasoning_dataset`).
        split: builtin / ``hf:`` split.
        difficulty, size, data_seed: select the examples (``data_seed`` is the builtin
            generator's seed).
        prompt_field, answer_field, solution_field, gsm8k_answers: field mapping of file and
            ``hf:`` records.
        verifier: the :class:`~grouprl.rewards.verifier.Verifier` mode (``"answer_tag"`` for the
            builtin data, whose solutions end ``<answer>N</answer>``; ``"boxed"``, ``"gsm8k"``,
            ``"free"``).
        backend, verifier_timeout, verifier_workers, require_think_close: passed to the
            verifier (``backend``, ``timeout_s``, ``workers``, ``require_think_close``).
        prompt_prefix, prompt_suffix: added around every prompt (e.g. an instruction).

    Info at reset: ``task`` (""), ``anchor`` (the item index), ``admissible_actions`` (None),
    ``answer`` (the gold), ``difficulty``.  Info after the step: ``won`` (correct), ``valid``
    (always True), ``anchor`` (``("done", index)``), ``admissible_actions`` (None), ``correct``
    (True/False/None), ``verify_reason``, ``pred`` (the extracted answer), ``answer`` and
    ``extra`` (``key`` = item index, ``gold``, ``correct``, ``reason``, ``pred``: what
    :class:`~grouprl.envs.EnvPool` forwards to the rollout for reward shaping).
    """

    #: digits stay single tokens in the tiny tokenizer (the trainer reads this)
    isolate_chars = "0123456789"
    grid_symbols = ""
    special_tokens = ("<think>", "</think>", "<answer>", "</answer>")
    raw_action = True  # the whole response is the answer (the rollout does not parse it)

    def __init__(self, dataset: str = "builtin:arithmetic", split: str = "train", *,
                 difficulty: Sequence[int] | int | None = None, size: int | None = None,
                 data_seed: int = 0, prompt_field: str = "prompt", answer_field: str = "answer",
                 solution_field: str | None = "solution", gsm8k_answers: bool = False,
                 verifier: str = "answer_tag", backend: str = "auto",
                 verifier_timeout: float | None = 5.0, verifier_workers: int = 0,
                 require_think_close: bool = False, prompt_prefix: str = "",
                 prompt_suffix: str = "") -> None:
        for name, value in (("prompt_prefix", prompt_prefix), ("prompt_suffix", prompt_suffix)):
            if not isinstance(value, str):
                raise TypeError(f"{name}: must be a str, got {type(value).__name__}")
        self.items: Sequence[ReasoningExample] = _examples(
            dataset, split, difficulty, size, data_seed, prompt_field, answer_field,
            solution_field, gsm8k_answers)
        self.dataset = dataset
        self.verifier_mode = verifier
        self.prompt_prefix = prompt_prefix
        self.prompt_suffix = prompt_suffix
        self._verifier: Any = Verifier(mode=verifier, backend=backend,
                                       timeout_s=verifier_timeout, workers=verifier_workers,
                                       require_think_close=require_think_close)
        self._index: int | None = None
        self._done = False

    @classmethod
    def prepare_data(cls, dataset: str = "builtin:arithmetic", split: str = "train", *,
                     difficulty: Sequence[int] | int | None = None, size: int | None = None,
                     data_seed: int = 0, prompt_field: str = "prompt",
                     answer_field: str = "answer", solution_field: str | None = "solution",
                     gsm8k_answers: bool = False, **_other: Any) -> int:
        """Load the dataset that env kwargs select, in this process, before any env or worker
        is made: a file is parsed here once and shared with the workers
        (:mod:`grouprl.data.store`); a bad file raises its :class:`~grouprl.data.DataError`
        here. Kwargs that do not select data are ignored. Returns the number of examples."""
        return len(_examples(dataset, split, difficulty, size, data_seed, prompt_field,
                             answer_field, solution_field, gsm8k_answers))

    def __len__(self) -> int:
        return len(self.items)

    @property
    def example(self) -> ReasoningExample:
        """The current item (after ``reset``)."""
        if self._index is None:
            raise RuntimeError("call reset() first")
        return self.items[self._index]

    @property
    def verifier(self) -> Any:
        """The :class:`~grouprl.rewards.verifier.Verifier` (its ``stats`` count outcomes)."""
        return self._verifier

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        """Show item ``seed % len(self)`` (``None``: a random item)."""
        if seed is None:
            index = random.randrange(len(self.items))
        else:
            if isinstance(seed, bool) or not hasattr(seed, "__index__"):
                raise ValueError(f"seed: must be an int or None, got {seed!r}")
            index = int(seed) % len(self.items)
        self._index, self._done = index, False
        item = self.items[index]
        prompt = self.prompt_prefix + item.prompt + self.prompt_suffix
        return prompt, {"task": "", "anchor": index, "admissible_actions": None,
                        "answer": item.answer, "difficulty": item.difficulty}

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        """Score the whole reply ``action``; the episode ends (one step)."""
        if self._index is None:
            raise RuntimeError("step: call reset() first")
        if self._done:
            raise RuntimeError("step: a reasoning episode has exactly one step and it is over; "
                               "call reset(seed) before stepping again")
        if self._verifier is None:
            raise RuntimeError("step: the env is closed")
        if not isinstance(action, str):
            raise TypeError(f"action: must be the reply text (str), got {type(action).__name__}")
        item = self.items[self._index]
        result = self._verifier(action, item.answer)
        self._done = True
        correct = result.correct
        info = {"won": correct is True, "valid": True, "anchor": ("done", self._index),
                "admissible_actions": None, "correct": correct, "verify_reason": result.reason,
                "pred": result.pred, "answer": item.answer,
                # forwarded by EnvPool to the rollout (Rollout.extras) for reward shaping
                "extra": {"key": self._index, "gold": item.answer, "correct": correct,
                          "reason": result.reason, "pred": result.pred}}
        return "", 1.0 if correct is True else 0.0, True, info

    def isolate_native_calls(self) -> None:
        """Run every answer check in a verifier worker process with the ``verifier_timeout``
        deadline, never in this process (module docstring; :class:`~grouprl.envs.EnvPool`'s
        in-process backends call it)."""
        if self._verifier is None:
            raise RuntimeError("isolate_native_calls: the env is closed")
        self._verifier.isolate()

    def expert_actions(self) -> list[str]:
        """The expert reply of the current item, as a one-action plan (behaviour cloning): its
        worked solution, or — for data without solutions — the gold answer alone in the form
        the verifier reads (``<think></think><answer>A</answer>``, ``\\boxed{A}``, ``#### A``,
        ``A``): the warm start then learns the output format and the training answers, not how
        to reason (documented; add a ``solution`` field for worked solutions)."""
        item = self.example
        if item.solution is not None:
            return [item.solution]
        return [ANSWER_ONLY_REPLY.get(self.verifier_mode, "{answer}").format(answer=item.answer)]

    def close(self) -> None:
        """Close the verifier (its worker processes, if any); idempotent."""
        verifier, self._verifier = self._verifier, None
        if verifier is not None:
            verifier.close()
