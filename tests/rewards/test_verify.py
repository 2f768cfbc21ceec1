"""Answer verification (grouprl.rewards.verify, spec §C1–§C3, §C6)."""

from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys
import threading
import time

import pytest

import grouprl.rewards.verify as verify_mod
from grouprl.rewards.verifier import Verifier, close_isolated_verifiers
from grouprl.rewards.verify import REASONS, VerifyResult, builtin_equal, verify_answer
from testing_utils import alive

# find_spec, not an import: worker processes import this module to unpickle ``flaky_check``
needs_mv = pytest.mark.skipif(importlib.util.find_spec("math_verify") is None,
                              reason="math-verify not installed")

# ---------------------------------------------------------------------------------------------
# The spec §C1 behaviour table
# ---------------------------------------------------------------------------------------------

# (gold, response, mode, math-verify correct, math-verify pred, builtin correct or None = n/a)
C1_TABLE = [
    (r"\boxed{\frac{1}{2}}", r"The answer is \boxed{0.5}.", "boxed", True, "0.5", True),
    (r"$\frac{1}{2}$", r"\boxed{\dfrac12}", "boxed", True, r"\dfrac12", True),
    ("72", "... 48+24 = 72. #### 72", "gsm8k", True, "72", True),
    (r"$(1,2)$", r"\boxed{1<x<2}", "boxed", False, "1<x<2", False),
    (r"$1<x<2$", r"\boxed{(1,2)}", "boxed", True, "(1,2)", None),
    (r"$\{1,3\}\cup\{2,4\}$", r"$\{1,2,3,4\}$", "free", True, r"\{1,2,3,4\}", None),
    (r"$10\%$", r"\boxed{0.1}", "boxed", True, "0.1", None),
    (r"$2\sqrt{2}$", r"\boxed{\sqrt{8}}", "boxed", True, r"\sqrt{8}", True),
    (r"$1000$", r"\boxed{1{,}000}", "boxed", True, "1{,}000", True),
    (r"$4$", r"\boxed{x=4}", "boxed", True, "x=4", True),
    (r"$\frac12$", "The answer is 1/2", "boxed", False, None, False),   # a box is required
]


@needs_mv
@pytest.mark.parametrize("gold, response, mode, correct, pred, _builtin", C1_TABLE)
def test_c1_table_math_verify(gold, response, mode, correct, pred, _builtin):
    result = verify_answer(response, gold, mode=mode, backend="math_verify")
    assert (result.correct, result.pred) == (correct, pred)
    assert result.reason == ("ok" if correct else ("no_answer" if pred is None else "wrong"))


@pytest.mark.parametrize("gold, response, mode, _correct, pred, builtin",
                         [row for row in C1_TABLE if row[5] is not None])
def test_c1_table_builtin(gold, response, mode, _correct, pred, builtin):
    result = verify_answer(response, gold, mode=mode, backend="builtin")
    assert (result.correct, result.pred) == (builtin, pred)


@needs_mv
@pytest.mark.parametrize("response, pred", [
    (r"<think>\boxed{5}</think> so \boxed{3}", "3"),
    ("The answer is 3. Wait, actually the answer is 4.", "4"),
    ("Final answer: 4. Earlier I said the answer is 3", "3"),   # last anchor, not semantics
])
def test_c1_free_text_extraction(response, pred):
    assert verify_answer(response, pred, mode="free", backend="math_verify") == VerifyResult(
        True, pred, pred, "ok")


@needs_mv
def test_math_verify_argument_order():
    # gold interval vs predicted inequality is rejected; the reverse is accepted (§C1 pitfall):
    # swapping gold and prediction in verify() would let a model echo the inequality.
    assert verify_answer(r"\boxed{1<x<2}", "(1,2)", backend="math_verify").correct is False
    assert verify_answer(r"\boxed{(1,2)}", "1<x<2", backend="math_verify").correct is True
    # and a bare gold is wrapped in $…$: unwrapped, math-verify would read "1<x<2" as 1
    assert verify_answer(r"\boxed{1}", "1<x<2", backend="math_verify").correct is False


# ---------------------------------------------------------------------------------------------
# More answers, both backends
# ---------------------------------------------------------------------------------------------

GSM8K_GOLD = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
              "<<48+24=72>>72 clips altogether in April and May.\n#### 72")

# (response, gold, mode, correct, reason) — the same for builtin and math-verify
SHARED = [
    ("so 48+24=72\n#### 72", GSM8K_GOLD, "gsm8k", True, "ok"),             # rationale gold
    ("so 48/2=24\n#### 24", GSM8K_GOLD, "gsm8k", False, "wrong"),          # not the <<…>> 24
    ("#### 1,000", "1000", "gsm8k", True, "ok"),
    ("#### -3", "-3", "gsm8k", True, "ok"),
    (r"\boxed{-3}", "3", "boxed", False, "wrong"),
    (r"\boxed{-0}", "0", "boxed", True, "ok"),
    (r"\boxed{1,000}", "1000", "boxed", True, "ok"),
    (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{\sqrt{2}}{2}", "boxed", True, "ok"),
    (r"\boxed{10\%}", "10", "boxed", True, "ok"),
    (r"\boxed{x = 4}", "4", "boxed", True, "ok"),
    (r"\boxed{18 \text{ dollars}}", "18", "boxed", True, "ok"),
    (r"\boxed{\text{(B)}}", "B", "boxed", True, "ok"),
    (r"\boxed{A}", "B", "boxed", False, "wrong"),
    (r"\boxed{(A)}", r"\text{(A)}", "boxed", True, "ok"),
    (r"<think>it is \boxed{5}</think>I am sure.", "5", "boxed", False, "no_answer"),
    (r"<think>Q: 2+2? A: \boxed{4}</think>\boxed{5}", "4", "boxed", False, "wrong"),  # echo
    (r"\boxed{7} and then \boxed{", "7", "boxed", False, "no_answer"),       # truncated
    ("<think>x</think><answer>\n0.5\n</answer>", r"\frac{1}{2}", "answer_tag", True, "ok"),
    (r"<answer>so \boxed{12}</answer>", "12", "answer_tag", True, "ok"),
    (r"\boxed{2} and \boxed{\sqrt{8}}", r"\boxed{2\sqrt{2}}", "boxed", True, "ok"),  # MATH gold
]
BACKENDS = ["builtin", pytest.param("math_verify", marks=needs_mv),
            pytest.param("combined", marks=needs_mv)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("response, gold, mode, correct, reason", SHARED)
def test_answers(response, gold, mode, correct, reason, backend):
    result = verify_answer(response, gold, mode=mode, backend=backend)
    assert (result.correct, result.reason) == (correct, reason)


@pytest.mark.parametrize("a, b, equal", [
    ("0.5", "1/2", True),
    (r"\frac{1}{2}", "0.50", True),
    ("-0", "0", True),
    ("3.0", "3", True),
    (r"1{,}000", "1000", True),
    (r"2\sqrt{2}", r"\sqrt{8}", True),
    (r"2\pi", r"\pi\cdot2", True),
    ("2^{10}", "1024", True),
    ("A", "A", True),
    ("A", "a", False),
    ("(1,2)", "1<x<2", False),
    ("1/3", "0.333", False),
    ("", "", False),
])
def test_builtin_equal(a, b, equal):
    assert builtin_equal(a, b) is equal
    assert builtin_equal(b, a) is equal


def test_builtin_refuses_huge_powers():
    start = time.monotonic()
    assert builtin_equal("9^{9^{9^{9}}}", "1") is False
    assert builtin_equal("2^{100000}", "1") is False
    assert time.monotonic() - start < 5.0


@needs_mv
def test_combined_is_math_verify_or_builtin():
    # math-verify's reward config does not drop "\," or a trailing "."; Hendrycks does
    for response, gold in ((r"\boxed{3\,000}", "3000"), (r"\boxed{5.}", "5")):
        assert verify_answer(response, gold, backend="math_verify").correct is False
        assert verify_answer(response, gold, backend="builtin").correct is True
        assert verify_answer(response, gold, backend="combined").correct is True
    # and math-verify's interval/inequality reading, which builtin lacks
    assert verify_answer(r"\boxed{(1,2)}", "1<x<2", backend="combined").correct is True


# ---------------------------------------------------------------------------------------------
# Adversarial output, gold problems, format, errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["boxed", "free", "answer_tag", "gsm8k"])
def test_unbalanced_braces_are_no_answer(mode, backend):
    result = verify_answer("{" * 200_000, "3", mode=mode, backend=backend)
    assert result.correct is False and result.reason == "no_answer"
    result = verify_answer("\\boxed{" * 30_000 + "3", "3", mode="boxed", backend=backend)
    assert result.correct is False and result.reason == "no_answer"


@pytest.mark.parametrize("backend", BACKENDS)
def test_code_in_answer_is_never_executed(tmp_path, backend):
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    responses = [
        (rf"\boxed{{{code}}}", "boxed"),
        (f"The answer is {code}", "free"),
        (f"$ {code} $", "free"),
        (f"<answer>{code}</answer>", "answer_tag"),
        (f"<answer>1+{code}</answer>", "answer_tag"),
    ]
    for response, mode in responses:
        result = verify_answer(response, "x+y", mode=mode, backend=backend)
        assert result.correct is False
        result = verify_answer(response, code, mode=mode, backend=backend)  # as the gold too
        assert result.correct is not None or result.reason == "unparsable_gold"
    assert not marker.exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_unparsable_gold_is_none(backend):
    result = verify_answer(r"\boxed{1}", r"\text{}", backend=backend)
    assert result == VerifyResult(None, None, r"\text{}", "unparsable_gold")
    assert verify_answer(r"\boxed{1}", "  ", backend=backend).correct is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_require_think_close(backend):
    response = r"I keep thinking... \boxed{4}"
    assert verify_answer(response, "4", backend=backend).correct is True
    result = verify_answer(response, "4", backend=backend, require_think_close=True)
    assert result == VerifyResult(False, None, "4", "no_think_close")
    closed = r"I thought.</think> \boxed{4}"
    assert verify_answer(closed, "4", backend=backend, require_think_close=True).reason == "ok"


def test_any_exception_is_reason_error(monkeypatch):
    def boom(response, mode):
        raise RuntimeError("parser bug")

    monkeypatch.setattr(verify_mod, "extract_prediction", boom)
    assert verify_answer(r"\boxed{4}", "4", backend="builtin") == VerifyResult(
        False, None, "4", "error")


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="mode"):
        verify_answer("x", "1", mode="latex")
    with pytest.raises(ValueError, match="backend"):
        verify_answer("x", "1", backend="sympy")
    with pytest.raises(ValueError, match="workers"):
        Verifier(workers=-1)
    with pytest.raises(ValueError, match="top-level"):
        Verifier(workers=1, fn=lambda r, g: VerifyResult(True, r, g, "ok"))


def test_missing_math_verify_message(monkeypatch):
    def no_module(name):
        raise ModuleNotFoundError(f"No module named '{name}'", name=name)

    monkeypatch.setattr(verify_mod.importlib, "import_module", no_module)
    with pytest.raises(ImportError) as info:
        verify_mod._require_math_verify()
    assert str(info.value) == "math-verify is not installed: pip install 'grouprl[math]'"


HARD_INTEGRAL = r"\boxed{\int_0^1 e^{-x^{2}} \sin(x^{7}) dx}"   # sympy cannot do this quickly


@needs_mv
def test_math_verify_own_timeout_in_process():
    # math-verify's signal timeout stops sympy (main thread) and returns an empty parse / False,
    # which verify_answer reports as a timeout. Run in a fresh interpreter: in the test process
    # hypothesis installs gc callbacks, and SIGALRM's exception raised inside one is swallowed
    # (the best-effort nature the module docstring warns about); the subprocess deadline keeps a
    # regression from hanging the suite.
    code = ("from grouprl.rewards.verify import verify_answer\n"
            f"r = verify_answer({HARD_INTEGRAL!r}, '1', backend='math_verify', timeout_s=1)\n"
            "print(r.correct, r.reason)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "timeout"]


@needs_mv
def test_isolated_verifier_bounds_a_hard_integral():
    # the training path: our own wall-clock deadline, whatever the worker's signal handling does
    with Verifier(backend="math_verify", workers=1, timeout_s=2.0) as verifier:
        assert verifier(HARD_INTEGRAL, "1") == VerifyResult(False, None, "1", "timeout")
        assert verifier(r"\boxed{2}", "2").correct is True
        assert verifier.stats["timeouts"] == 1


@needs_mv
def test_math_verify_in_a_thread():
    # signal.alarm only works in the main thread: the timeout must be switched off there
    out: list[VerifyResult] = []
    thread = threading.Thread(
        target=lambda: out.append(verify_answer(r"\boxed{0.5}", r"\frac12", backend="math_verify")))
    thread.start()
    thread.join()
    assert out == [VerifyResult(True, "0.5", r"\frac12", "ok")]


def test_reasons_are_documented():
    assert set(REASONS) == {"ok", "wrong", "no_answer", "no_think_close", "unparsable_gold",
                            "timeout", "error"}


# ---------------------------------------------------------------------------------------------
# Verifier: in-process and worker pool
# ---------------------------------------------------------------------------------------------


def flaky_check(response: str, gold: str) -> VerifyResult:
    """Top-level (picklable) check that hangs, crashes or raises on request."""
    if response == "hang":
        time.sleep(60)
    elif response == "crash":
        os._exit(1)
    elif response == "raise":
        raise RuntimeError("check failed")
    return verify_answer(response, gold, mode="boxed", backend="builtin")


@pytest.fixture(scope="module")
def flaky_pool():
    with Verifier(workers=2, timeout_s=1.0, fn=flaky_check) as verifier:
        yield verifier


def test_in_process_verifier_counts():
    verifier = Verifier(backend="builtin")
    results = verifier.verify_batch([r"\boxed{4}", r"\boxed{5}", "none", r"\boxed{1}"],
                                    ["4", "4", "4", r"\text{}"])
    assert [r.reason for r in results] == ["ok", "wrong", "no_answer", "unparsable_gold"]
    assert verifier.stats["calls"] == 4 and verifier.stats["unparsable_gold"] == 1
    in_process = Verifier(fn=flaky_check)
    assert in_process("raise", "1") == VerifyResult(False, None, "1", "error")
    assert in_process.stats["errors"] == 1


def test_pool_timeout_is_reward_zero_and_pool_recovers(flaky_pool):
    before = dict(flaky_pool.stats)
    start = time.monotonic()
    result = flaky_pool("hang", "3")
    assert time.monotonic() - start < 10.0
    assert result == VerifyResult(False, None, "3", "timeout")
    assert flaky_pool.stats["timeouts"] == before["timeouts"] + 1
    assert flaky_pool(r"\boxed{3}", "3") == VerifyResult(True, "3", "3", "ok")
    assert flaky_pool.stats["worker_restarts"] == before["worker_restarts"] + 1


def test_pool_crash_and_exception_are_errors(flaky_pool):
    before = flaky_pool.stats["errors"]
    assert flaky_pool("crash", "3") == VerifyResult(False, None, "3", "error")
    assert flaky_pool("raise", "3") == VerifyResult(False, None, "3", "error")
    assert flaky_pool.stats["errors"] == before + 2
    assert flaky_pool(r"\boxed{4}", "3").reason == "wrong"


def test_pool_batch_mixes_failures_with_results(flaky_pool):
    responses = [r"\boxed{3}", "hang", "crash", r"\boxed{4}", r"\boxed{3}", "raise", r"\boxed{3}"]
    results = flaky_pool.verify_batch(responses, ["3"] * len(responses))
    assert [r.reason for r in results] == ["ok", "timeout", "error", "wrong", "ok", "error", "ok"]


def test_pickled_verifier_drops_workers_and_restarts(flaky_pool):
    flaky_pool(r"\boxed{1}", "1")  # workers are live
    copy = pickle.loads(pickle.dumps(flaky_pool))
    assert copy._pool is None and copy.stats == flaky_pool.stats
    with copy:
        assert copy(r"\boxed{2}", "2").reason == "ok"
        pids = copy._pool.pids
        assert len(pids) == 2 and all(alive(p) for p in pids)
        assert copy._pool is not flaky_pool._pool and not set(pids) & set(flaky_pool._pool.pids)
    assert copy._pool is None and not any(alive(p) for p in pids)  # reaped: no zombie either


@needs_mv
def test_pool_batch_equals_serial_verify_answer():
    rows = [(response, gold) for response, gold, mode, *_ in SHARED if mode == "boxed"]
    rows += [(response, gold) for gold, response, mode, *_ in C1_TABLE if mode == "boxed"]
    serial = [verify_answer(r, g, mode="boxed", backend="math_verify") for r, g in rows]
    with Verifier(mode="boxed", backend="math_verify", workers=2, timeout_s=20.0) as pool:
        assert pool.verify_batch([r for r, _ in rows], [g for _, g in rows]) == serial
        assert pool.stats["calls"] == len(rows) and pool.stats["timeouts"] == 0


# ---------------------------------------------------------------------------------------------
# Isolated verifiers: never in this process, worker processes shared, deadline per call
# ---------------------------------------------------------------------------------------------


def pid_check(response: str, gold: str) -> VerifyResult:
    """Top-level check that reports the process it ran in (``pred``) and hangs on request."""
    if response == "hang":
        time.sleep(60)
    return VerifyResult(True, str(os.getpid()), gold, "ok")


def test_isolated_verifier_checks_in_shared_worker_processes_with_a_deadline():
    close_isolated_verifiers()
    try:
        first = Verifier(fn=pid_check, timeout_s=1.0)
        assert first("x", "1").pred == str(os.getpid())  # in-process until isolated
        first.isolate()
        second = Verifier(fn=pid_check, timeout_s=1.0, isolated=True)
        worker = first("x", "1").pred
        assert worker != str(os.getpid())
        assert second("x", "1").pred == worker  # the same settings share the worker
        # threads (a thread backend's envs) each get a worker; a hang holds up only its own
        results: dict[str, VerifyResult] = {}
        calls = [("hang", Verifier(fn=pid_check, timeout_s=1.0, isolated=True)),
                 ("a", first), ("b", second)]
        threads = [threading.Thread(target=lambda r=r, v=v: results.update({r: v(r, "2")}))
                   for r, v in calls]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30.0)
        assert time.monotonic() - start < 30.0
        assert results["hang"] == VerifyResult(False, None, "2", "timeout")
        assert results["a"].reason == results["b"].reason == "ok"
        assert calls[0][1].stats["timeouts"] == 1 and calls[0][1].stats["worker_restarts"] == 1
        assert str(os.getpid()) not in (results["a"].pred, results["b"].pred)
        assert first.stats["calls"] == 3 and second.stats["calls"] == 2
        first.close()  # the shared workers stay for the other isolated verifiers
        assert second("x", "3").reason == "ok"
        pids = {int(r.pred) for r in (results["a"], results["b"])}
    finally:
        close_isolated_verifiers()
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert not any(alive(p) for p in pids)
