"""Sparsity schedules: how much to prune at each epoch or iteration of training.

Each schedule is a small object: ``schedule(step) -> target sparsity`` (fraction removed), ``schedule.steps()``
lists the steps where the target changes, and ``schedule.plot(path)`` writes a PNG. Steps count epochs or
iterations, whichever pair of arguments was given (``start_epoch``/``end_epoch`` or
``start_iteration``/``end_iteration``). Targets move only every ``frequency`` steps, from ``start`` to ``end``
inclusive, and stay at ``final`` afterwards. Bad arguments fail at construction, never mid-training.

* :class:`OneShotSchedule` — ``final`` at ``start``.
* :class:`LinearSchedule` — a straight line from ``initial`` to ``final``.
* :class:`CubicSchedule` — Zhu & Gupta's automated gradual pruning:
  s_t = s_f + (s_i - s_f) (1 - (t - t0) / (end - t0))^3: fast early, gentle at the end.
* :class:`ExponentialSchedule` — saturating exponential with a ``rate``.
* :class:`StepSchedule` — explicit ``{step: sparsity}`` pairs.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional

from ._plotting import new_figure, save_png
from .errors import ConfigError


def _check_fraction(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not (0.0 <= value < 1.0):
        raise ConfigError(f"{name} must be a sparsity in [0, 1) (the fraction removed), got {value!r}")
    return float(value)


class SparsitySchedule:
    """Base class: validation, stepping by ``frequency``, listing, plotting, serialisation."""

    def __init__(self, final: float, initial: float = 0.0, start_epoch: Optional[int] = None,
                 end_epoch: Optional[int] = None, start_iteration: Optional[int] = None,
                 end_iteration: Optional[int] = None, frequency: int = 1) -> None:
        self.final = _check_fraction("final", final)
        self.initial = _check_fraction("initial", initial)
        if self.initial > self.final:
            raise ConfigError(f"initial sparsity {initial} is above final {final}; sparsity only grows")
        by_epoch = start_epoch is not None or end_epoch is not None
        by_iteration = start_iteration is not None or end_iteration is not None
        if by_epoch and by_iteration:
            raise ConfigError("give start_epoch/end_epoch or start_iteration/end_iteration, not both")
        self.unit = "iteration" if by_iteration else "epoch"
        start = (start_iteration if by_iteration else start_epoch) or 0
        end = end_iteration if by_iteration else end_epoch
        end = start if end is None else end
        for name, value in (("start", start), ("end", end)):
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name}_{self.unit} must be a non-negative integer, got {value!r}")
        if start > end:
            raise ConfigError(f"start_{self.unit}={start} is after end_{self.unit}={end}")
        if not isinstance(frequency, int) or frequency < 1:
            raise ConfigError(f"frequency must be a positive integer number of {self.unit}s, got {frequency!r}")
        self.start, self.end, self.frequency = start, end, frequency

    def progress(self, step: int) -> float:
        """Where ``step`` lies between start (0) and end (1), snapped down to the schedule's frequency."""
        if self.end == self.start:
            return 1.0 if step >= self.start else 0.0
        if step <= self.start:
            return 0.0
        if step >= self.end:
            return 1.0
        snapped = self.start + ((step - self.start) // self.frequency) * self.frequency
        return (snapped - self.start) / (self.end - self.start)

    def shape(self, progress: float) -> float:
        """Fraction of the way from ``initial`` to ``final`` at ``progress`` in [0, 1]."""
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        if step < self.start:  # nothing is pruned before the schedule starts
            return 0.0
        return self.initial + (self.final - self.initial) * self.shape(self.progress(step))

    def steps(self) -> List[int]:
        """The steps where the target sparsity changes (when a pruning handler acts)."""
        points = sorted(set(range(self.start, self.end + 1, self.frequency)) | {self.end})
        changes, previous = [], None
        for step in points:
            value = self(step)
            if previous is None or value != previous:
                changes.append(step)
            previous = value
        return [s for s in changes if self(s) > 0.0]

    def check_fits(self, max_steps: int) -> None:
        """Raise if the schedule ends after the training does (``max_epochs`` or total iterations)."""
        if self.end > max_steps:
            raise ConfigError(f"the schedule ends at {self.unit} {self.end} but training stops at {max_steps}; "
                              f"reach final sparsity by {max_steps} or train longer")

    def to_dict(self) -> Dict[str, Any]:
        return {"type": type(self).__name__, "final": self.final, "initial": self.initial, "unit": self.unit,
                "start": self.start, "end": self.end, "frequency": self.frequency}

    def plot(self, path: str, title: Optional[str] = None) -> str:
        """Write the schedule as a PNG step plot (target sparsity against epoch/iteration)."""
        last = self.end + max(1, (self.end - self.start) // 5)
        xs = list(range(0, last + 1))
        fig, ax = new_figure(6, 3.5)
        ax.step(xs, [self(x) for x in xs], where="post", color="tab:orange")
        ax.scatter(self.steps(), [self(s) for s in self.steps()], s=14, color="tab:red", zorder=3,
                   label="pruning steps")
        ax.set_xlabel(self.unit)
        ax.set_ylabel("target sparsity")
        ax.set_ylim(0, 1)
        ax.set_title(title or f"{type(self).__name__}: {self.initial:.2f} -> {self.final:.2f}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        save_png(fig, path)
        return path

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.to_dict().items() if k != "type")
        return f"{type(self).__name__}({args})"


class OneShotSchedule(SparsitySchedule):
    """All of ``final`` at once, at ``start_epoch`` (or ``start_iteration``)."""

    def __init__(self, final: float, start_epoch: Optional[int] = None, start_iteration: Optional[int] = None):
        super().__init__(final, start_epoch=start_epoch, start_iteration=start_iteration)

    def shape(self, progress: float) -> float:
        return 1.0


class LinearSchedule(SparsitySchedule):
    def shape(self, progress: float) -> float:
        return progress


class CubicSchedule(SparsitySchedule):
    """Automated gradual pruning (Zhu & Gupta, 2017): s_t = s_f + (s_i - s_f)(1 - p)^3."""

    def shape(self, progress: float) -> float:
        return 1.0 - (1.0 - progress) ** 3


class ExponentialSchedule(SparsitySchedule):
    """s_t = s_i + (s_f - s_i)(1 - e^(-rate p)) / (1 - e^(-rate)); larger ``rate`` prunes earlier."""

    def __init__(self, final: float, rate: float = 5.0, **kwargs) -> None:
        super().__init__(final, **kwargs)
        if not (isinstance(rate, (int, float)) and rate > 0):
            raise ConfigError(f"rate must be a positive number, got {rate!r}")
        self.rate = float(rate)

    def shape(self, progress: float) -> float:
        return (1.0 - math.exp(-self.rate * progress)) / (1.0 - math.exp(-self.rate))

    def to_dict(self) -> Dict[str, Any]:
        return {**super().to_dict(), "rate": self.rate}


class StepSchedule(SparsitySchedule):
    """Explicit targets: ``StepSchedule({2: 0.25, 5: 0.5}, unit="epoch")`` holds each value from its step on."""

    def __init__(self, points: Mapping[int, float], unit: str = "epoch") -> None:
        if not points:
            raise ConfigError("StepSchedule needs at least one {step: sparsity} pair")
        if unit not in ("epoch", "iteration"):
            raise ConfigError(f"unit must be 'epoch' or 'iteration', got {unit!r}")
        self.points = {int(k): _check_fraction(f"sparsity at {unit} {k}", v) for k, v in sorted(points.items())}
        values = list(self.points.values())
        if any(b < a for a, b in zip(values, values[1:])):
            raise ConfigError(f"StepSchedule sparsities must not decrease over time, got {self.points}")
        first, last = min(self.points), max(self.points)
        kwargs = {f"start_{unit}": first, f"end_{unit}": last}
        super().__init__(values[-1], **kwargs)

    def __call__(self, step: int) -> float:
        value = 0.0
        for at, sparsity in self.points.items():
            if step >= at:
                value = sparsity
        return value

    def steps(self) -> List[int]:
        return [s for s, v in self.points.items() if v > 0.0]

    def to_dict(self) -> Dict[str, Any]:
        return {**super().to_dict(), "points": {str(k): v for k, v in self.points.items()}}
