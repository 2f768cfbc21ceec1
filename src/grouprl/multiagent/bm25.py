"""A small BM25 (Okapi) retriever in NumPy for the synthetic knowledge base.

For a query q with terms t and a document d (Robertson & Zaragoza 2009, "The Probabilistic
Relevance Framework: BM25 and Beyond", §3.5; the Lucene idf variant that is never negative)::

    score(q, d) = Σ_{t ∈ q} idf(t) · tf · (k1 + 1) / (tf + k1 · (1 − b + b · |d| / avgdl))
    idf(t)      = ln(1 + (N − df(t) + 0.5) / (df(t) + 0.5))

tf = tf(t, d), the count of t in d; N = number of documents; df(t) = documents containing t;
|d| = tokens of d; avgdl = mean |d|. A query term counts once per occurrence in the query
(repeated terms add up). Tokens: lower-case runs of letters and digits. Ties are broken by
document order (stable sort), so retrieval is deterministic.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from grouprl.validation import check_int, check_number

__all__ = ["BM25", "tokenize"]

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-case alphanumeric runs."""
    return _TOKEN.findall(text.lower())


class BM25:
    """BM25 over a fixed corpus (module docstring): ``scores(query)`` and ``top_k(query, k)``."""

    def __init__(self, documents: Sequence[str], *, k1: float = 1.5, b: float = 0.75) -> None:
        """``k1`` > 0 (term-frequency saturation), ``b`` in [0, 1] (length normalisation)."""
        self.k1 = check_number("k1", k1, 0.0, low_open=True)
        self.b = check_number("b", b, 0.0, 1.0)
        if not documents:
            raise ValueError("documents: the corpus is empty")
        self.documents = list(documents)
        tokens = [tokenize(d) for d in self.documents]
        self.vocab = {t: i for i, t in enumerate(sorted({t for doc in tokens for t in doc}))}
        self.tf = np.zeros((len(tokens), len(self.vocab)))
        for d, doc in enumerate(tokens):
            for term, count in Counter(doc).items():
                self.tf[d, self.vocab[term]] = count
        self.doc_len = self.tf.sum(axis=1)
        self.avgdl = max(float(self.doc_len.mean()), 1e-12)
        df = (self.tf > 0).sum(axis=0)
        n = len(tokens)
        self.idf = np.log1p((n - df + 0.5) / (df + 0.5))

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for ``query`` (float64 [N])."""
        terms = [self.vocab[t] for t in tokenize(query) if t in self.vocab]
        if not terms:
            return np.zeros(len(self.documents))
        tf = self.tf[:, terms]
        norm = self.k1 * (1.0 - self.b + self.b * self.doc_len / self.avgdl)
        return (self.idf[terms] * tf * (self.k1 + 1.0) / (tf + norm[:, None])).sum(axis=1)

    def top_k(self, query: str, k: int = 3) -> list[int]:
        """Indices of the ``k`` best documents (ties in document order)."""
        check_int("k", k, 1)
        return [int(i) for i in np.argsort(-self.scores(query), kind="stable")[:k]]
