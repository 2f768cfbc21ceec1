"""Built-in generated reasoning data: arithmetic and short word problems with exact answers.

Nothing is downloaded or read from disk: every problem is generated, deterministically, so the
default reasoning task of grouprl needs no files.  Levels (``difficulty``):

1. ``a + b`` and ``a - b`` with single digits (results never negative);
2. two-digit ``a + b`` and ``a - b`` (carries and borrows occur naturally);
3. ``a * b`` with one factor a single digit and the other one or two digits, and short word
   problems (buy, give away, share equally with an exact quotient, rows × columns, unit price);
4. two-operation expressions: ``(a + b) * c``, ``a * b - c``, ``a + b * c``, ``(a - b) * c``.

Every answer is a non-negative integer.  **Splits** are fixed by the problem itself, not by
``seed``: a SHA-256 hash of the canonical problem (its kind and operands; the prompt text is a
function of these) puts about 10 % of all problems into ``"test"`` and the rest into
``"train"``, so the two splits are disjoint by problem text for every seed.  ``seed`` only
chooses which problems are drawn and their order.  Within a split, problems are interleaved
round-robin over difficulty levels (and over problem kinds within a level), so any prefix of
the list is balanced until a small level (level 1 has 155 problems in all) runs out.

**Expert solutions** (for behaviour cloning) are one line, no newline::

    <think>47+38: 7+8=15, write 5 carry 1. 4+3+1=8. So 85. Check: 85-38=47. Yes.</think>
    <answer>85</answer>

(shown on two lines here; the solution has no line break before ``<answer>``).

The think part works the problem in small column steps (single-digit facts are one step,
``3+4=7.``), followed by a random number of redundant verification sentences (``Check: …
Yes.``), drawn uniformly from ``verbose_checks`` (inclusive) per example, deterministically from
the problem, so that response lengths vary at equal accuracy: efficient-reasoning length
penalties can then be seen to drop the checks while keeping the answers right.

**Preference pairs** (:func:`arithmetic_pairs`): ``chosen`` is the correct solution with no
check sentences; ``rejected`` is, for a fraction ``1 - verbose_fraction`` (default 80 %), a
plausible WRONG solution in the same format (a dropped carry or borrow, an off-by-one final
result, or, for word problems, the wrong operation), and otherwise the correct solution padded
with five or more redundant checks (``metadata["rejected_kind"] == "verbose"``).  Reward
accuracy on pairs (chosen preferred) is therefore mostly a test of correctness; set
``verbose_fraction=0`` for wrong-only pairs.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from .types import PreferencePair, ReasoningExample

__all__ = ["DIFFICULTIES", "DEFAULT_PER_DIFFICULTY", "TEST_FRACTION", "arithmetic_dataset",
           "arithmetic_pairs"]

DIFFICULTIES: tuple[int, ...] = (1, 2, 3, 4)
TEST_FRACTION = 0.10
"""Share of all problems (by hash of the canonical problem) that belongs to the test split."""
DEFAULT_PER_DIFFICULTY: dict[str, int] = {"train": 1500, "test": 150}
"""Problems drawn per difficulty level when ``size`` is None."""

_SPLITS = ("train", "test")

# ------------------------------------------------------------------------------------------
# Column arithmetic with its worked steps
# ------------------------------------------------------------------------------------------


def _digits(n: int) -> list[int]:
    """Digits of ``n >= 0``, least significant first."""
    return [int(c) for c in reversed(str(n))]


def _assemble(low_digits: list[int], top: int) -> int:
    return int(str(top) + "".join(str(d) for d in reversed(low_digits)))


def _add_steps(a: int, b: int, slip: bool = False) -> tuple[str, int]:
    """Column addition ``a + b``; ``slip`` drops every carry (a classic error)."""
    if a < 10 and b < 10:
        return f"{a}+{b}={a + b}.", a + b
    da, db = _digits(a), _digits(b)
    n = max(len(da), len(db))
    parts: list[str] = []
    low: list[int] = []
    carry, top = 0, 0
    for i in range(n):
        terms = [d[i] for d in (da, db) if i < len(d)] + ([carry] if carry else [])
        last = i == n - 1
        if len(terms) == 1:
            parts.append(f"Bring down {terms[0]}.")
            s = terms[0]
        else:
            s = sum(terms)
            expr = "+".join(map(str, terms)) + f"={s}"
            if not last and s >= 10:
                parts.append(f"{expr}, write {s % 10}." if slip
                             else f"{expr}, write {s % 10} carry {s // 10}.")
            else:
                parts.append(f"{expr}.")
        if last:
            top = s
        else:
            low.append(s % 10)
            carry = 0 if slip else s // 10
    value = _assemble(low, top)
    return f"{a}+{b}: " + " ".join(parts) + f" So {value}.", value


def _sub_steps(a: int, b: int, slip: bool = False) -> tuple[str, int]:
    """Column subtraction ``a - b`` (``a >= b``); ``slip`` subtracts the smaller digit from the
    larger instead of borrowing (a classic error)."""
    if a < 10:
        return f"{a}-{b}={a - b}.", a - b
    da, db = _digits(a), _digits(b)
    parts: list[str] = []
    digits: list[int] = []
    borrow = 0
    for i, x in enumerate(da):
        y = db[i] if i < len(db) else None
        if y is None and not borrow:
            parts.append(f"Bring down {x}.")
            digits.append(x)
            continue
        y = 0 if y is None else y
        top = x - borrow
        if top < y and slip:
            parts.append(f"{y}-{top}={y - top}.")
            digits.append(y - top)
            continue
        need = top < y
        expr = f"{x + 10 if need else x}" + ("-1" if borrow else "") + (f"-{y}" if i < len(db)
                                                                      else "")
        value = top + (10 if need else 0) - y
        parts.append(f"{expr}={value}, borrow 1." if need else f"{expr}={value}.")
        digits.append(value)
        borrow = 1 if need else 0
    result = int("".join(str(d) for d in reversed(digits)))
    return f"{a}-{b}: " + " ".join(parts) + f" So {result}.", result


def _mul_steps(a: int, b: int, slip: bool = False) -> tuple[str, int]:
    """``a * b`` with one single-digit factor, digit by digit; ``slip`` drops the carries."""
    if a < 10 and b < 10:
        return f"{a}*{b}={a * b}.", a * b
    if a >= 10 and b >= 10:
        raise ValueError(f"_mul_steps: one factor must be a single digit, got {a}*{b}")
    m, big, m_first = (a, b, True) if a < 10 else (b, a, False)
    digs = _digits(big)
    parts: list[str] = []
    low: list[int] = []
    carry, top = 0, 0
    for i, d in enumerate(digs):
        prod = f"{m}*{d}" if m_first else f"{d}*{m}"
        s = m * d + carry
        expr = prod + (f"+{carry}" if carry else "") + f"={s}"
        last = i == len(digs) - 1
        if last:
            parts.append(f"{expr}.")
            top = s
        else:
            if s >= 10:
                parts.append(f"{expr}, write {s % 10}." if slip
                             else f"{expr}, write {s % 10} carry {s // 10}.")
            else:
                parts.append(f"{expr}.")
            low.append(s % 10)
            carry = 0 if slip else s // 10
    value = _assemble(low, top)
    return f"{a}*{b}: " + " ".join(parts) + f" So {value}.", value


def _div_steps(n: int, k: int, slip: bool = False) -> tuple[str, int]:
    """Exact division ``n / k`` shown as the multiplication fact it inverts."""
    q = n // k
    if n != q * k:
        raise ValueError(f"_div_steps: {n}/{k} is not exact")
    return f"{n}/{k}: {k}*{q}={n}. So {q}.", q


_STEPS: dict[str, Callable[..., tuple[str, int]]] = {
    "+": _add_steps, "-": _sub_steps, "*": _mul_steps, "/": _div_steps}


def _checks(op: str, x: int, y: int, r: int) -> list[str]:
    """Redundant verification sentences of ``x op y = r``."""
    if op == "+":
        facts = [f"{r}-{y}={x}", f"{r}-{x}={y}", f"{y}+{x}={r}"]
    elif op == "-":
        facts = [f"{r}+{y}={x}", f"{x}-{r}={y}", f"{y}+{r}={x}"]
    elif op == "*":
        facts = [f"{r}/{x}={y}", f"{r}/{y}={x}", f"{y}*{x}={r}"]
    else:
        facts = [f"{r}*{y}={x}", f"{x}/{r}={y}", f"{y}*{r}={x}"]
    return [f"Check: {f}. Yes." for f in facts]


def _apply(op: str, x: int, y: int) -> int:
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    return x // y


# ------------------------------------------------------------------------------------------
# Problem kinds: canonical operands -> (prompt, operations)
# ------------------------------------------------------------------------------------------

_NAMES = ("Tom", "Ann", "Sam", "Mia", "Ben", "Lily", "Max", "Zoe", "Leo", "Eva", "Noah", "Ivy")
_ITEMS = ("apples", "pencils", "stickers", "marbles", "cookies", "books", "cards", "shells")
_PRICED = (("pen", "pens"), ("book", "books"), ("ticket", "tickets"), ("cake", "cakes"),
           ("ball", "balls"), ("toy", "toys"))
_GRIDS = (("garden", "trees"), ("hall", "chairs"), ("box", "eggs"), ("classroom", "desks"),
          ("field", "plants"), ("wall", "tiles"))


@dataclass(frozen=True)
class _Kind:
    name: str
    difficulty: int
    group: str                        # kinds of one group share a round-robin slot
    space: Callable[[], Iterable[tuple[int, ...]]]
    prompt: Callable[[tuple[int, ...], random.Random], str]
    # operations in order: (op, x, y) with x/y an operand index or "r" (previous result)
    plan: Callable[[tuple[int, ...]], list[tuple[str, Any, Any]]]
    expression: Callable[[tuple[int, ...]], str]


def _r(lo: int, hi: int) -> range:
    return range(lo, hi + 1)


def _word_rng(key: str) -> random.Random:
    return random.Random("names:" + key)


def _give_prompt(o: tuple[int, ...], rng: random.Random) -> str:
    name, other = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    return (f"{name} has {o[0]} {item} and gives {o[1]} to {other}. "
            f"How many {item} does {name} have now?")


def _buy_prompt(o: tuple[int, ...], rng: random.Random) -> str:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    return f"{name} has {o[0]} {item} and buys {o[1]} more. How many {item} does {name} have now?"


def _share_prompt(o: tuple[int, ...], rng: random.Random) -> str:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    return (f"{name} shares {o[0]} {item} equally among {o[1]} friends. "
            f"How many {item} does each friend get?")


def _rows_prompt(o: tuple[int, ...], rng: random.Random) -> str:
    place, things = rng.choice(_GRIDS)
    return f"A {place} has {o[0]} rows of {o[1]} {things}. How many {things} are there?"


def _price_prompt(o: tuple[int, ...], rng: random.Random) -> str:
    one, many = rng.choice(_PRICED)
    return f"One {one} costs {o[0]} dollars. How many dollars do {o[1]} {many} cost?"


def _bin(op: str) -> Callable[[tuple[int, ...]], list[tuple[str, Any, Any]]]:
    return lambda o: [(op, 0, 1)]


_KINDS: tuple[_Kind, ...] = (
    # level 1
    _Kind("add1", 1, "add1", lambda: ((a, b) for a in _r(0, 9) for b in _r(0, 9)),
          lambda o, _: f"What is {o[0]} + {o[1]}?", _bin("+"), lambda o: f"{o[0]}+{o[1]}"),
    _Kind("sub1", 1, "sub1", lambda: ((a, b) for a in _r(0, 9) for b in _r(0, a)),
          lambda o, _: f"What is {o[0]} - {o[1]}?", _bin("-"), lambda o: f"{o[0]}-{o[1]}"),
    # level 2
    _Kind("add2", 2, "add2", lambda: ((a, b) for a in _r(10, 99) for b in _r(10, 99)),
          lambda o, _: f"What is {o[0]} + {o[1]}?", _bin("+"), lambda o: f"{o[0]}+{o[1]}"),
    _Kind("sub2", 2, "sub2", lambda: ((a, b) for a in _r(10, 99) for b in _r(10, a)),
          lambda o, _: f"What is {o[0]} - {o[1]}?", _bin("-"), lambda o: f"{o[0]}-{o[1]}"),
    # level 3
    _Kind("mul", 3, "mul", lambda: [(a, b) for a in _r(2, 9) for b in _r(2, 99)]
          + [(b, a) for a in _r(2, 9) for b in _r(10, 99)],
          lambda o, _: f"What is {o[0]} * {o[1]}?", _bin("*"), lambda o: f"{o[0]}*{o[1]}"),
    _Kind("word_give", 3, "word", lambda: ((a, b) for a in _r(5, 40) for b in _r(1, a - 1)),
          _give_prompt, _bin("-"), lambda o: f"{o[0]}-{o[1]}"),
    _Kind("word_buy", 3, "word", lambda: ((a, b) for a in _r(2, 40) for b in _r(2, 20)),
          _buy_prompt, _bin("+"), lambda o: f"{o[0]}+{o[1]}"),
    _Kind("word_share", 3, "word", lambda: ((k * q, k) for k in _r(2, 9) for q in _r(2, 12)),
          _share_prompt, _bin("/"), lambda o: f"{o[0]}/{o[1]}"),
    _Kind("word_rows", 3, "word", lambda: ((r, c) for r in _r(2, 9) for c in _r(2, 15)),
          _rows_prompt, _bin("*"), lambda o: f"{o[0]}*{o[1]}"),
    _Kind("word_price", 3, "word", lambda: ((p, n) for p in _r(2, 9) for n in _r(2, 15)),
          _price_prompt, lambda o: [("*", 1, 0)], lambda o: f"{o[1]}*{o[0]}"),
    # level 4
    _Kind("sum_times", 4, "sum_times",
          lambda: ((a, b, c) for a in _r(2, 20) for b in _r(2, 20) for c in _r(2, 9)),
          lambda o, _: f"What is ({o[0]} + {o[1]}) * {o[2]}?",
          lambda o: [("+", 0, 1), ("*", "r", 2)], lambda o: f"({o[0]}+{o[1]})*{o[2]}"),
    _Kind("times_minus", 4, "times_minus",
          lambda: ((a, b, c) for a in _r(2, 9) for b in _r(2, 20) for c in _r(1, min(a * b, 40))),
          lambda o, _: f"What is {o[0]} * {o[1]} - {o[2]}?",
          lambda o: [("*", 0, 1), ("-", "r", 2)], lambda o: f"{o[0]}*{o[1]}-{o[2]}"),
    _Kind("plus_times", 4, "plus_times",
          lambda: ((a, b, c) for a in _r(2, 30) for b in _r(2, 9) for c in _r(2, 20)),
          lambda o, _: f"What is {o[0]} + {o[1]} * {o[2]}?",
          lambda o: [("*", 1, 2), ("+", 0, "r")], lambda o: f"{o[0]}+{o[1]}*{o[2]}"),
    _Kind("diff_times", 4, "diff_times",
          lambda: ((a, b, c) for a in _r(5, 30) for b in _r(1, a - 2) for c in _r(2, 9)),
          lambda o, _: f"What is ({o[0]} - {o[1]}) * {o[2]}?",
          lambda o: [("-", 0, 1), ("*", "r", 2)], lambda o: f"({o[0]}-{o[1]})*{o[2]}"),
)
_KIND_BY_NAME = {k.name: k for k in _KINDS}


def _key(kind: str, operands: tuple[int, ...]) -> str:
    return kind + ":" + ",".join(map(str, operands))


def _hash_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _split_of(key: str) -> str:
    return "test" if _hash_int("split:" + key) % 1000 < int(TEST_FRACTION * 1000) else "train"


# ------------------------------------------------------------------------------------------
# One problem: prompt, worked steps, checks, wrong variants
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Problem:
    kind: _Kind
    operands: tuple[int, ...]

    @property
    def key(self) -> str:
        return _key(self.kind.name, self.operands)

    @property
    def prompt(self) -> str:
        return self.kind.prompt(self.operands, _word_rng(self.key))

    def run(self, slip_at: int | None = None) -> tuple[list[str], int, tuple[str, int, int]]:
        """Worked steps, the answer and the last operation ``(op, x, y)``; ``slip_at`` makes
        operation number ``slip_at`` drop its carries/borrows."""
        steps: list[str] = []
        prev = 0
        last: tuple[str, int, int] = ("+", 0, 0)
        for i, (op, xi, yi) in enumerate(self.kind.plan(self.operands)):
            x = prev if xi == "r" else self.operands[xi]
            y = prev if yi == "r" else self.operands[yi]
            text, prev = _STEPS[op](x, y, slip=(i == slip_at))
            steps.append(text)
            last = (op, x, y)
        return steps, prev, last

    def solution(self, n_checks: int, steps: list[str] | None = None,
                 answer: int | None = None) -> str:
        if steps is None or answer is None:
            steps, answer, last = self.run()
        else:
            last = self.run()[2]
        pool = _checks(last[0], last[1], last[2], _apply(*last))
        order = _word_rng("checks:" + self.key).sample(pool, len(pool))
        checks = [order[i % len(order)] if i < len(order)
                  else order[i % len(order)].replace("Check:", "Check again:")
                  for i in range(n_checks)]
        think = " ".join(steps + checks)
        return f"<think>{think}</think><answer>{answer}</answer>"

    def example(self, verbose_checks: tuple[int, int]) -> ReasoningExample:
        steps, answer, _ = self.run()
        lo, hi = verbose_checks
        n_checks = random.Random(f"nchecks:{self.key}:{lo}:{hi}").randint(lo, hi)
        metadata = {"kind": self.kind.name, "operands": list(self.operands),
                    "expression": self.kind.expression(self.operands), "num_checks": n_checks}
        return ReasoningExample(prompt=self.prompt, answer=str(answer),
                                solution=self.solution(n_checks, steps, answer),
                                difficulty=self.kind.difficulty, metadata=metadata)

    def wrong(self, rng: random.Random) -> tuple[str, str, int]:
        """A plausible wrong solution: ``(kind of error, solution text, wrong answer)``."""
        steps, answer, _ = self.run()
        options: list[tuple[str, list[str], int]] = []
        for i in range(len(self.kind.plan(self.operands))):
            s_steps, s_answer, _ = self.run(slip_at=i)
            if s_answer != answer:
                options.append(("carry_slip", s_steps, s_answer))
        if self.kind.name in _WRONG_OP:
            op = _WRONG_OP[self.kind.name]
            x, y = self.operands if self.kind.name != "word_price" else self.operands[::-1]
            if op != "-" or x >= y:
                text, value = _STEPS[op](x, y)
                if value != answer:
                    options.append(("wrong_operation", [text], value))
        delta = 1 if answer == 0 else rng.choice((-1, 1))
        off = answer + delta
        off_steps = steps[:-1] + [re.sub(r"\d+\.$", f"{off}.", steps[-1])]
        options.append(("off_by_one", off_steps, off))
        kind, w_steps, w_answer = rng.choice(options)
        think = " ".join(w_steps)
        return kind, f"<think>{think}</think><answer>{w_answer}</answer>", w_answer


_WRONG_OP = {"word_give": "+", "word_buy": "-", "word_rows": "+", "word_price": "+"}


# ------------------------------------------------------------------------------------------
# Selection
# ------------------------------------------------------------------------------------------


def _round_robin(iterables: Sequence[Iterable[Any]]) -> Iterator[Any]:
    iters = [iter(it) for it in iterables]
    while iters:
        alive = []
        for it in iters:
            try:
                yield next(it)
            except StopIteration:
                continue
            alive.append(it)
        iters = alive


def _check_args(split: str, difficulty: Any, size: Any, seed: Any) -> tuple[int, ...]:
    if split not in _SPLITS:
        raise ValueError(f"split: unknown {split!r}; accepted: train, test")
    if difficulty is None:
        levels: tuple[int, ...] = DIFFICULTIES
    else:
        raw = [difficulty] if isinstance(difficulty, int) else list(difficulty)
        for d in raw:
            if isinstance(d, bool) or d not in DIFFICULTIES:
                raise ValueError(f"difficulty: unknown level {d!r}; accepted: "
                                 f"{', '.join(map(str, DIFFICULTIES))}")
        levels = tuple(sorted(set(raw)))
        if not levels:
            raise ValueError("difficulty: must name at least one level (or be None for all)")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ValueError(f"size: must be None or an int >= 0, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: must be an int, got {seed!r}")
    return levels


@cache
def _split_space(kind: str, split: str) -> tuple[tuple[int, ...], ...]:
    """Operands of every problem of ``kind`` in ``split`` (cached: independent of the seed)."""
    return tuple(o for o in map(tuple, _KIND_BY_NAME[kind].space())
                 if _split_of(_key(kind, o)) == split)


def _problems(split: str, levels: tuple[int, ...], size: int | None,
              seed: int) -> list[_Problem]:
    per_level = []
    for level in levels:
        groups: dict[str, list[list[_Problem]]] = {}
        for kind in _KINDS:
            if kind.difficulty != level:
                continue
            items = [_Problem(kind, o) for o in _split_space(kind.name, split)]
            random.Random(f"order:{seed}:{kind.name}").shuffle(items)
            groups.setdefault(kind.group, []).append(items)
        stream = _round_robin([_round_robin(g) for g in groups.values()])
        cap = DEFAULT_PER_DIFFICULTY[split] if size is None else size
        per_level.append([p for _, p in zip(range(cap), stream)])
    out = list(_round_robin(per_level))
    return out if size is None else out[:size]


def arithmetic_dataset(split: str = "train", *, difficulty: Sequence[int] | int | None = None,
                       size: int | None = None, seed: int = 0,
                       verbose_checks: tuple[int, int] = (0, 3)) -> list[ReasoningExample]:
    """Generated arithmetic / word problems with exact integer answers (module docstring).

    Args:
        split: ``"train"`` or ``"test"`` (disjoint by problem text, fixed for every seed).
        difficulty: levels to include (1–4; an int for one level), ``None`` for all.
        size: total number of examples; ``None`` takes :data:`DEFAULT_PER_DIFFICULTY`
            (train 1500, test 150) per level, or all of a smaller level.
        seed: chooses which problems are drawn and their order (deterministic).
        verbose_checks: ``(lo, hi)``; each solution ends with a number of redundant
            ``Check: … Yes.`` sentences drawn uniformly from ``lo..hi`` inclusive.

    Each example has ``metadata`` ``kind``, ``operands`` (in prompt order), ``expression`` (ASCII,
    e.g. ``"(12+7)*4"``) and ``num_checks``.
    """
    levels = _check_args(split, difficulty, size, seed)
    if (not isinstance(verbose_checks, (tuple, list)) or len(verbose_checks) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in verbose_checks)
            or not 0 <= verbose_checks[0] <= verbose_checks[1]):
        raise ValueError(f"verbose_checks: must be (lo, hi) ints with 0 <= lo <= hi, got "
                         f"{verbose_checks!r}")
    checks = (int(verbose_checks[0]), int(verbose_checks[1]))
    return [p.example(checks) for p in _problems(split, levels, size, seed)]


def arithmetic_pairs(split: str = "train", *, difficulty: Sequence[int] | int | None = None,
                     size: int | None = None, seed: int = 0,
                     verbose_fraction: float = 0.2) -> list[PreferencePair]:
    """Preference pairs on the problems of :func:`arithmetic_dataset` (same arguments).

    ``chosen`` is the concise correct solution (no checks).  ``rejected`` is a plausible wrong
    solution (``metadata["rejected_kind"]``: ``"carry_slip"``, ``"off_by_one"`` or
    ``"wrong_operation"``), or, for a share ``verbose_fraction`` of the pairs, the correct
    solution with 5–7 redundant checks (``"verbose"``).  ``metadata`` also holds ``answer``,
    ``rejected_answer``, ``difficulty`` and the problem's ``kind``/``operands``/``expression``.
    """
    levels = _check_args(split, difficulty, size, seed)
    if isinstance(verbose_fraction, bool) or not isinstance(verbose_fraction, (int, float)) \
            or not 0.0 <= verbose_fraction <= 1.0:
        raise ValueError(f"verbose_fraction: must be a number in [0, 1], got "
                         f"{verbose_fraction!r}")
    pairs = []
    for p in _problems(split, levels, size, seed):
        steps, answer, _ = p.run()
        chosen = p.solution(0, steps, answer)
        rng = random.Random(f"pair:{seed}:{p.key}")
        if rng.random() < verbose_fraction:
            kind, rejected, r_answer = "verbose", p.solution(rng.randint(5, 7), steps,
                                                             answer), answer
        else:
            kind, rejected, r_answer = p.wrong(rng)
        pairs.append(PreferencePair(
            prompt=p.prompt, chosen=chosen, rejected=rejected,
            metadata={"answer": str(answer), "rejected_answer": str(r_answer),
                      "rejected_kind": kind, "difficulty": p.kind.difficulty,
                      "kind": p.kind.name, "operands": list(p.operands),
                      "expression": p.kind.expression(p.operands)}))
    return pairs
