"""PhGPO pheromone store: deposits, evaporation, protection, context fusion, checkpoints
(spec §2.4; §2.11 checks 4 and 5)."""

from __future__ import annotations

import io
import math

import pytest
import torch

from grouprl.phgpo.context import ContextConfig, ContextMemory, hashed_text_embedding
from grouprl.phgpo.store import PheromoneStore, fuse
from grouprl.phgpo.transition import PheromoneConfig, TransitionPheromone

START = 4          # __START__ row of a 4-tool table


def test_deposits_of_check_4():
    ph = TransitionPheromone(4)
    assert ph.deposit([0, 1], 0.75) == pytest.approx(1.875)               # success
    assert float(ph.tool[START, 0]) == pytest.approx(2.875)
    assert float(ph.tool[0, 1]) == pytest.approx(2.875)
    assert ph.deposit([2, 3], 2 / 3) == pytest.approx(0.1)                 # partial failure
    assert float(ph.tool[2, 3]) == pytest.approx(1.1)
    assert ph.deposit([2, 3], 0.75, reference_success=False) == pytest.approx(0.1125)
    assert ph.deposit([1, 2], 0.3) == 0.0                                  # m ≤ 0.3: nothing
    assert float(ph.tool[1, 2]) == 1.0


def test_deposit_counts_each_occurrence_and_caps_at_tau_max():
    ph = TransitionPheromone(3)
    ph.deposit([0, 0, 0], 1.0)                                 # edge 0→0 twice: +2.5 each
    assert float(ph.tool[0, 0]) == pytest.approx(6.0)
    assert int(ph.uses[0, 0]) == 2 and int(ph.successes[0, 0]) == 2
    for _ in range(10):
        ph.deposit([1], 1.0)
    assert float(ph.tool[3, 1]) == 20.0


def test_evaporation_of_check_4():
    ph = TransitionPheromone(2, num_variants=1)
    ph.tool[0, 1], ph.tool[1, 0], ph.param[0] = 4.0, 0.52, 4.0
    ph.evaporate()
    assert float(ph.tool[0, 1]) == pytest.approx(3.96)
    assert float(ph.param[0]) == pytest.approx(3.98)                     # ρ / 2
    assert float(ph.tool[1, 0]) == pytest.approx(0.5148)
    for _ in range(500):
        ph.evaporate()
    assert float(ph.tool.min()) == 0.5 and float(ph.param.min()) == 0.5   # floor τ_min


def test_protected_edge_of_check_4():
    ph = TransitionPheromone(2)
    ph.protected[0, 1] = True
    ph.tool[0, 1], ph.tool[1, 0] = 4.2, 4.2
    ph.evaporate(protect=False)
    assert float(ph.tool[0, 1]) == pytest.approx(4.158)
    ph.tool[0, 1] = 4.2
    ph.evaporate(protect=True)
    assert float(ph.tool[0, 1]) == 5.0 and float(ph.tool[1, 0]) == pytest.approx(4.158 * 0.99)


def test_parameter_pheromone_grows_on_success_only():
    ph = TransitionPheromone(2, num_variants=3)
    ph.deposit([0, 1], 1.0, variants=[2, 2])
    assert ph.param.tolist() == pytest.approx([1.0, 1.0, 1.6])
    ph.deposit([0, 1], 0.5, variants=[0])
    assert float(ph.param[0]) == 1.0


def test_golden_protected_warm_up_and_injection():
    ph = TransitionPheromone(3)
    for _ in range(5):
        ph.deposit([0, 1], 1.0)                    # START→0, 0→1: 5 uses, 5 successes
    for _ in range(3):
        ph.deposit([2], 0.5)                        # START→2: 3 uses, 0 successes
    ph.deposit([1, 2], 1.0)
    ph.deposit([1, 2], 0.4)                        # START→1, 1→2: 2 uses — not golden
    edges, rate = ph.golden_edges()
    assert sorted(map(tuple, edges.tolist())) == [(0, 1), (3, 0)] and rate.tolist() == [1.0, 1.0]
    assert ph.protect_golden() == 2 and bool(ph.protected[0, 1]) and not ph.protected[3, 2]
    ph.tool.fill_(1.0)
    ph.warm_up([([2, 0], 0.5)])
    # 3 rounds: golden + α_g·8·1 = 4 each round; elite transitions + α_g·8·0.5 = 2
    assert float(ph.tool[3, 0]) == pytest.approx(13.0)
    assert float(ph.tool[3, 2]) == pytest.approx(7.0) and float(ph.tool[2, 0]) == 7.0
    ph.tool.fill_(1.0)
    ph.inject([([2], 0.8)])
    assert float(ph.tool[0, 1]) == pytest.approx(1.0 + 0.5 * 5.0 * 1.0 * 0.5)
    assert float(ph.tool[3, 2]) == pytest.approx(1.0 + 0.5 * 5.0 * 0.8)


def test_context_values_of_check_5():
    mem = ContextMemory()
    q = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    e2 = torch.tensor([0.3, math.sqrt(1 - 0.09), 0.0], dtype=torch.float64)
    mem.write([(0, 1)], torch.tensor([0.8, 0.6, 0.0]), "t1", 0.9)
    mem.write([(0, 1)], e2, "t2", 0.6)
    tau_ctx, conf = mem.query(0, 1, q)
    w = (0.8 * 0.9 + 0.3 * 0.6) / 1.1
    assert w == pytest.approx(0.818182, abs=1e-6)
    assert tau_ctx == pytest.approx(13.436364, abs=1e-6) and conf == pytest.approx(0.6)
    fused = fuse(torch.tensor([4.0]), torch.tensor([tau_ctx]), torch.tensor([conf]), 0.2)
    assert 0.2 * min(1.0, 1.5 * conf) == pytest.approx(0.18)
    assert float(fused) == pytest.approx(5.698545, abs=1e-6)


def test_context_confidence_penalties_and_gate():
    mem = ContextMemory()
    e = torch.tensor([1.0, 0.0])
    mem.write([(0, 1)], torch.tensor([0.3, math.sqrt(0.91)]), "t", 0.35)
    tau_ctx, conf = mem.query(0, 1, e)
    # one entry: min(1, 1/2)·0.3·0.35, halved (sim < 0.35), halved (score < 0.4), × 0.7
    assert conf == pytest.approx(0.5 * 0.3 * 0.35 * 0.5 * 0.5 * 0.7)
    assert float(fuse(torch.tensor([4.0]), torch.tensor([tau_ctx]), torch.tensor([conf]),
                      0.5)) == 4.0                                     # c < 0.25: τ_scalar
    assert mem.query(0, 1, torch.tensor([0.0, -1.0])) == (1.0, 0.0)    # no entry ≥ 0.25
    assert mem.query(2, 3, e) == (1.0, 0.0)


def test_context_write_rules_decay_and_capacity():
    mem = ContextMemory(ContextConfig(capacity=2))
    e = torch.tensor([1.0, 0.0])
    assert not mem.write([(0, 1)], e, "low", 0.29)
    mem.write([(0, 1)], e, "a", 0.5)
    mem.write([(0, 1)], e, "a", 0.4)                  # same task: max(0.5, 0.4)
    assert [x.score for x in mem.banks[(0, 1)]] == [0.5]
    mem.write([(0, 1)], e, "b", 0.9)
    mem.write([(0, 1)], e, "c", 0.7)                  # overflow: keep the two best
    assert [x.task_key for x in mem.banks[(0, 1)]] == ["b", "c"]
    mem.write([(5, 6)], e, "d", 0.3)
    for _ in range(548):                               # 0.3 · 0.998^548 ≈ 0.1002
        mem.decay()
    assert (5, 6) in mem.banks
    mem.decay()
    assert (5, 6) not in mem.banks and (0, 1) in mem.banks


def test_store_update_fuses_only_with_context_confidence():
    store = PheromoneStore(3)
    emb = hashed_text_embedding("read the report then mail it")
    other = hashed_text_embedding("completely different words here")
    store.update([0, 1], 1.0, embedding=emb, task_key="t")
    store.update([0, 1], 1.0, embedding=emb, task_key="u")
    prev, cand = torch.tensor([0]), torch.tensor([[1, 2]])
    plain = store.tau(prev, cand)
    assert plain.tolist() == [[6.0, 1.0]]
    fused = store.tau(prev, cand, emb[None], lam=0.5)
    tau_ctx = 1.0 + 1.0 * 19.0 * 0.8                     # w = 1: two entries, score 1
    assert fused[0].tolist() == pytest.approx([0.5 * 6.0 + 0.5 * tau_ctx, 1.0])
    assert store.tau(prev, cand, other[None], lam=0.5).tolist() == [[6.0, 1.0]]
    no_write = PheromoneStore(3)
    no_write.update([0, 1], 0.6, embedding=emb, task_key="t")   # "deposit" rule: m < 0.7
    assert len(no_write.memory) == 0
    direct = PheromoneStore(3, context_write="direct")
    direct.update([0, 1], 0.6, embedding=emb, task_key="t")
    assert len(direct.memory) == 2


def _busy_store() -> PheromoneStore:
    store = PheromoneStore(4, num_variants=5)
    gen = torch.Generator().manual_seed(0)
    for i in range(30):
        actions = torch.randint(4, (3,), generator=gen).tolist()
        m = float(torch.rand(1, generator=gen))
        store.update(actions, m, variants=[i % 5], embedding=torch.randn(8, generator=gen),
                     task_key=f"task{i % 7}")
        if i % 10 == 0:
            store.evaporate()
    store.scalar.protect_golden()
    return store


def _assert_state_equal(a, b):
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_state_equal(a[k], b[k])
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    else:
        assert a == b


def test_state_dict_round_trip_is_exact_through_torch_save():
    store = _busy_store()
    state = store.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    restored = PheromoneStore(4, num_variants=5, use_context=False, context_write="direct")
    restored.load_state_dict(torch.load(buf, weights_only=True))
    _assert_state_equal(restored.state_dict(), state)
    emb = torch.randn(3, 8, generator=torch.Generator().manual_seed(9))
    prev, cand = torch.tensor([0, 1, 4]), torch.tensor([[0, 1], [2, 3], [1, 3]])
    assert torch.equal(restored.tau(prev, cand, emb, 0.4), store.tau(prev, cand, emb, 0.4))
    for s in (store, restored):
        s.update([1, 2, 3], 0.9, embedding=emb[0], task_key="new")
        s.evaporate(protect=True)
    _assert_state_equal(restored.state_dict(), store.state_dict())


def test_load_state_dict_rejects_other_sizes():
    with pytest.raises(ValueError, match="^state:"):
        PheromoneStore(3).load_state_dict(_busy_store().state_dict())


@pytest.mark.parametrize("call, name", [
    (lambda: PheromoneConfig(tau0=30.0), "tau0"),
    (lambda: PheromoneConfig(rho=1.5), "rho"),
    (lambda: ContextConfig(capacity=0), "capacity"),
    (lambda: TransitionPheromone(0), "num_tools"),
    (lambda: TransitionPheromone(3).deposit([0, 3], 1.0), "actions"),
    (lambda: TransitionPheromone(3).deposit([0], 1.5), "match"),
    (lambda: TransitionPheromone(3, 2).deposit([0], 1.0, variants=[2]), "variants"),
    (lambda: PheromoneStore(3, context_write="always"), "context_write"),
    (lambda: PheromoneStore(3).tau(torch.tensor([0]), torch.tensor([[1]]), lam=2.0), "lam"),
    (lambda: PheromoneStore(3).tau(torch.tensor([0, 1]), torch.tensor([[1]])), "candidates"),
])
def test_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        call()
