"""The two team tasks, as :class:`grouprl.envs.base.TextEnv` environments (spec §1.5, §1.12).

**MathTeamEnv** (one environment step): the observation is "You are a member of an expert team
solving this problem: <problem>" on grouprl's built-in arithmetic; the action (the last Solver
text) is graded by :func:`grouprl.rewards.verify.verify_answer` in ``boxed`` mode (text after
``</think>`` when present; the last ``\\boxed{}``): reward 1.0 if correct else 0.0, ``won`` =
correct.

**SearchKBEnv** (up to ``max_steps`` steps) on :class:`~grouprl.multiagent.knowledge.KnowledgeBase`:

- ``<search>q</search>``: the BM25 top-``top_k`` documents are appended to the history as
  ``Step i: <search>q</search> <information>Doc 1: … Doc 2: …</information>``; reward 0;
- ``<answer>a</answer>``: the episode ends and is graded;
- anything else (an empty action): a step with no retrieval (``valid=False``);
- at ``max_steps`` the episode ends and the history is graded (no answer → 0).

Grading (Search-R1 exact match): the content of the *last* ``<answer>`` in the whole interaction,
normalised (:func:`normalize_answer`: lower-case, punctuation removed, articles a/an/the removed,
whitespace collapsed), equal to a normalised gold answer → 1.0, else 0.0; ``won`` = reward ≥ 1.
The agents see the last ``history_length`` steps.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any

from grouprl.data.arithmetic import arithmetic_dataset
from grouprl.rewards.verify import verify_answer
from grouprl.validation import check_int

from .bm25 import BM25
from .knowledge import HOPS, KnowledgeBase, Question
from .parsers import tag_content

__all__ = ["MathTeamEnv", "SearchKBEnv", "normalize_answer", "exact_match"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Search-R1 / SQuAD normalisation: lower, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(prediction: str | None, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals a normalised gold answer, else 0.0."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


class MathTeamEnv:
    """Single-step arithmetic for the math team (module docstring).

    ``reset(seed)`` poses problem ``seed mod len(dataset)`` of
    ``arithmetic_dataset(split, difficulty=difficulty, size=size, seed=data_seed)``.
    """

    def __init__(self, *, split: str = "train", difficulty: Sequence[int] | int | None = None,
                 size: int = 200, data_seed: int = 0) -> None:
        self.dataset = arithmetic_dataset(split, difficulty=difficulty, size=size,
                                          seed=data_seed)
        self.gold = ""

    def reset(self, seed: int) -> tuple[str, dict[str, Any]]:
        example = self.dataset[int(seed) % len(self.dataset)]
        self.gold = example.answer
        obs = f"You are a member of an expert team solving this problem:\n{example.prompt}"
        return obs, {"task": example.prompt, "anchor": example.prompt,
                     "admissible_actions": None}

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        result = verify_answer(action, self.gold, mode="boxed", backend="builtin")
        correct = bool(result.correct)
        return "", float(correct), True, {"won": correct, "valid": result.pred is not None,
                                          "anchor": None, "admissible_actions": None}

    def close(self) -> None:
        pass


class SearchKBEnv:
    """Multi-turn search over the synthetic knowledge base (module docstring)."""

    def __init__(self, *, kb_seed: int = 0, max_steps: int = 4, history_length: int = 4,
                 top_k: int = 3, hops: tuple[int, ...] = HOPS,
                 knowledge_base: KnowledgeBase | None = None) -> None:
        self.kb = knowledge_base or KnowledgeBase(kb_seed)
        self.retriever = BM25(self.kb.documents)
        self.max_steps = check_int("max_steps", max_steps, 1)
        self.history_length = check_int("history_length", history_length, 0)
        self.top_k = check_int("top_k", top_k, 1)
        self.hops = tuple(hops)
        self.question: Question | None = None
        self.history: list[str] = []
        self.steps = 0

    def _observation(self) -> str:
        assert self.question is not None
        shown = self.history[-self.history_length:] if self.history_length else []
        lines = "\n".join(shown) if shown else "(none yet)"
        return f"Question: {self.question.text}\nInteraction history:\n{lines}"

    def reset(self, seed: int) -> tuple[str, dict[str, Any]]:
        self.question = self.kb.question(int(seed), self.hops)
        self.history, self.steps = [], 0
        return self._observation(), {"task": self.question.text, "anchor": self.question.text,
                                     "admissible_actions": None}

    def retrieve(self, query: str) -> str:
        """``Doc 1: … Doc 2: …`` of the BM25 top-k documents."""
        docs = [self.kb.documents[i] for i in self.retriever.top_k(query, self.top_k)]
        return " ".join(f"Doc {k + 1}: {d}" for k, d in enumerate(docs))

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        assert self.question is not None, "reset() first"
        self.steps += 1
        query, answer = tag_content(action, "search"), tag_content(action, "answer")
        valid = query is not None or answer is not None
        if answer is not None:
            self.history.append(f"Step {self.steps}: <answer>{answer.strip()}</answer>")
        elif query is not None:
            self.history.append(f"Step {self.steps}: <search>{query.strip()}</search> "
                                f"<information>{self.retrieve(query)}</information>")
        else:
            self.history.append(f"Step {self.steps}: (no valid action)")
        done = answer is not None or self.steps >= self.max_steps
        reward = 0.0
        if done:
            reward = exact_match(tag_content("\n".join(self.history), "answer"),
                                 self.question.answers)
        info = {"won": done and reward >= 1.0, "valid": valid, "anchor": None,
                "admissible_actions": None}
        return self._observation(), reward, done, info

    def close(self) -> None:
        pass
