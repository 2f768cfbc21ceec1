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
interpreter: :func:`verify_answer` passes its ``timeout_s`` to math-verify in the main thread and
disables math-verify's timeout elsewhere (spec §C1 threading note). Even in the main thread a
check can sit in native code (sympy's big-integer power on ``9^{9^{9^{9}}}``) holding the GIL:
in a thread that freezes the whole process, since no other thread (a pool's deadline included)
runs again. For training, use :class:`Verifier` with ``workers > 0`` or ``isolated=True``:
calls run in persistent worker processes (:class:`grouprl.workers.WorkerPool`) with a
wall-clock timeout of our own; a call that runs too long returns reason ``"timeout"`` and its
worker is killed and replaced, a worker that dies returns ``"error"``. Isolated verifiers (the
reasoning env's, when it runs in the trainer's process: ``EnvPool`` backends ``serial`` and
``thread``) share their worker processes (:func:`close_isolated_verifiers`).
"""

from __future__ import annotations

import importlib
import logging
import math
import multiprocessing as mp
import os
import pickle
import re
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache, partial
from typing import Any

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
from grouprl.validation import check_choice, check_int, check_number
from grouprl.workers import CallResult, WorkerPool, WorkerStartError

__all__ = [
    "BACKENDS",
    "REASONS",
    "VerifyResult",
    "math_verify_available",
    "builtin_equal",
    "verify_answer",
    "Verifier",
    "close_isolated_verifiers",
]

BACKENDS = ("auto", "builtin", "math_verify", "combined")
REASONS = ("ok", "wrong", "no_answer", "no_think_close", "unparsable_gold", "timeout", "error")

MATH_VERIFY_MISSING = "math-verify is not installed: pip install 'grouprl[math]'"
_MV_MAX_PRED_CHARS = 1000   # longer "answers" are compared by string only (math-verify is slow)
_FREE_TAIL_CHARS = 1000     # "free" mode hands math-verify at most this much of the region
_SAFE_MAX_CHARS = 200       # builtin symbolic check: longest normalised answer it will parse
_SAFE_MAX_EXP = 64          # ... largest |exponent| numerator / denominator it accepts
_SAFE_MAX_BITS = 20000      # ... largest bit size of an exact power it will build
_STARTUP_TIMEOUT_S = 120.0  # a worker process must be ready within this (imports included)


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
# Builtin backend
# ---------------------------------------------------------------------------------------------

_DECIMAL = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$")
_FRAC_NUM = re.compile(r"^([+-]?)\\frac\{([+-]?[0-9.]+)\}\{([+-]?[0-9.]+)\}$")
_SLASH_NUM = re.compile(r"^([+-]?[0-9.]+)/([+-]?[0-9.]+)$")


def _decimal(s: str) -> Fraction | None:
    return Fraction(s) if _DECIMAL.match(s) and len(s) <= 400 else None


def _to_fraction(s: str) -> Fraction | None:
    """Exact value of a normalised numeric answer: ``-3``, ``0.25``, ``\\frac{1}{4}``, ``1/4``."""
    try:
        value = _decimal(s)
        if value is not None:
            return value
        m = _FRAC_NUM.match(s)
        if m:
            num, den = _decimal(m.group(2)), _decimal(m.group(3))
            if num is None or den is None:
                return None
            return (-1 if m.group(1) == "-" else 1) * num / den
        m = _SLASH_NUM.match(s)
        if m:
            num, den = _decimal(m.group(1)), _decimal(m.group(2))
            return None if num is None or den is None else num / den
    except ZeroDivisionError:
        return None
    return None


_SAFE_CHARS = re.compile(r"^(?:[0-9.+\-*/^(){}\[\]]|\\?sqrt|\\d?frac|\\pi|pi|\\cdot|\\times)+$")
_SAFE_TOKEN = re.compile(r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+|\*\*|sqrt|frac|pi|[-+*/^(){}\[\]]")


class _Unsafe(Exception):
    """The expression is outside what the guarded symbolic check accepts."""


class _SafeParser:
    """Recursive-descent parser for arithmetic with ``sqrt``, ``frac`` and ``pi`` that builds
    sympy objects directly (no ``eval``). Grammar::

        expr   := term (('+'|'-') term)*
        term   := factor (('*'|'/') factor | factor)*        # juxtaposition multiplies
        factor := ('+'|'-') factor | power
        power  := atom (('^'|'**') factor)?
        atom   := NUMBER | pi | '(' expr ')' | '{' expr '}'
                | sqrt ('[' expr ']')? arg | frac arg arg
        arg    := '{' expr '}' | '(' expr ')' | NUMBER | pi
    """

    _STARTS_ATOM = frozenset(("(", "{", "sqrt", "frac", "pi"))

    def __init__(self, text: str, sympy: Any) -> None:
        self.sp = sympy
        self.toks = _SAFE_TOKEN.findall(text)
        if "".join(self.toks) != text:
            raise _Unsafe(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise _Unsafe(f"expected {expected!r}, got {tok!r}")
        self.i += 1
        return tok

    def parse(self) -> Any:
        value = self.expr()
        if self.peek() is not None:
            raise _Unsafe("trailing tokens")
        return value

    def expr(self) -> Any:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term()
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self) -> Any:
        value = self.factor()
        while True:
            tok = self.peek()
            if tok in ("*", "/"):
                self.take()
                rhs = self.factor()
                if tok == "/" and rhs == 0:
                    raise _Unsafe("division by zero")
                value = value * rhs if tok == "*" else value / rhs
            elif tok is not None and (tok in self._STARTS_ATOM or tok[0].isdigit()
                                      or tok[0] == "."):
                value = value * self.factor()
            else:
                return value

    def factor(self) -> Any:
        if self.peek() in ("+", "-"):
            sign = self.take()
            value = self.factor()
            return -value if sign == "-" else value
        return self.power()

    def power(self) -> Any:
        base = self.atom()
        if self.peek() in ("^", "**"):
            self.take()
            exp = self.factor()
            return self._pow(base, exp)
        return base

    def _pow(self, base: Any, exp: Any) -> Any:
        sp = self.sp
        if not isinstance(exp, sp.Rational):
            raise _Unsafe("non-rational exponent")
        if abs(exp.p) > _SAFE_MAX_EXP or exp.q > _SAFE_MAX_EXP:
            raise _Unsafe("exponent too large")
        if isinstance(base, sp.Rational):
            bits = max(abs(base.p).bit_length(), base.q.bit_length())
            if bits * abs(exp.p) > _SAFE_MAX_BITS:
                raise _Unsafe("power too large")
        if base == 0 and exp.p < 0:
            raise _Unsafe("division by zero")
        return sp.Pow(base, exp)

    def atom(self) -> Any:
        sp = self.sp
        tok = self.take()
        if tok[0].isdigit() or tok[0] == ".":
            return sp.Rational(tok)
        if tok == "pi":
            return sp.pi
        if tok == "(":
            value = self.expr()
            self.take(")")
            return value
        if tok == "{":
            value = self.expr()
            self.take("}")
            return value
        if tok == "sqrt":
            index = None
            if self.peek() == "[":
                self.take()
                index = self.expr()
                self.take("]")
            radicand = self.arg()
            if index is None:
                return sp.sqrt(radicand)
            if not isinstance(index, sp.Integer) or not 1 <= int(index) <= _SAFE_MAX_EXP:
                raise _Unsafe("root index")
            return sp.root(radicand, index)
        if tok == "frac":
            num = self.arg()
            den = self.arg()
            if den == 0:
                raise _Unsafe("division by zero")
            return num / den
        raise _Unsafe(f"unexpected {tok!r}")

    def arg(self) -> Any:
        tok = self.peek()
        if tok in ("{", "("):
            self.take()
            value = self.expr()
            self.take("}" if tok == "{" else ")")
            return value
        if tok is not None and (tok[0].isdigit() or tok == "pi"):
            return self.atom()
        raise _Unsafe("missing argument")


def _safe_sympy(s: str, sympy: Any) -> Any | None:
    """sympy value of a whitelisted arithmetic string, or ``None`` when it is not one."""
    if len(s) > _SAFE_MAX_CHARS or not _SAFE_CHARS.match(s):
        return None
    text = (s.replace("\\cdot", "*").replace("\\times", "*").replace("\\dfrac", "frac")
            .replace("\\frac", "frac").replace("\\sqrt", "sqrt").replace("\\pi", "pi"))
    try:
        return _SafeParser(text, sympy).parse()
    except (_Unsafe, RecursionError, ValueError, TypeError, ZeroDivisionError):
        return None


def _symbolic_equal(a: str, b: str) -> bool:
    """Guarded sympy equivalence of two normalised answers (both must pass the whitelist)."""
    if len(a) > _SAFE_MAX_CHARS or len(b) > _SAFE_MAX_CHARS:
        return False
    if not (_SAFE_CHARS.match(a) and _SAFE_CHARS.match(b)):
        return False
    import sympy

    x, y = _safe_sympy(a, sympy), _safe_sympy(b, sympy)
    if x is None or y is None:
        return False
    diff = x - y
    if diff == 0:
        return True
    return bool(sympy.simplify(diff) == 0)


def builtin_equal(pred: str, gold: str) -> bool:
    """The builtin backend's equivalence of two answer strings (see the module docstring):
    normalised string equality, exact numeric equality, then the guarded sympy check."""
    a, b = normalize_answer(pred), normalize_answer(gold)
    if not a or not b:
        return False
    if a == b:
        return True
    fa, fb = _to_fraction(a), _to_fraction(b)
    if fa is not None and fb is not None:
        return fa == fb
    return _symbolic_equal(a, b)


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


# ---------------------------------------------------------------------------------------------
# Verifier: in-process or a pool of worker processes with wall-clock timeouts
# ---------------------------------------------------------------------------------------------

CheckFn = Callable[[str, str], VerifyResult]


def _call(fn: CheckFn | None, kwargs: dict[str, Any], response: str, gold: str) -> VerifyResult:
    if fn is None:
        return verify_answer(response, gold, **kwargs)
    try:
        return fn(response, gold)
    except Exception:  # noqa: BLE001
        return VerifyResult(False, None, gold, "error")


def _verifier_state(fn: CheckFn | None, kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Worker state: import and warm up (math-verify's first call builds its parsers)."""
    if fn is None:
        verify_answer("\\boxed{1}", "1", **kwargs)
    return fn, kwargs


def _verify_item(state: tuple[Any, ...], item: tuple[str, str]) -> VerifyResult:
    """Worker call: one ``(response, gold)`` pair."""
    fn, kwargs = state
    return _call(fn, kwargs, *item)


class _SharedWorkers:
    """Worker processes shared by the isolated :class:`Verifier` objects of this process that
    have one setting.  Each call checks out an idle single-worker :class:`WorkerPool` — a new
    one when none is idle and fewer than ``cap`` exist, else it waits for one — so concurrent
    callers (envs stepped in threads) never share a pipe and one hung check holds up only its
    own caller."""

    def __init__(self, init: Callable[[], Any], cap: int, timeout: float | None,
                 start_method: str) -> None:
        self.init, self.cap, self.timeout, self.start_method = init, cap, timeout, start_method
        self._idle: list[WorkerPool] = []
        self._made = 0  # pools in existence (idle + checked out) or being made
        self._cond = threading.Condition()
        self._closed = False

    def run(self, items: list[tuple[str, str]]) -> list[CallResult]:
        """Judge ``items`` on one checked-out worker, in order."""
        pool = self._checkout()
        try:
            out = pool.map(items)
        except BaseException:  # Ctrl-C: the pool closed itself
            self._discard(pool)
            raise
        with self._cond:
            closed = self._closed
            if not closed:
                self._idle.append(pool)
                self._cond.notify()
        if closed:  # close() ran during the call
            self._discard(pool)
        return out

    def _checkout(self) -> WorkerPool:
        with self._cond:
            while not self._idle and self._made >= self.cap:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._made += 1
        try:  # a new worker, started outside the lock (it takes a while)
            pool = WorkerPool(self.init, _verify_item, 1, timeout=self.timeout,
                              start_timeout=_STARTUP_TIMEOUT_S, start_method=self.start_method,
                              name="grouprl-verifier")
            try:
                pool.start()
            except BaseException:
                pool.close()
                raise
        except WorkerStartError as err:
            self._discard(None)
            raise RuntimeError(f"verifier worker process failed to start: {err.reason}; "
                               "run with workers=0 to see the error in this process") from None
        except BaseException:
            self._discard(None)
            raise
        return pool

    def _discard(self, pool: WorkerPool | None) -> None:
        if pool is not None:
            pool.close()
        with self._cond:
            self._made -= 1
            self._cond.notify()

    def close(self) -> None:
        """Stop the idle workers (checked-out ones stop when their call returns)."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._made -= len(idle)
            self._cond.notify_all()
        for pool in idle:
            pool.close()


_SHARED: dict[tuple, _SharedWorkers] = {}
_SHARED_LOCK = threading.Lock()
_SHARED_PID = [os.getpid()]


def _shared_workers(key: tuple, init: Callable[[], Any], cap: int, timeout: float | None,
                    start_method: str) -> _SharedWorkers:
    with _SHARED_LOCK:
        if _SHARED_PID[0] != os.getpid():  # a forked child: the workers are not its own
            _SHARED.clear()
            _SHARED_PID[0] = os.getpid()
        shared = _SHARED.get(key)
        if shared is None:
            shared = _SHARED[key] = _SharedWorkers(init, cap, timeout, start_method)
        shared.cap = max(shared.cap, cap)
        return shared


def close_isolated_verifiers() -> None:
    """Stop the worker processes shared by isolated verifiers (they also stop when the
    interpreter exits); a later isolated call starts new ones."""
    with _SHARED_LOCK:
        shared = list(_SHARED.values())
        _SHARED.clear()
    for s in shared:
        s.close()


class Verifier:
    """Callable answer verifier for training loops and environments.

    ``Verifier(mode, backend)(response, gold) -> VerifyResult``; :meth:`verify_batch` judges a
    list. With ``workers == 0`` calls run here (math-verify's own signal timeout applies only
    in the main thread). With ``workers > 0`` they run in that many persistent worker
    processes, started on first use, with a wall-clock limit of ``timeout_s`` per call: a call
    over the limit returns ``VerifyResult(False, None, gold, "timeout")`` and its worker is
    killed and replaced; a worker that dies mid-call gives reason ``"error"`` and is replaced.
    Either way training gets a reward-0 result and later calls work.

    With ``isolated=True`` (or after :meth:`isolate`) calls never run in this process: with
    ``workers > 0`` or not, they go to worker processes shared by every isolated verifier of
    this process with the same settings, one per concurrent call, at most
    ``max(workers, CPU count)``, with the same ``timeout_s`` deadline. The reasoning env's
    verifier is isolated when the env runs in the trainer's process, where a check stuck in
    native code would freeze everything (module docstring).

    Worker start-up (spawn) costs one interpreter per worker: about 0.3 s each for the builtin
    backend and about 1 s of CPU each for math-verify (its import plus one warm-up call, done
    before the worker reports ready); two math-verify workers were ready in 2–3 s on a busy
    2-core machine. Start the pool once and reuse it.

    A Verifier pickles without its processes (an unpickled copy starts its own on first use),
    so it can live inside environment objects that are sent to other processes. Inside a
    daemonic process (which may not have children) it falls back to ``workers=0``.

    Args:
        mode, backend: as in :func:`verify_answer`; the backend is resolved (``"auto"``) here.
        timeout_s: per-call wall-clock limit with workers (default 5 s), also passed to
            math-verify as its own timeout. ``None``: no limit.
        workers: number of worker processes; 0 (default) runs in-process.
        require_think_close: as in :func:`verify_answer`.
        fn: replaces :func:`verify_answer` by ``fn(response, gold) -> VerifyResult`` (custom
            checks, tests). It must be a top-level function so that it pickles; an exception
            in it gives reason ``"error"``.
        start_method: multiprocessing start method of the workers (default ``"spawn"``: safe
            with torch and CUDA loaded; ``"forkserver"`` also works).
        isolated: never verify in this process (above).

    Attributes:
        stats: counts ``calls``, ``timeouts``, ``errors``, ``unparsable_gold`` and
            ``worker_restarts``.
    """

    def __init__(self, mode: str = "boxed", backend: str = "auto", *,
                 timeout_s: float | None = 5.0, workers: int = 0,
                 require_think_close: bool = False, fn: CheckFn | None = None,
                 start_method: str = "spawn", isolated: bool = False) -> None:
        _check_mode(mode)
        check_int("workers", workers, 0)
        check_number("timeout_s", timeout_s, 0, low_open=True, none_ok=True, note="seconds")
        check_choice("start_method", start_method, tuple(mp.get_all_start_methods()))
        if fn is not None and (workers > 0 or isolated):
            try:
                pickle.dumps(fn)
            except Exception as err:
                raise ValueError(f"fn must be a picklable top-level function, got {fn!r}: "
                                 f"{err}") from None
        self.mode = mode
        self.backend = _resolve_backend(backend) if fn is None else backend
        self.timeout_s = timeout_s
        self.workers = workers
        self.require_think_close = require_think_close
        self.fn = fn
        self.start_method = start_method
        self.isolated = bool(isolated)
        self.stats: dict[str, int] = {"calls": 0, "timeouts": 0, "errors": 0,
                                      "unparsable_gold": 0, "worker_restarts": 0}
        self._init_runtime()

    def isolate(self) -> None:
        """From now on never verify in this process (``isolated=True``, class docstring)."""
        if self.fn is not None:
            try:
                pickle.dumps(self.fn)
            except Exception as err:
                raise ValueError(f"fn must be a picklable top-level function to isolate the "
                                 f"verifier, got {self.fn!r}: {err}") from None
        with self._lock:
            self.isolated = True

    def _init_runtime(self) -> None:
        self._pool: WorkerPool | None = None
        self._lock = threading.Lock()

    @property
    def _kwargs(self) -> dict[str, Any]:
        return {"mode": self.mode, "backend": self.backend,
                "require_think_close": self.require_think_close, "timeout_s": self.timeout_s}

    def _use_pool(self) -> bool:
        if self.workers == 0 and not self.isolated:
            return False
        if mp.current_process().daemon:
            warnings.warn("Verifier: daemonic processes cannot start workers; verifying "
                          "in-process (workers=0)", RuntimeWarning, stacklevel=3)
            self.workers, self.isolated = 0, False
            return False
        return True

    def _shared(self) -> _SharedWorkers:
        kwargs = self._kwargs
        try:
            hash(self.fn)
            fn_key: Any = self.fn
        except TypeError:
            fn_key = id(self.fn)
        key = (fn_key, tuple(sorted(kwargs.items())), self.timeout_s, self.start_method)
        return _shared_workers(key, partial(_verifier_state, self.fn, kwargs),
                               max(self.workers, os.cpu_count() or 1), self.timeout_s,
                               self.start_method)

    def _ensure_pool(self) -> WorkerPool:
        if self._pool is None:
            pool = WorkerPool(partial(_verifier_state, self.fn, self._kwargs), _verify_item,
                              self.workers, timeout=self.timeout_s,
                              start_timeout=_STARTUP_TIMEOUT_S, start_method=self.start_method,
                              name="grouprl-verifier")
            try:
                pool.start()
            except WorkerStartError as err:
                pool.close()
                raise RuntimeError(f"verifier worker process failed to start: {err.reason}; "
                                   "run with workers=0 to see the error in this process"
                                   ) from None
            except BaseException:
                pool.close()
                raise
            self._pool = pool
        return self._pool

    def _count(self, results: list[VerifyResult]) -> list[VerifyResult]:
        self.stats["calls"] += len(results)
        for r in results:
            if r.reason == "timeout":
                self.stats["timeouts"] += 1
            elif r.reason == "error":
                self.stats["errors"] += 1
            elif r.reason == "unparsable_gold":
                self.stats["unparsable_gold"] += 1
        return results

    def __call__(self, response: str, gold: str) -> VerifyResult:
        return self.verify_batch([response], [gold])[0]

    def verify_batch(self, responses: Sequence[str], golds: Sequence[str]) -> list[VerifyResult]:
        """Judge ``responses[i]`` against ``golds[i]``; spread over the workers when there are
        any. Results are in input order."""
        if len(responses) != len(golds):
            raise ValueError(f"verify_batch: {len(responses)} responses but {len(golds)} golds")
        items = [(str(r), str(g)) for r, g in zip(responses, golds)]
        with self._lock:
            if not self._use_pool():
                return self._count([_call(self.fn, self._kwargs, r, g) for r, g in items])
            if self.isolated:
                outcomes = self._shared().run(items) if items else []
                self.stats["worker_restarts"] += sum(out.restarted for out in outcomes)
            else:
                pool = self._ensure_pool()
                restarts = pool.stats["restarts"]
                try:
                    outcomes = pool.map(items)
                except BaseException:  # Ctrl-C: the pool closed itself; start afresh next time
                    self._close_pool()
                    raise
                self.stats["worker_restarts"] += pool.stats["restarts"] - restarts
            return self._count([
                out.value if out.ok else
                VerifyResult(False, None, gold, "timeout" if out.timed_out else "error")
                for out, (_, gold) in zip(outcomes, items)])

    def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        with self._lock:
            self._close_pool()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_pool", "_lock"):
            state.pop(key, None)
        state["stats"] = dict(self.stats)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def __repr__(self) -> str:
        return (f"Verifier(mode={self.mode!r}, backend={self.backend!r}, "
                f"timeout_s={self.timeout_s!r}, workers={self.workers}, "
                f"require_think_close={self.require_think_close}, isolated={self.isolated})")
