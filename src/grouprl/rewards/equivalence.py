"""The builtin answer-equivalence backend: exact numbers (integers, decimals, fractions,
``\\frac``) compared as fractions, then a safe symbolic check (a restricted parser feeding sympy,
with bounds on length, exponents and the bit size of exact powers, so an answer like
``9^{9^{9^{9}}}`` is refused rather than computed)."""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from grouprl.rewards.extract import normalize_answer

__all__ = ["builtin_equal"]

_SAFE_MAX_CHARS = 200       # builtin symbolic check: longest normalised answer it will parse
_SAFE_MAX_EXP = 64          # ... largest |exponent| numerator / denominator it accepts
_SAFE_MAX_BITS = 20000      # ... largest bit size of an exact power it will build


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
