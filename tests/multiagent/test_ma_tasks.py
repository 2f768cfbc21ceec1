"""Team tasks and evaluation: BM25 against a slow reference from the formula, the synthetic
knowledge base, Search-R1 exact match, the math env, and pass@k / avg@k (§1.10 item 8)."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from grouprl.multiagent import (
    BM25,
    KnowledgeBase,
    MathTeamEnv,
    SearchKBEnv,
    episode_successes,
    exact_match,
    normalize_answer,
    pass_and_avg_at_k,
)
from grouprl.multiagent.bm25 import tokenize
from grouprl.multiagent.rows import Episode


def slow_bm25(docs, query, k1=1.5, b=0.75):
    """score = Σ_t idf(t)·tf·(k1+1)/(tf + k1·(1 − b + b·|d|/avgdl)),
    idf = ln(1 + (N−df+.5)/(df+.5))."""
    toks = [tokenize(d) for d in docs]
    n, avgdl = len(docs), sum(map(len, toks)) / len(docs)
    out = []
    for doc in toks:
        score = 0.0
        for t in tokenize(query):
            df = sum(t in d for d in toks)
            if df == 0:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            tf = doc.count(t)
            score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc) / avgdl))
        out.append(score)
    return out


@pytest.mark.parametrize("k1,b", [(1.5, 0.75), (1.2, 0.0), (0.5, 1.0), (2.0, 1.0)])
def test_bm25_matches_the_formula(k1, b):
    kb = KnowledgeBase(3)
    bm = BM25(kb.documents, k1=k1, b=b)
    rng = random.Random(0)
    words = [w for d in kb.documents for w in tokenize(d)] + ["unseen", "words"]
    for _ in range(8):
        query = " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
        assert bm.scores(query).tolist() == pytest.approx(slow_bm25(kb.documents, query, k1, b),
                                                          rel=1e-12, abs=1e-12)
    assert bm.scores("nothing here zzz").tolist() == [0.0] * len(kb.documents)


def test_bm25_top_k_order_and_ties():
    docs = ["red apple", "green apple", "red red car", "blue sky"]
    bm = BM25(docs)
    assert bm.top_k("red", 2) == [2, 0]
    assert bm.top_k("zzz", 3) == [0, 1, 2]           # all tie: document order
    with pytest.raises(ValueError, match="documents"):
        BM25([])
    with pytest.raises(ValueError, match="b: must be a number in"):
        BM25(docs, b=1.5)
    with pytest.raises(ValueError, match="k1: must be a number > 0"):
        BM25(docs, k1=0.0)
    with pytest.raises(ValueError, match="k: must be an integer >= 1"):
        bm.top_k("red", 0)


def test_knowledge_base_is_deterministic_and_questions_are_provable():
    kb, again = KnowledgeBase(5), KnowledgeBase(5)
    assert kb.documents == again.documents and kb.documents != KnowledgeBase(6).documents
    hops = Counter()
    for seed in range(60):
        q = kb.question(seed)
        assert q == again.question(seed)
        assert len(q.evidence) == q.hops
        assert q.answers[0] in kb.documents[q.evidence[-1]]
        hops[q.hops] += 1
    assert set(hops) == {1, 2, 3}
    assert all(kb.question(s, hops=(2,)).hops == 2 for s in range(10))
    with pytest.raises(ValueError, match="hops"):
        kb.question(0, hops=(4,))
    with pytest.raises(ValueError, match="num_people"):
        KnowledgeBase(0, num_people=0)


def test_one_hop_question_retrieves_its_evidence():
    env = SearchKBEnv(kb_seed=2)
    found = 0
    for seed in range(30):
        q = env.kb.question(seed, hops=(1,))
        found += q.evidence[0] in env.retriever.top_k(q.text, 3)
    assert found >= 25


def test_exact_match_normalisation():
    assert normalize_answer("  The  Eiffel-Tower! ") == "eiffeltower"
    assert normalize_answer("An apple a day") == "apple day"
    assert exact_match("the Paris.", ["paris"]) == 1.0
    assert exact_match("Paris France", ["Paris"]) == 0.0
    assert exact_match(None, ["x"]) == 0.0


def test_search_env_grades_the_last_answer_and_the_turn_limit():
    env = SearchKBEnv(kb_seed=1, max_steps=3)
    obs, info = env.reset(4)
    gold = env.question.answers[0]
    assert env.question.text in obs and info["task"] == env.question.text
    obs, r, done, info = env.step("<search>anything</search>")
    assert (r, done, info["valid"]) == (0.0, False, True) and "<information>Doc 1:" in obs
    obs, r, done, info = env.step("")
    assert (r, done, info["valid"]) == (0.0, False, False)
    obs, r, done, info = env.step(f"<answer>The {gold}</answer>")
    assert (r, done, info["won"]) == (1.0, True, True)
    env.reset(4)
    for _ in range(2):
        env.step("<search>x</search>")
    _, r, done, info = env.step("")                       # the turn limit, no answer
    assert (r, done, info["won"]) == (0.0, True, False)
    env = SearchKBEnv(kb_seed=1, history_length=1)
    env.reset(0)
    env.step("<search>a</search>")
    obs, *_ = env.step("<search>b</search>")
    assert "Step 2" in obs and "Step 1" not in obs


def test_math_env_grades_the_boxed_answer():
    env = MathTeamEnv(difficulty=[1, 2], size=4)
    obs, _ = env.reset(0)
    assert obs.endswith("What is 2 + 5?")
    assert env.step("<think>\\boxed{3}</think> so \\boxed{7}")[1:3] == (1.0, True)
    env.reset(0)
    assert env.step("\\boxed{7} then \\boxed{8}")[1] == 0.0
    env.reset(0)
    assert env.step("seven")[3]["valid"] is False


def test_pass_and_avg_at_k_hand_table():
    out = pass_and_avg_at_k({"x": [1, 0, 0, 0], "y": [0, 0, 0, 0]})
    assert out == {"pass@k": 0.5, "avg@k": 0.125, "k": 4.0}
    eps = [Episode(t, t // 2, 0, 0.0, 1, t in (1,)) for t in range(4)]
    assert episode_successes(eps) == {0: [False, True], 1: [False, False]}
    assert pass_and_avg_at_k(episode_successes(eps)) == {"pass@k": 0.5, "avg@k": 0.25, "k": 2.0}
    with pytest.raises(ValueError, match="same number k"):
        pass_and_avg_at_k({"x": [1], "y": [1, 0]})
    with pytest.raises(ValueError, match="no tasks"):
        pass_and_avg_at_k({})
