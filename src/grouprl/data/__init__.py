"""Datasets for single-turn reasoning tasks and preference training.

* :class:`ReasoningExample` (prompt, gold answer, optional expert solution, difficulty,
  metadata) and :class:`PreferencePair` (prompt, chosen, rejected, metadata).
* :func:`arithmetic_dataset` / :func:`arithmetic_pairs` (``arithmetic.py``): the built-in
  generated arithmetic and word problems with exact answers, split by difficulty, with expert
  ``<think>…</think><answer>N</answer>`` solutions of varying length.
* :func:`load_reasoning_dataset` / :func:`load_pairs` (``sources.py``): ``"builtin:…"``,
  local ``.jsonl``/``.json``/``.parquet`` files, or ``"hf:NAME[:CONFIG]"`` from the local
  Hugging Face cache (never downloaded); :func:`split_holdout` for a deterministic holdout.
"""

from __future__ import annotations

from .arithmetic import arithmetic_dataset, arithmetic_pairs
from .sources import (
    DataError,
    DataFileNotFoundError,
    DataWarning,
    gsm8k_gold,
    load_pairs,
    load_reasoning_dataset,
    read_records,
    split_holdout,
)
from .types import PreferencePair, ReasoningExample

__all__ = [
    "DataError",
    "DataFileNotFoundError",
    "DataWarning",
    "PreferencePair",
    "ReasoningExample",
    "arithmetic_dataset",
    "arithmetic_pairs",
    "gsm8k_gold",
    "load_pairs",
    "load_reasoning_dataset",
    "read_records",
    "split_holdout",
]
