"""Compress a MONAI bundle into a new bundle: ``monai-prune compress-bundle SRC --recipe R --out DST``.

The source bundle is never modified. Its ``configs/train.json`` is overlaid with a packaged (or user) recipe, the
trained dense ``models/model.pt`` is loaded, and the bundle's own trainer fine-tunes while our handlers compress,
in a private working copy. The result is a new bundle folder, written under a temporary name and renamed at the end
(nothing half-written on failure):

* ``models/model.ts`` (TorchScript; ``metadata.json`` and ``inference.json`` embedded under ``extra/`` as
  ``monai.bundle ckpt_export`` does), ``models/model.pt`` (state dict) + ``models/plan.json`` (replay the pruning on
  the freshly built network), ``models/model.onnx``, and with ``int8=`` the int8 artifact;
* ``configs/``: every config of the source, runnable with the stock ``python -m monai.bundle`` CLI as before
  (:mod:`.bundle_configs`): each ``network_def`` builds the dense network and replays ``models/plan.json`` on it, so
  the configs' own checkpoint loaders load the compressed ``model.pt``; with ``int8=``, ``inference_int8.json`` (an
  overlay of ``inference.json``) serves the int8 model; no ``--set`` local path is carried; a ``large_files.yml``
  that would download the dense model files over the compressed ones loses those entries;
* ``configs/metadata.json``: new version + changelog entry, ``eval_metrics`` as measured here (the source's
  published ones kept apart), the versions of monai/torch/numpy and packages used, a ``compression`` section (recipe, plan checksum,
  calibration hash, params/MACs/size before -> after, measured latency ratio of the bundle's whole inferer and of
  one network call, the evaluator's metrics and per-class metrics before -> after), the sha256 of every model
  file (``model_files``) and of every other file in ``configs/`` (``config_files``, checked before deploy parses them);
* ``docs/fidelity_card.json`` / ``docs/fidelity_card.md``: the :class:`~monai_prune.fidelity.FidelityCard` (per-class
  before -> after, cost, backend agreement, worst cases, guardrails held or broken; its first line says PASS,
  DEGRADED or UNGUARDED), also under ``fidelity_card`` in the metadata's ``compression`` section;
* ``docs/README.md``: the same in words, the card included.

The package: :mod:`.checks` (recipes; everything checked before a run), :mod:`.workspace` (work folders, SIGTERM),
:mod:`.evaluate` (the bundle's own evaluator, inferer timing), :mod:`.settings` (:class:`CompressSettings`, the run's
arguments checked once), :mod:`.compress` (the run: checks, private config, fine-tuning, then the stages of
:mod:`.publish`: model files, measurements, agreement, guardrails, int8, configs, metadata, docs) and
:mod:`.artifacts` (the result's metadata and README). Every public name is importable from ``monai_prune.bundle``.
"""

from .._io import config_digests, sha256
from ..deploy.models import verify_model_files
from .checks import (CONFIG_EXTS, INT8_BACKENDS, NOT_FOR_TRAINING, RECIPES_DIR, check_bundle, check_inference_overrides,
                     list_recipes, recipe_path, refuse_nested)
from .compress import compress_bundle
from .evaluate import dense_network, validation_label_mode
from .settings import CompressSettings

__all__ = ["config_digests", "sha256", "verify_model_files", "CONFIG_EXTS", "INT8_BACKENDS", "NOT_FOR_TRAINING",
           "RECIPES_DIR", "check_bundle", "check_inference_overrides", "list_recipes", "recipe_path", "refuse_nested",
           "compress_bundle", "CompressSettings", "dense_network", "validation_label_mode"]
