"""Sparsity schedules: formulas, stepping, validation at construction, plots."""

import pytest

from monai_prune.errors import ConfigError
from monai_prune.schedules import (CubicSchedule, ExponentialSchedule, LinearSchedule, OneShotSchedule,
                                   StepSchedule)


def test_cubic_follows_agp():
    s = CubicSchedule(final=0.6, start_epoch=1, end_epoch=8)
    assert s(0) == 0.0 and s(1) == 0.0 and s(8) == pytest.approx(0.6) and s(20) == pytest.approx(0.6)
    for t in range(1, 9):  # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3
        assert s(t) == pytest.approx(0.6 + (0.0 - 0.6) * (1 - (t - 1) / 7) ** 3)
    values = [s(t) for t in range(1, 9)]
    increments = [b - a for a, b in zip(values, values[1:])]
    assert all(i > 0 for i in increments) and increments == sorted(increments, reverse=True)  # fast, then gentle


def test_linear_and_frequency():
    s = LinearSchedule(final=0.5, initial=0.1, start_iteration=0, end_iteration=100, frequency=25)
    assert s.unit == "iteration"
    assert [s(t) for t in (0, 24, 25, 49, 50, 100)] == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.3, 0.5])
    assert s.steps() == [0, 25, 50, 75, 100]


def test_one_shot_exponential_and_steps():
    assert OneShotSchedule(0.5, start_epoch=3)(2) == 0.0 and OneShotSchedule(0.5, start_epoch=3)(3) == 0.5
    assert OneShotSchedule(0.5, start_epoch=3).steps() == [3]
    e = ExponentialSchedule(0.8, rate=5, start_epoch=0, end_epoch=10)
    assert e(0) == 0.0 and e(10) == pytest.approx(0.8) and e(2) > LinearSchedule(0.8, start_epoch=0, end_epoch=10)(2)
    st = StepSchedule({2: 0.25, 5: 0.5})
    assert [st(t) for t in range(7)] == [0, 0, 0.25, 0.25, 0.25, 0.5, 0.5] and st.steps() == [2, 5]


@pytest.mark.parametrize("make, message", [
    (lambda: CubicSchedule(final=1.0, end_epoch=5), r"final must be a sparsity in \[0, 1\)"),
    (lambda: CubicSchedule(final=0.5, start_epoch=6, end_epoch=5), "is after end_epoch"),
    (lambda: CubicSchedule(final=0.5, end_epoch=5, frequency=0), "frequency must be a positive integer"),
    (lambda: CubicSchedule(final=0.5, initial=0.7, end_epoch=5), "above final"),
    (lambda: CubicSchedule(final=0.5, end_epoch=5, start_iteration=0), "not both"),
    (lambda: ExponentialSchedule(final=0.5, rate=0, end_epoch=5), "rate must be"),
    (lambda: StepSchedule({1: 0.5, 3: 0.2}), "must not decrease"),
    (lambda: StepSchedule({}), "at least one"),
])
def test_bad_schedules_fail_at_construction(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_schedule_must_fit_training():
    with pytest.raises(ConfigError, match="training stops at 5"):
        CubicSchedule(final=0.5, start_epoch=1, end_epoch=8).check_fits(max_steps=5)
    CubicSchedule(final=0.5, start_epoch=1, end_epoch=8).check_fits(max_steps=8)


def test_plot_writes_png(tmp_path):
    path = CubicSchedule(final=0.6, start_epoch=1, end_epoch=8).plot(str(tmp_path / "schedule.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "CubicSchedule(final=0.6" in repr(CubicSchedule(final=0.6, end_epoch=8))
