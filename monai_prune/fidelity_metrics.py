"""Moved to :mod:`monai_prune.fidelity.metrics`; this module keeps the old import path working."""

from .fidelity.metrics import (BACKGROUND_NAMES, LABEL_MODES, PerClassMetrics, class_names,  # noqa: F401
                               detect_label_mode, expected_calibration_error, label_mode_from_bundle, worst_cases)
