"""Task-dependent ("context") pheromone of PhGPO (arXiv 2602.13691; spec §2.4).

Released code: ``ContextAwarePheromoneSystem`` (v12). Each transition (a⁻ → a) keeps a memory bank
of entries (task embedding e_j, score s_j, timestamp, task key), at most 100; on overflow the
highest scores stay (ties: the newer entry).

* write: for each transition of a trajectory with score m ≥ 0.3, raise the entry of the same task
  to max(s_old, m), or append (e, m);
* decay (at every evaporation): ``s_j ← 0.998 · s_j``, drop entries with s_j < 0.1;
* query for edge (a⁻, a) and task embedding e, over the active entries A = {j : sim_j ≥ 0.25}
  with sim_j = cos(e, e_j):

  - ``w = Σ_A sim_j · s_j / Σ_A sim_j``
  - ``τ_ctx = min(τ_max, τ0 + w · (τ_max − τ0) · 0.8)``
  - ``c = min(1, |A| / 2) · max_A sim · mean_A s``, halved if max sim < 0.35, halved if
    mean s < 0.4, × 0.7 if |A| < 2; c = 0 (and τ_ctx = τ0) when A is empty.

The embedding function is the caller's (the code uses a sentence-transformer on
"task name. query"); :func:`hashed_text_embedding` is a dependency-free default [GUESS].
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from grouprl.validation import check_int, check_number

__all__ = ["ContextConfig", "ContextMemory", "hashed_text_embedding"]


@dataclass(frozen=True)
class ContextConfig:
    """Constants of the context memories (v12 defaults, spec §2.4).

    Attributes:
        capacity: entries per edge (100). min_score: write only if m ≥ 0.3.
        min_similarity: active entries need sim ≥ 0.25. decay, drop_below: 0.998, 0.1.
        spread: τ_ctx = τ0 + w (τ_max − τ0) · 0.8. support: c's min(1, |A| / 2).
        low_similarity, low_score, few_scale: c halved if max sim < 0.35, halved if
            mean score < 0.4, × 0.7 if |A| < ``support``.
        tau0, tau_max: as the scalar pheromone (1.0, 20.0).
    """

    capacity: int = 100
    min_score: float = 0.3
    min_similarity: float = 0.25
    decay: float = 0.998
    drop_below: float = 0.1
    spread: float = 0.8
    support: int = 2
    low_similarity: float = 0.35
    low_score: float = 0.4
    few_scale: float = 0.7
    tau0: float = 1.0
    tau_max: float = 20.0

    def __post_init__(self) -> None:
        check_int("capacity", self.capacity, 1)
        check_int("support", self.support, 1)
        for name in ("min_score", "min_similarity", "decay", "drop_below", "spread",
                     "low_similarity", "low_score", "few_scale"):
            check_number(name, getattr(self, name), 0.0, 1.0)
        check_number("tau0", self.tau0, 0.0, low_open=True)
        check_number("tau_max", self.tau_max, self.tau0)


@dataclass
class _Entry:
    embedding: torch.Tensor
    score: float
    timestamp: int
    task_key: str = field(default="")


def hashed_text_embedding(text: str, dim: int = 64) -> torch.Tensor:
    """Unit-norm bag-of-words embedding: each lower-cased word adds ±1 at a hashed index."""
    check_int("dim", dim, 1)
    vec = torch.zeros(dim, dtype=torch.float64)
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        vec[h % dim] += 1.0 if (h >> 32) & 1 else -1.0
    norm = vec.norm()
    return vec / norm if norm > 0 else vec


class ContextMemory:
    """Per-edge memory banks with write, decay and query (module docstring)."""

    def __init__(self, config: ContextConfig | None = None) -> None:
        self.config = config or ContextConfig()
        self.banks: dict[tuple[int, int], list[_Entry]] = {}
        self.clock = 0

    def __len__(self) -> int:
        return sum(len(bank) for bank in self.banks.values())

    def write(self, edges: list[tuple[int, int]], embedding: torch.Tensor, task_key: str,
              score: float) -> bool:
        """Store score m for each edge (or raise the same task's entry to max(old, m)).

        Returns False (nothing written) when m < ``min_score``.
        """
        check_number("score", score, 0.0, 1.0)
        if score < self.config.min_score:
            return False
        self.clock += 1
        emb = torch.as_tensor(embedding, dtype=torch.float64).flatten().clone()
        for edge in edges:
            bank = self.banks.setdefault((int(edge[0]), int(edge[1])), [])
            same = next((e for e in bank if e.task_key == task_key), None)
            if same is not None:
                same.score, same.timestamp = max(same.score, score), self.clock
                continue
            bank.append(_Entry(emb, float(score), self.clock, task_key))
            if len(bank) > self.config.capacity:              # keep the highest scores
                bank.sort(key=lambda e: (-e.score, -e.timestamp))
                del bank[self.config.capacity:]
        return True

    def decay(self) -> None:
        """s ← 0.998 · s; entries below 0.1 are dropped (and empty banks removed)."""
        c = self.config
        for key in list(self.banks):
            bank = [e for e in self.banks[key] if e.score * c.decay >= c.drop_below]
            for e in bank:
                e.score *= c.decay
            if bank:
                self.banks[key] = bank
            else:
                del self.banks[key]

    def query(self, prev: int, nxt: int, embedding: torch.Tensor) -> tuple[float, float]:
        """(τ_ctx, confidence c) of edge (prev → nxt) for a task embedding (docstring)."""
        c = self.config
        bank = self.banks.get((int(prev), int(nxt)), [])
        if not bank:
            return c.tau0, 0.0
        e = torch.as_tensor(embedding, dtype=torch.float64).flatten()
        stack = torch.stack([entry.embedding for entry in bank])
        if stack.shape[1] != e.shape[0]:
            raise ValueError(f"embedding: dimension {e.shape[0]} does not match the stored "
                             f"dimension {stack.shape[1]}")
        sim = torch.nn.functional.cosine_similarity(stack, e.unsqueeze(0), dim=1, eps=1e-12)
        score = torch.tensor([entry.score for entry in bank], dtype=torch.float64)
        active = sim >= c.min_similarity
        n = int(active.sum())
        if n == 0:
            return c.tau0, 0.0
        sim, score = sim[active], score[active]
        w = float((sim * score).sum() / sim.sum())                    # Σ sim·s / Σ sim
        tau_ctx = min(c.tau_max, c.tau0 + w * (c.tau_max - c.tau0) * c.spread)
        max_sim, mean_score = float(sim.max()), float(score.mean())
        conf = min(1.0, n / c.support) * max_sim * mean_score        # min(1, n/2)·max sim·mean s
        conf *= 0.5 if max_sim < c.low_similarity else 1.0
        conf *= 0.5 if mean_score < c.low_score else 1.0
        conf *= c.few_scale if n < c.support else 1.0
        return tau_ctx, conf

    def state_dict(self) -> dict[str, Any]:
        """Flat tensors and lists, entries in bank order (exact round trip)."""
        flat = [(k, e) for k, bank in self.banks.items() for e in bank]
        dim = flat[0][1].embedding.numel() if flat else 0
        return {
            "config": asdict(self.config), "clock": self.clock,
            "edges": torch.tensor([list(k) for k, _ in flat], dtype=torch.long).reshape(-1, 2),
            "embeddings": (torch.stack([e.embedding for _, e in flat]) if flat
                           else torch.zeros(0, dim, dtype=torch.float64)),
            "scores": torch.tensor([e.score for _, e in flat], dtype=torch.float64),
            "timestamps": torch.tensor([e.timestamp for _, e in flat], dtype=torch.long),
            "task_keys": [e.task_key for _, e in flat],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore exactly what :meth:`state_dict` returned."""
        self.config = ContextConfig(**state["config"])
        self.clock = int(state["clock"])
        self.banks = {}
        for edge, emb, score, stamp, key in zip(state["edges"].tolist(), state["embeddings"],
                                                state["scores"].tolist(),
                                                state["timestamps"].tolist(), state["task_keys"]):
            self.banks.setdefault((edge[0], edge[1]), []).append(
                _Entry(emb.clone(), score, stamp, key))
