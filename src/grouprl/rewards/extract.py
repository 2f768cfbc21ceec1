"""Answer extraction and Hendrycks-MATH normalisation for verifiable rewards (spec §C2–§C4).

Pure string functions, standard library only. Every scanner here runs in linear time: the brace
matcher walks the text once, and the few regular expressions have no nested quantifiers, so a
model that emits 100k unmatched braces or ``\\boxed{`` repeated costs one pass, not a hang.

* :func:`last_boxed` — the last ``\\boxed{…}`` / ``\\fbox{…}`` (verl ``math_dapo``
  ``last_boxed_only_string``; Hendrycks MATH also accepts the ``\\boxed 5`` space form).
* :func:`split_think` — R1-distill responses: score only the text after the first ``</think>``
  (DLER, DRPO, DOT, LASER; spec §C4).
* :func:`extract_answer_tag` — R1-Zero ``<answer>…</answer>`` (open-r1).
* :func:`extract_gsm8k` / :func:`gsm8k_gold` — verl's GSM8K scorer (spec §C3).
* :func:`normalize_answer` — Hendrycks MATH ``strip_string`` as used by DeepScaleR and verl.
* :func:`extract_prediction` — the answer string for a verifier ``mode``.
"""

from __future__ import annotations

import re

__all__ = [
    "MODES",
    "last_boxed",
    "split_think",
    "extract_answer_tag",
    "extract_gsm8k",
    "gsm8k_gold",
    "normalize_answer",
    "extract_prediction",
]

MODES = ("boxed", "answer_tag", "gsm8k", "free")
"""Accepted ``mode`` values of :func:`extract_prediction` (and of the verifier)."""

GSM8K_CLIP_CHARS = 300
"""verl GSM8K strict extraction scans only the last 300 characters (``_SOLUTION_CLIP_CHARS``)."""

# ``\boxed`` or ``\fbox`` as a whole control word (not ``\boxedfoo``).
_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_GSM8K_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_GSM8K_NUMBER = re.compile(r"(\-?[0-9\.\,]+)")


def _match_braces(text: str, open_idx: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_idx``; ``None`` if unbalanced.

    A backslash escapes the next character, so ``\\{`` and ``\\}`` (literal braces in LaTeX)
    do not count. One forward pass: linear in the length of the text.
    """
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` or ``\\fbox{…}`` in ``text``, or ``None``.

    Rule (verl ``math_dapo.last_boxed_only_string``, Hendrycks MATH ``last_boxed_only_string``):
    take the *last* occurrence of the command and match braces from its ``{`` (nested braces are
    fine). ``\\boxed 5`` (a space, then one token) gives the token up to the next whitespace or
    ``$``. The last occurrence decides: if it is unbalanced (a truncated answer) the result is
    ``None`` even when an earlier box is complete, as in verl. Runs in linear time.
    """
    last = None
    for last in _BOX_CMD.finditer(text):  # noqa: B007 - only the last match is wanted
        pass
    if last is None:
        return None
    i = last.end()
    n = len(text)
    j = i
    while j < n and text[j] in " \t":
        j += 1
    if j < n and text[j] == "{":
        close = _match_braces(text, j)
        return None if close is None else text[j + 1 : close]
    if j == i or j >= n:  # ``\boxed5``, ``\boxed}`` or a trailing ``\boxed``: no argument
        return None
    k = j
    while k < n and not text[k].isspace() and text[k] != "$":
        k += 1
    return text[j:k] or None


def split_think(text: str, close_tag: str = "</think>") -> tuple[str | None, str]:
    """``(think, after)`` split at the *first* ``close_tag``.

    ``think`` is the text before the tag with surrounding whitespace and one leading ``<think>``
    removed; ``after`` is the raw text after the tag. Without a close tag ``think`` is ``None``
    and ``after`` is the whole text (R1-distill convention, spec §C4: the chat template already
    opened ``<think>``, so only the response's ``</think>`` matters).
    """
    idx = text.find(close_tag)
    if idx < 0:
        return None, text
    think = text[:idx].strip()
    if think.startswith("<think>"):
        think = think[len("<think>"):].strip()
    return think, text[idx + len(close_tag):]


def extract_answer_tag(text: str, tag: str = "answer") -> str | None:
    """Stripped content of the first ``<tag>…</tag>`` (open-r1 / R1-Zero format), or ``None``."""
    open_tag, close_tag = f"<{tag}>", f"</{tag}>"
    start = text.find(open_tag)
    if start < 0:
        return None
    start += len(open_tag)
    end = text.find(close_tag, start)
    if end < 0:
        return None
    return text[start:end].strip()


def extract_gsm8k(text: str, mode: str = "strict") -> str | None:
    """GSM8K answer by verl's ``gsm8k.extract_solution`` rules (spec §C3).

    * ``"strict"``: the last ``#### <number>`` (regex ``#### -?[0-9.,]+``) within the last
      :data:`GSM8K_CLIP_CHARS` characters, commas removed.
    * ``"flexible"``: the last number anywhere in the text (regex ``-?[0-9.,]+``), commas and
      ``$`` removed. verl skips a lone ``"."``; here any match without a digit (``"."``, ``","``,
      ``"..."``) is skipped, since it cannot equal a numeric gold anyway.
    """
    if mode == "strict":
        found = _GSM8K_STRICT.findall(text[-GSM8K_CLIP_CHARS:])
        return found[-1].replace(",", "").replace("$", "") if found else None
    if mode == "flexible":
        for cand in reversed(_GSM8K_NUMBER.findall(text)):
            if any(ch.isdigit() for ch in cand):
                return cand.replace(",", "").replace("$", "")
        return None
    raise ValueError(f"extract_gsm8k: mode must be one of ('strict', 'flexible'), got {mode!r}")


def gsm8k_gold(answer_field: str) -> str:
    """Gold number of a GSM8K ``answer`` field: the text after the last ``####``, stripped, with
    ``,`` and ``$`` removed (the rationale's ``<<48/2=24>>`` annotations come before it)."""
    tail = answer_field.rsplit("####", 1)[-1]
    return tail.strip().replace(",", "").replace("$", "")


# ---------------------------------------------------------------------------------------------
# Hendrycks-MATH normalisation
# ---------------------------------------------------------------------------------------------

_TEXT_UNIT_TAIL = re.compile(r"\\(?:text|mbox|mathrm)\{[^{}]*\}(?:\^\{?[0-9]\}?)?$")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mbox|mathrm|mathbf)\{([^{}]*)\}")
_SQRT_SHORT = re.compile(r"\\sqrt([^{\[\\\s])")
_SINGLE_VAR_EQ = re.compile(r"^(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?[A-Za-z0-9]+\}?)?=(?!=)")
_INT = re.compile(r"^-?[0-9]+$")
_THOUSANDS = re.compile(r"^-?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?$")
_TRAILING_ZEROS = re.compile(r"^(-?[0-9]+)\.0*$")
_CHOICE = re.compile(r"^\(([A-Z])\)$")


def _brace_table(s: str) -> dict[int, int]:
    """``{open index: close index}`` for every balanced brace pair, in one stack pass.

    Backslash-escaped braces do not count (see :func:`_match_braces`)."""
    table: dict[int, int] = {}
    stack: list[int] = []
    i = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            table[stack.pop()] = i
        i += 1
    return table


def _fix_fracs(s: str) -> str:
    """``\\frac12`` → ``\\frac{1}{2}``, ``\\frac1{72}`` → ``\\frac{1}{72}``, ``\\frac{a}b`` →
    ``\\frac{a}{b}``: both arguments of every ``\\frac`` in braces (Hendrycks ``_fix_fracs``,
    generalised to a braced first argument and to nested fractions). A ``\\frac`` with a
    missing or unbalanced argument is left as it is. Linear time (one brace table)."""
    if "\\frac" not in s:
        return s
    table = _brace_table(s)
    wrap: list[int] = []  # positions of single-character arguments to put in braces
    n = len(s)
    j = s.find("\\frac")
    while j >= 0:
        k = j + 5
        found: list[int] = []
        for _ in range(2):
            if k < n and s[k] == "{" and k in table:
                k = table[k] + 1
            elif k < n and s[k] not in "{}\\ ":
                found.append(k)
                k += 1
            else:
                found = []
                break
        else:
            wrap.extend(found)
        j = s.find("\\frac", j + 5)
    if not wrap:
        return s
    out: list[str] = []
    prev = 0
    for pos in sorted(set(wrap)):
        out.append(s[prev:pos])
        out.append("{" + s[pos] + "}")
        prev = pos + 1
    out.append(s[prev:])
    return "".join(out)


def _fix_a_slash_b(s: str) -> str:
    """``a/b`` with integers a, b → ``\\frac{a}{b}`` (Hendrycks ``_fix_a_slash_b``)."""
    parts = s.split("/")
    if len(parts) == 2 and _INT.match(parts[0]) and _INT.match(parts[1]):
        return "\\frac{" + parts[0] + "}{" + parts[1] + "}"
    return s


def _strip_math_delimiters(s: str) -> str:
    s = s.strip()
    for left, right in (("\\[", "\\]"), ("\\(", "\\)")):
        if s.startswith(left) and s.endswith(right) and len(s) >= 4:
            s = s[2:-2].strip()
    return s.strip("$").strip()


def normalize_answer(s: str) -> str:
    """Hendrycks-MATH style normal form of a final answer (spec §C2; MATH ``strip_string`` as
    used by DeepScaleR and verl ``math``), so that string equality means "same answer".

    In order: surrounding ``$``/``\\(``/``\\[`` delimiters and newlines go; ``\\!``, ``\\,``,
    ``\\;``, ``~``, ``\\ `` spacing goes; ``tfrac``/``dfrac`` → ``frac``; ``\\left``/``\\right``
    go; degree marks (``^\\circ``, ``^{\\circ}``, ``°``) and currency ``\\$`` go; a trailing
    ``\\text{…}`` unit goes (when something precedes it) and other ``\\text{X}`` become ``X``;
    ``\\%`` and ``%`` go; ``{,}`` thousands separators go and ``1,000`` → ``1000``; a single
    variable on the left (``x = 4``, ``k=4``) goes; ``.5`` → ``0.5``; ``\\sqrt2`` → ``\\sqrt{2}``;
    spaces go; ``\\frac12`` → ``\\frac{1}{2}``; ``0.5`` → ``\\frac{1}{2}``; integer ``a/b`` →
    ``\\frac{a}{b}``; ``5.0``/``5.`` → ``5``; a lettered choice ``(A)`` → ``A``. Unicode minus
    ``−`` becomes ``-``. Linear time.
    """
    s = _strip_math_delimiters(str(s).replace("\n", " ").replace("\u2212", "-"))
    s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\:", "")
    s = s.replace("\\ ", " ").replace("~", " ").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("°", "")
    s = s.replace("\\$", "").replace("$", "")
    unitless = _TEXT_UNIT_TAIL.sub("", s.strip()).strip()
    if unitless and unitless != s.strip():
        s = unitless
    s = _TEXT_WRAP.sub(r"\1", s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace("{,}", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    s = s.strip().rstrip(".").strip()
    s = s.replace(" ", "")
    if not s:
        return s
    if s.count("=") == 1:
        s = _SINGLE_VAR_EQ.sub("", s, count=1)
    if s.startswith("."):
        s = "0" + s
    elif s.startswith("-."):
        s = "-0" + s[1:]
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    s = _fix_fracs(s)
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    m = _TRAILING_ZEROS.match(s)
    if m:
        s = m.group(1)
    if s == "0.5":
        s = "\\frac{1}{2}"
    s = _fix_a_slash_b(s)
    m = _CHOICE.match(s)
    if m:
        s = m.group(1)
    return s


# ---------------------------------------------------------------------------------------------
# Prediction by mode
# ---------------------------------------------------------------------------------------------


def extract_prediction(response: str, mode: str) -> str | None:
    """The answer string a verifier compares with the gold, by ``mode`` (spec §C1 pitfall, §C4).

    The search region is the text after the first ``</think>`` when the response has one, else
    the whole response, so an answer written inside the reasoning never counts.

    * ``"boxed"``: :func:`last_boxed` of the region (DLER, DRPO, DOT, DeepScaleR).
    * ``"answer_tag"``: content of the first ``<answer>…</answer>`` in the region; when that
      content holds a box, the box's content.
    * ``"gsm8k"``: :func:`extract_gsm8k` strict only (``#### <number>`` near the end). There is
      deliberately no fallback to the flexible "last number" rule: for a reward that would pay
      for any trailing number; use ``"free"`` for lenient evaluation.
    * ``"free"``: last box, else answer tag, else GSM8K flexible (last number).

    Returns ``None`` when nothing is found; an empty box or tag also gives ``None``.
    """
    if mode not in MODES:
        raise ValueError(f"extract_prediction: mode must be one of {MODES}, got {mode!r}")
    _, region = split_think(response)
    if mode == "boxed":
        pred = last_boxed(region)
    elif mode == "answer_tag":
        pred = extract_answer_tag(region)
        if pred is not None:
            boxed = last_boxed(pred)
            pred = pred if boxed is None else boxed
    elif mode == "gsm8k":
        pred = extract_gsm8k(region, "strict")
    else:
        pred = last_boxed(region)
        if pred is None:
            pred = extract_answer_tag(region)
        if pred is None:
            pred = extract_gsm8k(region, "flexible")
    if pred is None:
        return None
    pred = pred.strip()
    return pred or None
