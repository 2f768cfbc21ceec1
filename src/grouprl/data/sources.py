"""Loading reasoning datasets and preference pairs from the built-in generator, files or the
local Hugging Face cache.  Nothing is ever downloaded.

Sources (the ``source`` argument):

* ``"builtin:arithmetic"`` (:func:`load_reasoning_dataset`) and ``"builtin:arithmetic_pairs"``
  (:func:`load_pairs`): the generated data of :mod:`grouprl.data.arithmetic`.
* a path ending ``.jsonl`` (one JSON object per line; blank lines are skipped), ``.json`` (a
  list of objects, or an object with a ``"data"`` list) or ``.parquet`` (needs ``pyarrow``).
  A file is one split: ``split`` is used only by builtin and ``hf:`` sources.
* ``"hf:NAME"`` or ``"hf:NAME:CONFIG"``: ``datasets.load_dataset(NAME, CONFIG, split=split)``
  with offline mode forced for the call, so only datasets already in the local Hugging Face
  cache load; anything else is an error that says so.

Field names are configurable (``prompt_field``, ``answer_field``, ...); every other field of a
record goes to ``metadata``.  ``size`` keeps the first ``size`` records (files and ``hf:``
sources keep their order; ``seed`` only affects the builtin generator).  Errors name the source,
the line (``.jsonl``) or record number (1-based) and the offending field.

User errors are :class:`DataError` (a :class:`grouprl.validation.UserError`): a line that is not
UTF-8 or not JSON, a missing or mistyped field (the message lists the fields the record has), an
empty file; a missing file or uncached ``hf:`` dataset is :class:`DataFileNotFoundError` (also a
``FileNotFoundError``).

Duplicates are dropped with a :class:`DataWarning` giving their count and first location:
reasoning examples with the same prompt, answer, solution and difficulty, and preference pairs
with the same prompt (and system message), chosen and rejected; pairs whose chosen and rejected
responses are identical (up to surrounding whitespace) are dropped too.  ``size`` counts the kept
records.  The built-in generator makes no duplicates.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

import huggingface_hub.constants as hub_constants

from ..validation import UserError
from .arithmetic import arithmetic_dataset, arithmetic_pairs
from .types import PreferencePair, ReasoningExample

__all__ = ["DataError", "DataFileNotFoundError", "DataWarning", "ReasoningExample",
           "PreferencePair", "load_reasoning_dataset", "load_pairs", "split_holdout",
           "gsm8k_gold", "read_records"]

_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
_ACCEPTED = ("'builtin:arithmetic', a .jsonl/.json/.parquet path, 'hf:NAME' or "
             "'hf:NAME:CONFIG'")
_FIELD_HINT = "(set prompt_field/answer_field to your column names)"
_PAIR_HINT = "(set prompt_field/chosen_field/rejected_field to your column names)"


class DataError(UserError):
    """A dataset is unusable: a malformed record, an empty file, an unknown source (the message
    names the source, line and field, and the fix)."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A dataset file does not exist, or an ``hf:`` dataset is not in the local cache."""


class DataWarning(UserWarning):
    """Records were dropped while loading a dataset (duplicates; pairs with chosen == rejected).
    """


# ------------------------------------------------------------------------------------------
# Raw records: (location label, record) pairs
# ------------------------------------------------------------------------------------------


def _utf8(raw: bytes, where: str, whole_file: bool = False) -> str:
    """``raw`` decoded as UTF-8 (a leading byte-order mark dropped); :class:`DataError` naming
    ``where``, the line (``whole_file``), the column and the byte otherwise."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        lines = raw[:exc.start].split(b"\n")
        at = f"line {len(lines)}, byte {len(lines[-1]) + 1} of the line" if whole_file else \
            f"byte {exc.start + 1} of the line"
        raise DataError(f"{where}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at {at}); save "
                        f"the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def _jsonl(path: Path, label: str) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            where = f"{label} line {lineno}"
            line = _utf8(raw, where)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})"
                                ) from None
            yield where, record


def _json(path: Path, label: str) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        data = json.loads(_utf8(path.read_bytes(), label, whole_file=True))
    except json.JSONDecodeError as exc:
        raise DataError(f"{label}: invalid JSON ({exc.msg} at line {exc.lineno} column "
                        f"{exc.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{label}: a .json dataset must be a list of objects (or an object with "
                        f"a 'data' list), got {type(data).__name__}; use .jsonl for one object "
                        f"per line")
    for i, record in enumerate(data, 1):
        yield f"{label} record {i}", record


def _parquet(path: Path, label: str) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise ImportError("reading .parquet needs pyarrow: pip install 'grouprl[data]'"
                          ) from None
    for i, record in enumerate(pq.read_table(path).to_pylist(), 1):
        yield f"{label} row {i}", record


@contextlib.contextmanager
def _hf_offline(datasets_module: Any) -> Iterator[None]:
    """Force Hugging Face offline mode (env vars and the already-read module constants)."""
    saved_env = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    targets: list[tuple[Any, str]] = [(datasets_module.config, "HF_HUB_OFFLINE"),
                                      (datasets_module.config, "HF_DATASETS_OFFLINE"),
                                      (hub_constants, "HF_HUB_OFFLINE")]
    saved_attr = [(obj, name, getattr(obj, name)) for obj, name in targets if hasattr(obj, name)]
    try:
        for key in saved_env:
            os.environ[key] = "1"
        for obj, name, _ in saved_attr:
            setattr(obj, name, True)
        yield
    finally:
        for obj, name, value in saved_attr:
            setattr(obj, name, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _hf(source: str, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    spec = source[3:]
    name, _, config = spec.partition(":")
    if not name:
        raise DataError(f"source: {source!r} must look like 'hf:NAME' or 'hf:NAME:CONFIG'")
    try:
        import datasets
    except ModuleNotFoundError:
        raise ImportError(f"source {source!r}: 'hf:' sources need the datasets package: pip "
                          f"install 'grouprl[data]'") from None
    with _hf_offline(datasets):
        try:
            data = datasets.load_dataset(name, config or None, split=split)
        except Exception as exc:  # datasets raises ConnectionError, FileNotFoundError, ...
            raise DataFileNotFoundError(
                f"source {source!r} (split {split!r}): cannot load it from the local Hugging "
                f"Face cache ({type(exc).__name__}: {exc}). grouprl never downloads: load it "
                f"once with network access (datasets.load_dataset({name!r}"
                f"{', ' + repr(config) if config else ''})) so that it is cached, or export it "
                f"to a local .jsonl/.parquet file") from None
    for i, record in enumerate(data, 1):
        yield f"{source} row {i}", record


def read_records(source: str, *, split: str = "train") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(location, record)`` of a file or ``hf:`` source (the location names the line
    or record, for error messages)."""
    if not isinstance(source, str) or not source:
        raise DataError(f"source: must be {_ACCEPTED}, got {source!r}")
    if source.startswith("hf:"):
        yield from _hf(source, split)
        return
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix not in _FILE_SUFFIXES:
        raise DataError(f"source: unknown {source!r}; accepted: {_ACCEPTED}")
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "no such file"
        raise DataFileNotFoundError(f"source {source!r}: {what}")
    reader = {".jsonl": _jsonl, ".json": _json, ".parquet": _parquet}[suffix]
    for where, record in reader(path, source):
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected an object with named fields, got "
                            f"{type(record).__name__}")
        yield where, record


# ------------------------------------------------------------------------------------------
# Field helpers
# ------------------------------------------------------------------------------------------


def _fields_note(record: dict[str, Any]) -> str:
    names = ", ".join(map(str, list(record)[:12])) + (", ..." if len(record) > 12 else "")
    return f"; the record has fields: {names}" if record else "; the record is empty"


def _get(record: dict[str, Any], name: str, where: str, hint: str) -> Any:
    if name not in record:
        raise DataError(f"{where}: missing field {name!r} {hint}{_fields_note(record)}")
    return record[name]


def _text(value: Any, name: str, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must be a string, got "
                        f"{type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field {name!r} is empty")
    return value


def _answer_text(value: Any, name: str, where: str) -> str:
    if isinstance(value, bool) or value is None:
        raise DataError(f"{where}: field {name!r} must be a string or a number, got "
                        f"{type(value).__name__}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return _text(value, name, where).strip()


_GSM8K_STRIP = re.compile(r"[,$\s]")


def gsm8k_gold(rationale: str) -> str | None:
    """The gold answer of a GSM8K rationale: the text after the last ``####``, without commas,
    dollar signs and spaces (``None`` when there is no ``####``)."""
    head, sep, tail = rationale.rpartition("####")
    if not sep:
        return None
    gold = _GSM8K_STRIP.sub("", tail)
    return gold or None


def _check_size(size: Any) -> None:
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise DataError(f"size: must be None or an int >= 0, got {size!r}")


def _difficulty_set(difficulty: Any) -> set[int] | None:
    if difficulty is None:
        return None
    raw = [difficulty] if isinstance(difficulty, int) else list(difficulty)
    if any(isinstance(d, bool) or not isinstance(d, int) for d in raw) or not raw:
        raise DataError(f"difficulty: must be None, an int or a list of ints, got "
                         f"{difficulty!r}")
    return set(raw)


class _Dropped:
    """Count and first location of the records dropped for one reason."""

    def __init__(self, what: str) -> None:
        self.what, self.count, self.first = what, 0, ""

    def add(self, where: str) -> None:
        self.count += 1
        self.first = self.first or where

    def __str__(self) -> str:
        return f"{self.count} {self.what} (first: {self.first})"


def _collect(records: Iterator[tuple[str, dict[str, Any]]], convert: Callable[[str, dict], Any],
             size: int | None, keep: Callable[[Any], bool] = lambda _: True,
             source: str = "", key: Callable[[Any], Hashable] | None = None,
             duplicates: str = "duplicate records",
             reject: Callable[[Any], bool] | None = None, rejected: str = "") -> list[Any]:
    """Convert records until ``size`` are kept; drop the ones ``keep`` refuses, those whose
    ``key`` was seen before and those ``reject`` flags, warning once with the dropped counts."""
    out: list[Any] = []
    seen: set[Hashable] = set()
    dropped = [_Dropped(duplicates), _Dropped(rejected)]
    n_records = 0
    for where, record in records:
        if size is not None and len(out) >= size:
            break
        n_records += 1
        item = convert(where, record)
        if not keep(item):
            continue
        if reject is not None and reject(item):
            dropped[1].add(where)
            continue
        if key is not None:
            k = key(item)
            if k in seen:
                dropped[0].add(where)
                continue
            seen.add(k)
        out.append(item)
    if n_records == 0 and size != 0:
        raise DataError(f"source {source!r}: no records (the file is empty or holds only blank "
                        f"lines); point it at a file with one JSON object per record")
    notes = [str(d) for d in dropped if d.count]
    if notes:
        warnings.warn(f"{source}: dropped {' and '.join(notes)}", DataWarning, stacklevel=3)
    return out


# ------------------------------------------------------------------------------------------
# Reasoning datasets
# ------------------------------------------------------------------------------------------


def load_reasoning_dataset(source: str, *, split: str = "train",
                           difficulty: Sequence[int] | int | None = None,
                           size: int | None = None, seed: int = 0,
                           prompt_field: str = "prompt", answer_field: str = "answer",
                           solution_field: str | None = "solution",
                           gsm8k_answers: bool = False) -> list[ReasoningExample]:
    """Load single-turn reasoning examples (module docstring lists the sources).

    Args:
        source: ``"builtin:arithmetic"``, a ``.jsonl``/``.json``/``.parquet`` path or
            ``"hf:NAME[:CONFIG]"`` (local cache only).
        split: builtin and ``hf:`` split (a file is one split).
        difficulty: keep only these levels; file/``hf:`` records then need an integer
            ``difficulty`` field.
        size: keep the first ``size`` examples (after the difficulty filter).
        seed: builtin generator seed.
        prompt_field, answer_field: names of the question and gold-answer fields (the answer
            may be a string or a number).
        solution_field: name of an optional expert-solution field (for behaviour cloning);
            ``None`` to ignore it.
        gsm8k_answers: the answer field is a GSM8K rationale; the gold is the text after its
            last ``####`` (commas and ``$`` removed) and the full rationale goes to
            ``metadata["rationale"]``.
    """
    _check_size(size)
    levels = _difficulty_set(difficulty)
    if isinstance(source, str) and source.startswith("builtin:"):
        if source != "builtin:arithmetic":
            raise DataError(f"source: unknown builtin {source!r}; accepted: "
                             f"'builtin:arithmetic' (pairs: use load_pairs)")
        return arithmetic_dataset(split, difficulty=None if levels is None else sorted(levels),
                                  size=size, seed=seed)
    consumed = {prompt_field, answer_field, "difficulty"}
    if solution_field is not None:
        consumed.add(solution_field)

    def convert(where: str, record: dict[str, Any]) -> ReasoningExample:
        prompt = _text(_get(record, prompt_field, where, _FIELD_HINT), prompt_field, where)
        raw = _get(record, answer_field, where, _FIELD_HINT)
        metadata = {k: v for k, v in record.items() if k not in consumed}
        if gsm8k_answers:
            rationale = _text(raw, answer_field, where)
            answer = gsm8k_gold(rationale)
            if answer is None:
                raise DataError(f"{where}: field {answer_field!r} has no '#### <answer>' line "
                                f"(gsm8k_answers=True expects a GSM8K rationale)")
            metadata["rationale"] = rationale
        else:
            answer = _answer_text(raw, answer_field, where)
        solution = None
        if solution_field is not None and record.get(solution_field) is not None:
            solution = _text(record[solution_field], solution_field, where)
        level = record.get("difficulty")
        if level is not None and (isinstance(level, bool) or not isinstance(level, int)):
            if levels is not None:
                raise DataError(f"{where}: field 'difficulty' must be an int, got {level!r}")
            metadata["difficulty"] = level
            level = None
        if levels is not None and level is None:
            raise DataError(f"{where}: missing field 'difficulty' (needed to filter by "
                            f"difficulty={sorted(levels)})")
        return ReasoningExample(prompt=prompt, answer=answer, solution=solution,
                                difficulty=level, metadata=metadata)

    return _collect(read_records(source, split=split), convert, size,
                    keep=lambda ex: levels is None or ex.difficulty in levels, source=source,
                    key=lambda ex: (ex.prompt, ex.answer, ex.solution, ex.difficulty),
                    duplicates="duplicate examples (same prompt, answer, solution, difficulty)")


# ------------------------------------------------------------------------------------------
# Preference pairs
# ------------------------------------------------------------------------------------------


def _is_conversation(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) for m in value) and bool(value)


def _message_text(messages: list[dict[str, Any]], role: str, name: str, where: str) -> str:
    for message in reversed(messages):
        if message.get("role") == role:
            return _text(message.get("content"), f"{name}[].content", where)
    raise DataError(f"{where}: field {name!r} is a conversation without a {role!r} message")


def _system_text(messages: list[dict[str, Any]]) -> str | None:
    for message in messages:
        if message.get("role") == "system" and isinstance(message.get("content"), str):
            return message["content"]
    return None


def load_pairs(source: str, *, split: str = "train", size: int | None = None, seed: int = 0,
               prompt_field: str = "prompt", chosen_field: str = "chosen",
               rejected_field: str = "rejected") -> list[PreferencePair]:
    """Load preference pairs (sources as :func:`load_reasoning_dataset`;
    ``"builtin:arithmetic_pairs"`` for the generated ones).

    Fields may be plain strings or TRL-style conversations (lists of ``{"role", "content"}``
    messages): ``chosen``/``rejected`` then give their last assistant message and ``prompt``
    its last user message (a system message goes to ``metadata["system"]``).  Without a prompt
    field, a conversational ``chosen`` that holds the user turn (TRL's implicit-prompt format)
    gives the prompt.
    """
    _check_size(size)
    if isinstance(source, str) and source.startswith("builtin:"):
        if source != "builtin:arithmetic_pairs":
            raise DataError(f"source: unknown builtin {source!r}; accepted: "
                             f"'builtin:arithmetic_pairs'")
        return arithmetic_pairs(split, size=size, seed=seed)
    consumed = {prompt_field, chosen_field, rejected_field}

    def response(record: dict[str, Any], name: str, where: str) -> str:
        value = _get(record, name, where, _PAIR_HINT)
        if _is_conversation(value):
            return _message_text(value, "assistant", name, where)
        return _text(value, name, where)

    def convert(where: str, record: dict[str, Any]) -> PreferencePair:
        metadata = {k: v for k, v in record.items() if k not in consumed}
        chosen = response(record, chosen_field, where)
        rejected = response(record, rejected_field, where)
        if prompt_field in record:
            value = record[prompt_field]
            if _is_conversation(value):
                prompt = _message_text(value, "user", prompt_field, where)
                system = _system_text(value)
            else:
                prompt, system = _text(value, prompt_field, where), None
        elif _is_conversation(record.get(chosen_field)) and any(
                m.get("role") == "user" for m in record[chosen_field]):
            prompt = _message_text(record[chosen_field], "user", chosen_field, where)
            system = _system_text(record[chosen_field])
        else:
            _get(record, prompt_field, where, _PAIR_HINT)  # raises the missing-field error
            raise AssertionError("unreachable")
        if system is not None:
            metadata["system"] = system
        return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected,
                              metadata=metadata)

    return _collect(read_records(source, split=split), convert, size, source=source,
                    key=lambda p: (p.prompt, p.metadata.get("system"), p.chosen, p.rejected),
                    duplicates="duplicate pairs (same prompt, chosen, rejected)",
                    reject=lambda p: p.chosen.strip() == p.rejected.strip(),
                    rejected="pairs whose chosen and rejected responses are identical")


# ------------------------------------------------------------------------------------------
# Holdout
# ------------------------------------------------------------------------------------------


def split_holdout(items: Sequence[Any], fraction: float, seed: int) -> tuple[list, list]:
    """Split ``items`` into ``(kept, holdout)`` deterministically.

    ``holdout`` has ``round(fraction * len(items))`` items (halves round up) chosen by a
    ``random.Random(seed)`` permutation; both parts keep the original order.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction: must be a number in [0, 1), got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: must be an int, got {seed!r}")
    items = list(items)
    n_hold = int(fraction * len(items) + 0.5)
    chosen = set(random.Random(seed).sample(range(len(items)), n_hold))
    kept = [x for i, x in enumerate(items) if i not in chosen]
    holdout = [x for i, x in enumerate(items) if i in chosen]
    return kept, holdout
