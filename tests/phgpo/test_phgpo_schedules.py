"""PhGPO schedules, curriculum, elite buffer (spec §2.3, §2.7; §2.11 check 6)."""

from __future__ import annotations

import random

import pytest

from grouprl.phgpo import schedules as S
from grouprl.phgpo.elite import EliteBuffer, EliteTrajectory


def test_linear_schedules_at_given_epochs():
    assert [S.sl_weight(e) for e in (0, 10, 20, 25)] == pytest.approx([0.7, 0.5, 0.3, 0.3])
    assert [S.fusion_weight(e) for e in (0, 5, 20, 30)] == pytest.approx([0.2, 0.275, 0.5, 0.5])
    assert [S.beta(2, e) for e in (0, 10, 20, 24)] == pytest.approx([0.7, 0.75, 0.8, 0.8])
    assert [S.beta(3, e) for e in (0, 3, 15, 24)] == pytest.approx([0.5, 0.54, 0.7, 0.7])
    assert [S.stage3_epsilon(e) for e in (0, 5, 20, 24)] == pytest.approx([0.05, 0.04, 0.01,
                                                                          0.01])


def test_curriculum_horizon_and_teacher_forcing():
    # stages: 3 steps × 6 epochs (0.40→0.25), 5 × 6 (0.35→0.20), 7 × 6 (0.30→0.15), 10 × 7
    assert [S.horizon(e) for e in (0, 5, 6, 11, 12, 18, 24, 40)] == [3, 3, 5, 5, 7, 10, 10, 10]
    assert S.curriculum_position(13) == (2, 1)
    expected = {0: 0.40, 1: 0.37, 5: 0.25, 6: 0.35, 11: 0.20, 12: 0.30, 17: 0.15, 18: 0.25,
                21: 0.175, 24: 0.10, 99: 0.10}
    for epoch, tf in expected.items():
        assert S.teacher_forcing(epoch) == pytest.approx(tf), epoch
    one = (S.CurriculumStage(4, 1, 0.3, 0.1),)
    assert S.teacher_forcing(0, one) == 0.3


def test_stage_filter_and_event_clocks():
    lengths = [2, 3, 4, 7, 10, 11]
    assert S.filter_by_horizon(lengths, 3) == [0, 1]
    assert S.filter_by_horizon(lengths, 10) == [0, 1, 2, 3, 4]
    assert [t for t in range(65) if S.evaporation_due(t)] == [0, 20, 40, 60]
    assert [e for e in range(10) if S.injection_due(e)] == [2, 5, 8]
    assert S.stage3_teacher_forcing(0.05) == 0.15 and S.stage3_teacher_forcing(0.1) == 0.05


def test_elite_buffer_lists_sampling_and_round_trip():
    buf = EliteBuffer(capacity=3, success_capacity=2)
    trajs = [EliteTrajectory(0, (1, 2), 0.5, 0.5, False), EliteTrajectory(1, (1,), 0.9, 0.8, True),
             EliteTrajectory(2, (2,), 0.2, 0.2, False), EliteTrajectory(3, (3,), 1.0, 0.9, True),
             EliteTrajectory(4, (0,), 0.8, 0.7, True), EliteTrajectory(5, (0,), 0.6, 0.6, False)]
    kept = [buf.add(t) for t in trajs]
    assert kept == [True, True, False, True, True, True]
    assert [t.task_id for t in buf.general] == [3, 1, 4]
    assert [t.task_id for t in buf.successes] == [3, 1]
    assert buf.success_fraction() == pytest.approx(2 / 3)
    picked = buf.sample(5, random.Random(0))
    assert len(picked) == 5 and all(p.success for p in picked[:3])
    other = EliteBuffer(capacity=3, success_capacity=2)
    other.load_state_dict(buf.state_dict())
    assert other.general == buf.general and other.successes == buf.successes


@pytest.mark.parametrize("call, name", [
    (lambda: S.linear_ramp(-1, 0.0, 1.0, 5), "epoch"),
    (lambda: S.linear_ramp(0, 0.0, 1.0, 0), "epochs"),
    (lambda: S.beta(1, 0), "stage"),
    (lambda: S.CurriculumStage(0, 3, 0.1, 0.1), "max_steps"),
    (lambda: S.CurriculumStage(3, 3, 1.5, 0.1), "tf_start"),
    (lambda: S.curriculum_position(0, ()), "stages"),
    (lambda: S.filter_by_horizon([1], 0), "max_steps"),
    (lambda: S.stage3_teacher_forcing(2.0), "elite_success_fraction"),
    (lambda: EliteBuffer(capacity=0), "capacity"),
])
def test_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        call()
