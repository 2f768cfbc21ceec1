"""Answer verification for verifiable rewards: :func:`verify_answer` and the :class:`Verifier`
process pool (spec §C1–§C3, §C6).

A verifier turns ``(response, gold)`` into a :class:`VerifyResult`; the reward shapers read
``correct`` (``None`` means "skip this sample": its gold cannot be parsed, spec §C1/§C6).

Backends
--------
``"builtin"``
    Standard library only (sympy lazily, for one guarded check). The prediction and the gold are
    put in Hendrycks-MATH normal form (:func:`~grouprl.rewards.extract.normalize_answer`) and
    compared as strings; then as exact numbers with :class:`fractions.Fraction` (integers,
    decimals, ``a/b``, ``\\frac{a}{b}``: 0.5 = 1/2 = ``\\frac{1}{2}``); then, only for strings
    made of digits, ``+ - * / ^``, brackets, ``\\frac``, ``\\sqrt`` and ``\\pi``, symbolically
    with sympy (``2\\sqrt{2}`` = ``\\sqrt{8}``). That last step uses a small parser written here
    that builds sympy numbers directly: model text is never passed to ``eval``/``sympify``
    (a model can write ``__import__('os').system(...)``), and huge powers are refused.
``"math_verify"``
    HF math-verify (spec §C1). The gold is parsed with the default configuration (a bare gold
    such as ``(1,2)`` or ``10\\%`` is wrapped as ``$gold$`` first: unwrapped, math-verify reads
    ``(1,2)`` as nothing and ``1<x<2`` as ``1``). The prediction is our extracted answer, put
    back in a box and parsed with open-r1's reward-grade configuration (boxed first, no
    anchor-free extraction, no malformed-operator repair). Then ``verify(gold, pred)``: gold
    first, because math-verify is asymmetric (a gold interval ``(1,2)`` does not accept a
    predicted ``1<x<2``; the reverse does).
``"combined"``
    math-verify OR builtin: the "math-verify or Hendrycks string match or sympy" rule of DLER,
    DRPO and DOT (spec §C2).
``"auto"``
    ``"math_verify"`` when it is installed, else ``"builtin"``.

Modes (see :func:`~grouprl.rewards.extract.extract_prediction`): ``"boxed"``, ``"answer_tag"``,
``"gsm8k"`` and ``"free"``. All search only the text after the first ``</think>`` when there is
one. A gold that contains ``####`` (a GSM8K rationale) is reduced to the number after it, and a
gold that contains a box (a MATH solution) to the box's content.

Timeouts and threads
--------------------
math-verify times out with ``signal.alarm``, which only works in the main thread of the main
interpreter: :func:`verify_answer` passes its ``timeout_s`` to math-verify in the main thread
and disables math-verify's timeout elsewhere (spec §C1 threading note). That timeout is best
effort: its exception is raised wherever the interpreter happens to be, and one raised inside a
callback that swallows exceptions (a ``gc`` callback, as hypothesis installs) is lost, leaving
sympy to run on. Even in the main thread a check can sit in native code (sympy's big-integer
power on ``9^{9^{9^{9}}}``) holding the GIL: in a thread that freezes the whole process, since
no other thread (a pool's deadline included) runs again. For training, use :class:`Verifier`
with ``workers > 0`` or ``isolated=True``: calls run in persistent worker processes
(:class:`grouprl.workers.WorkerPool`) with a wall-clock timeout of our own; a call that runs too
long returns reason ``"timeout"`` and its worker is killed and replaced, a worker that dies
returns ``"error"``. Isolated verifiers (the reasoning env's, when it runs in the trainer's
process: ``EnvPool`` backends ``serial`` and ``thread``) share their worker processes
(:func:`close_isolated_verifiers`).
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from grouprl.rewards.equivalence import builtin_equal
from grouprl.rewards.extract import (
    _SQRT_SHORT,
    MODES,
    _fix_fracs,
    extract_prediction,
    gsm8k_gold,
    last_boxed,
    normalize_answer,
    split_think,
)

__all__ = [
    "BACKENDS",
    "REASONS",
    "VerifyResult",
    "math_verify_available",
    "builtin_equal",
    "verify_answer",
]

BACKENDS = ("auto", "builtin", "math_verify", "combined")
REASONS = ("ok", "wrong", "no_answer", "no_think_close", "unparsable_gold", "timeout", "error")

MATH_VERIFY_MISSING = "math-verify is not installed: pip install 'grouprl[math]'"
_MV_MAX_PRED_CHARS = 1000   # longer "answers" are compared by string only (math-verify is slow)
_FREE_TAIL_CHARS = 1000     # "free" mode hands math-verify at most this much of the region


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of one verification.

    Attributes:
        correct: ``True``/``False``; ``None`` only when the gold cannot be parsed
            (reason ``"unparsable_gold"``: leave the sample out of the advantage, spec §C6).
        pred: the extracted prediction that was judged, or ``None``.
        gold: the gold answer that was compared (after ``####`` / box extraction), or ``None``.
        reason: one of :data:`REASONS`: ``"ok"`` (correct), ``"wrong"``, ``"no_answer"``,
            ``"no_think_close"``, ``"unparsable_gold"``, ``"timeout"``, ``"error"``.
    """

    correct: bool | None
    pred: str | None
    gold: str | None
    reason: str


# ---------------------------------------------------------------------------------------------
# Optional dependency
# ---------------------------------------------------------------------------------------------


def _require_math_verify() -> Any:
    """Import math-verify; one-line ``ImportError`` when it (or its LaTeX parser) is missing."""
    try:
        module = importlib.import_module("math_verify")
        importlib.import_module("latex2sympy2_extended")
    except ModuleNotFoundError as err:
        missing = (err.name or "").split(".")[0]
        if missing in ("math_verify", "latex2sympy2_extended", "antlr4"):
            raise ImportError(MATH_VERIFY_MISSING) from None
        raise ImportError(f"math-verify is installed but failed to import: {err}") from err
    return module


@lru_cache(maxsize=1)
def math_verify_available() -> bool:
    """Whether math-verify (with its LaTeX parser) can be imported."""
    try:
        _require_math_verify()
    except ImportError:
        return False
    return True


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "math_verify" if math_verify_available() else "builtin"
    if backend in ("math_verify", "combined"):
        _require_math_verify()
    return backend


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


# ---------------------------------------------------------------------------------------------
# math-verify backend
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _mv_configs() -> tuple[Any, Any]:
    """(reward-grade prediction config, default config) for math-verify (spec §C1).

    ``equations`` stays ``False``: math-verify 0.9 handles ``a = … = b`` chains in its parser
    and the flag is deprecated (it logs a warning on every call when ``True``)."""
    mv = _require_math_verify()
    from latex2sympy2_extended import NormalizationConfig

    strict = [
        mv.LatexExtractionConfig(
            normalization_config=NormalizationConfig(
                basic_latex=True, units=True, malformed_operators=False, nits=False,
                boxed="all", equations=False),
            boxed_match_priority=0,
            try_extract_without_anchor=False,
        ),
        mv.ExprExtractionConfig(),
    ]
    default = [mv.LatexExtractionConfig(), mv.ExprExtractionConfig()]
    return strict, default


_gold_cache: dict[tuple[str, int | None], list] = {}
_GOLD_CACHE_MAX = 20000


def _timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.monotonic()
    out = fn(*args, **kwargs)
    return out, time.monotonic() - start


def _timed_out(elapsed: float, limit: int | None) -> bool:
    """math-verify swallows its own timeouts (an empty parse / ``False``); a call that lasted
    about as long as its limit is taken as one."""
    return limit is not None and elapsed >= limit - 0.05


def _mv_parse_gold(gold: str, limit: int | None) -> tuple[list, bool]:
    """``(parsed, timed_out)`` for a gold answer, parsed with math-verify's default config."""
    key = (gold, limit)
    hit = _gold_cache.get(key)
    if hit is not None:
        return hit, False
    mv = _require_math_verify()
    wrapped = gold if any(t in gold for t in ("$", "\\(", "\\[", "\\boxed")) else f"${gold}$"
    parsed, elapsed = _timed(mv.parse, wrapped, parsing_timeout=limit)
    if not parsed and _timed_out(elapsed, limit):
        return [], True
    if not parsed and wrapped != gold:
        parsed, elapsed = _timed(mv.parse, gold, parsing_timeout=limit)
        if not parsed and _timed_out(elapsed, limit):
            return [], True
    if parsed:
        if len(_gold_cache) >= _GOLD_CACHE_MAX:
            _gold_cache.clear()
        _gold_cache[key] = parsed
    return parsed, False


def _mv_pred_text(pred: str) -> str:
    """Our extracted answer, boxed again for math-verify, with ``\\frac12``/``\\sqrt2``
    shorthand given braces (the reward config does not repair malformed operators)."""
    p = pred.strip().strip("$").strip()
    p = _fix_fracs(p.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac"))
    p = _SQRT_SHORT.sub(r"\\sqrt{\1}", p)
    return "\\boxed{" + p + "}"


def _mv_free_pred(region: str, limit: int | None) -> tuple[list, str | None]:
    """``"free"`` mode without a box or answer tag: math-verify's own anchored extraction
    (default config) on the last :data:`_FREE_TAIL_CHARS` characters of the region."""
    mv = _require_math_verify()
    _, default = _mv_configs()
    parsed = mv.parse(region[-_FREE_TAIL_CHARS:], default, parsing_timeout=limit)
    if not parsed:
        return [], None
    text = parsed[-1] if isinstance(parsed[-1], str) else str(parsed[0])
    return parsed, text


def _mv_equal(gold_parsed: list, pred: str, limit: int | None,
              pred_parsed: list | None = None) -> tuple[bool, bool]:
    """``(correct, timed_out)``: math-verify judgement of ``pred`` against a parsed gold."""
    if pred_parsed is None and len(pred) > _MV_MAX_PRED_CHARS:
        return False, False
    mv = _require_math_verify()
    if pred_parsed is None:
        strict, _ = _mv_configs()
        pred_parsed, elapsed = _timed(mv.parse, _mv_pred_text(pred), strict,
                                      parsing_timeout=limit)
        if not pred_parsed:
            return False, _timed_out(elapsed, limit)
    ok, elapsed = _timed(mv.verify, gold_parsed, pred_parsed, timeout_seconds=limit)
    return bool(ok), (not ok) and _timed_out(elapsed, limit)


# ---------------------------------------------------------------------------------------------
# verify_answer
# ---------------------------------------------------------------------------------------------


def _gold_answer(gold: str) -> str:
    """The answer part of a gold field: after ``####`` (GSM8K), else a box's content (a MATH
    solution), else the stripped text."""
    g = str(gold).strip()
    if "####" in g:
        return gsm8k_gold(g)
    if "\\boxed" in g or "\\fbox" in g:
        boxed = last_boxed(g)
        if boxed is not None and boxed.strip():
            return boxed.strip()
    return g


def _mv_limit(timeout_s: float | None) -> int | None:
    """math-verify's per-operation timeout: whole seconds, and none outside the main thread."""
    if timeout_s is None or timeout_s <= 0:
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    return max(1, math.ceil(timeout_s))


def verify_answer(response: str, gold: str, *, mode: str = "boxed", backend: str = "auto",
                  require_think_close: bool = False,
                  timeout_s: float | None = 5.0) -> VerifyResult:
    """Judge one response against its gold answer, in this process.

    Steps: the gold is reduced to its answer (``####`` / box) and parsed — unparsable gives
    ``correct=None``, reason ``"unparsable_gold"``; with ``require_think_close`` (DLER, DRPO,
    DOT, spec §C4) a response without ``</think>`` is ``"no_think_close"``; the prediction is
    extracted by ``mode`` from the text after the first ``</think>`` (none: ``"no_answer"``);
    the backend compares (``"ok"`` / ``"wrong"``).

    Args:
        response: the model's completion (without the prompt).
        gold: the reference answer (a bare answer, a ``$…$`` / boxed answer, or a GSM8K
            rationale ending in ``#### n``).
        mode: ``"boxed"`` (default), ``"answer_tag"``, ``"gsm8k"`` or ``"free"``.
        backend: ``"auto"`` (default), ``"builtin"``, ``"math_verify"`` or ``"combined"``.
        require_think_close: a missing ``</think>`` is a format error (reward 0).
        timeout_s: math-verify's own per-operation timeout (whole seconds, rounded up); only
            honoured in the main thread (``signal.alarm``). ``None`` disables it.

    Bad model output never raises: any exception gives ``correct=False``, reason ``"error"``.
    An unknown ``mode``/``backend`` raises ``ValueError``; ``backend="math_verify"`` without
    math-verify installed raises ``ImportError``.
    """
    _check_mode(mode)
    backend = _resolve_backend(backend)
    gold_ans: str | None = None
    try:
        gold_ans = _gold_answer(gold)
        return _verify(str(response), gold_ans, mode, backend, require_think_close,
                       _mv_limit(timeout_s))
    except Exception:  # noqa: BLE001 - a verifier must not take training down
        logging.getLogger(__name__).debug("verify_answer failed", exc_info=True)
        return VerifyResult(False, None, gold_ans, "error")


def _verify(response: str, gold: str, mode: str, backend: str, require_think_close: bool,
            limit: int | None) -> VerifyResult:
    use_mv = backend in ("math_verify", "combined")
    use_builtin = backend in ("builtin", "combined")

    gold_parsed: list = []
    if use_mv:
        gold_parsed, timed_out = _mv_parse_gold(gold, limit)
        if timed_out:
            return VerifyResult(False, None, gold, "timeout")
    builtin_gold_ok = use_builtin and bool(normalize_answer(gold))
    if not gold_parsed and not builtin_gold_ok:
        return VerifyResult(None, None, gold, "unparsable_gold")

    if require_think_close and "</think>" not in response:
        return VerifyResult(False, None, gold, "no_think_close")

    pred = extract_prediction(response, mode)  # the builtin backend's prediction
    mv_pred, mv_parsed = (pred, None) if gold_parsed else (None, None)
    if gold_parsed and mode == "free":
        # math-verify's "free": a box or answer tag if there is one, else its own anchored
        # extraction ("the answer is …") instead of the builtin last-number fallback.
        mv_pred = extract_prediction(response, "boxed")
        if mv_pred is None:
            mv_pred = extract_prediction(response, "answer_tag")
        if mv_pred is None:
            mv_parsed, mv_pred = _mv_free_pred(split_think(response)[1], limit)
    if not use_builtin:
        pred = None
    if pred is None and mv_pred is None:
        return VerifyResult(False, None, gold, "no_answer")

    timed_out = False
    if mv_pred is not None:
        ok, timed_out = _mv_equal(gold_parsed, mv_pred, limit, mv_parsed or None)
        if ok:
            return VerifyResult(True, mv_pred, gold, "ok")
    if pred is not None and builtin_gold_ok and builtin_equal(pred, gold):
        return VerifyResult(True, pred, gold, "ok")
    return VerifyResult(False, mv_pred if mv_pred is not None else pred, gold,
                        "timeout" if timed_out else "wrong")
