"""update_policy's live-progress callback and its sampler/learner log-prob gap
(``actor/sampler_logp_gap``), and the in-iteration status shown on the terminal bar."""

from __future__ import annotations

import io

import pytest
import torch

from grouprl.batch import Rollout, RolloutBatch
from grouprl.losses.objective import make_objective
from grouprl.policy import build_tiny_policy, generate
from grouprl.train.learner import update_policy
from grouprl.train.metrics import ProgressBar
from grouprl.train.progress import IterationStatus


@pytest.fixture(scope="module")
def policy():
    corpus = [f"question {i} answer {i * 7 % 13}" for i in range(60)]
    return build_tiny_policy(corpus, vocab_size=300, seed=0, hidden_size=32, num_layers=1,
                             num_heads=2, num_kv_heads=1, intermediate_size=64)


def _rollout(model, tok, n=6) -> Rollout:
    gen = generate(model, tok, [f"question {i}" for i in range(n)], max_new_tokens=6,
                   generator=torch.Generator().manual_seed(0))
    batch = RolloutBatch(group_id=torch.arange(n) // 3, traj_id=torch.arange(n),
                         step=torch.zeros(n, dtype=torch.long),
                         reward=torch.arange(n, dtype=torch.float32),
                         success=torch.zeros(n, dtype=torch.bool))
    return Rollout(batch, gen.prompt_ids, gen.prompt_mask, gen.response_ids, gen.response_mask,
                   logprobs=gen.logprobs, advantages=torch.linspace(-1, 1, n))


def test_on_policy_update_reports_a_zero_sampler_gap_and_every_micro_batch(policy):
    model, tok = policy
    rows = _rollout(model, tok)
    calls = []
    out = update_policy(model, torch.optim.SGD(model.parameters(), lr=0.0), rows,
                        make_objective("ppo", {}, None, {}), micro_batch_size=2,
                        on_micro_batch=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert out["actor/sampler_logp_gap"] < 1e-5


def test_a_stale_sampler_shows_in_the_gap(policy):
    model, tok = policy
    rows = _rollout(model, tok)
    rows.logprobs = rows.logprobs - 0.25 * rows.response_mask     # as if other weights sampled
    out = update_policy(model, torch.optim.SGD(model.parameters(), lr=0.0), rows,
                        make_objective("ppo", {}, None, {}), micro_batch_size=4)
    assert out["actor/sampler_logp_gap"] == pytest.approx(0.25, abs=1e-5)


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Gen:
    def __init__(self, tokens: int) -> None:
        self.response_mask = torch.ones(1, tokens)


def test_iteration_status_on_a_terminal_and_silent_in_logs():
    tty = ProgressBar(10, desc="RL", stream=_FakeTTY())
    status = IterationStatus(tty)
    status.start(2)
    fn = status.wrap_generate(lambda prompts: _Gen(5 * len(prompts)))
    fn(["a", "b"])
    assert tty._bar.desc.startswith("RL it 3/10 · rollout 2 responses, 10 tok (")
    status.micro_batch(0, 4)
    status.micro_batch(1, 4)
    assert tty._bar.desc.startswith("RL it 3/10 · update 1/4 micro-batches, eta ")
    tty.update(3, success=0.5)
    assert tty._bar.desc == "RL"                     # the iteration's status is cleared
    tty.close()

    log = io.StringIO()
    plain = ProgressBar(10, desc="RL", stream=log, print_every=100)
    quiet = IterationStatus(plain)
    quiet.start(0)
    quiet.wrap_generate(lambda prompts: _Gen(3))(["a"])
    quiet.micro_batch(1, 2)
    assert log.getvalue() == ""
    assert (quiet.responses, quiet.tokens) == (1, 3)
