"""One family of exceptions for monai-prune.

Every error says what was wrong, what was expected and what to do. They subclass the built-in type a Python
user would catch (``ValueError``/``TypeError``/``RuntimeError``) so existing ``except`` clauses keep working,
and :class:`MonaiPruneError` so the CLI can turn any of them into one line on stderr.
"""

from __future__ import annotations


class MonaiPruneError(Exception):
    """Base class of every error raised on purpose by monai-prune."""


class ConfigError(MonaiPruneError, ValueError):
    """An argument or configuration value is out of range or inconsistent."""


class InputError(MonaiPruneError, TypeError):
    """An object of the wrong kind (model, example input, file) was given."""


class PruningError(MonaiPruneError, RuntimeError):
    """Pruning produced a network that does not behave like the original (shape, dtype, NaN)."""


class PlanMismatchError(MonaiPruneError, ValueError):
    """A pruning plan does not fit the network it is applied to."""


class ExportError(MonaiPruneError, RuntimeError):
    """An export failed or its result disagrees with the source model."""


class BackendUnavailableError(MonaiPruneError, RuntimeError):
    """A requested runtime backend is not installed or cannot run the model."""


class QuantizationError(MonaiPruneError, RuntimeError):
    """Quantization failed or cannot meet the requested accuracy tolerances."""


class GuardrailError(MonaiPruneError, ValueError):
    """A compressed model breaks an accuracy floor or a budget its recipe declared (nothing was written)."""


class PlanSecurityError(InputError):
    """A plan or card (data) tries to name code: an expression, a reference or a class that is not allowed."""
