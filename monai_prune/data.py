"""Built-in synthetic data (CT-like volumes with labelled spheres, 2D images whose class is visible): a re-export of
:mod:`monai_prune.demo.data`, where it lives, kept so that ``from monai_prune.data import write_ct_dataset`` (the
bundle's ``scripts/make_synthetic_data.py``, the benchmarks, users' scripts) keeps working."""

from .demo.data import (  # noqa: F401 (the public names of this module)
    MULTICLASS_NAMES,
    SPACING_MM,
    ct_transforms,
    synthetic_2d_classification,
    synthetic_ct,
    synthetic_multiclass,
    write_ct_dataset,
    write_nifti,
)

__all__ = ["MULTICLASS_NAMES", "SPACING_MM", "ct_transforms", "synthetic_2d_classification", "synthetic_ct",
           "synthetic_multiclass", "write_ct_dataset", "write_nifti"]
