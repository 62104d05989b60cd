"""``QuantizationAwareTrainingHandler``: int8 quantization-aware fine-tuning in a MONAI trainer, in phases."""

from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

import torch
from ignite.engine import Engine, Events
from torch import nn

from ..distributed import broadcast_from_rank0, rank, refresh_ddp, unwrap_ddp
from ..errors import ConfigError, InputError
from ..quantization.calibration import CalibrationSet
from ..quantization.qat import (add_to_optimizer, export_qat_openvino, freeze_batchnorm, freeze_ranges, is_qat,
                                openvino_int8_layers, prepare_qat, quantizer_count, quantizer_parameters,
                                restore_qat)
from ..utils import atomic_write_text

logger = logging.getLogger(__name__)


class QuantizationAwareTrainingHandler:
    """Fine-tune ``network`` with int8 fake-quantization, then write an OpenVINO int8 IR.

    Phases, each at ``Events.EPOCH_STARTED`` of its epoch (1-based, like ``engine.state.epoch``):

    * ``start_epoch``: NNCF fake-quantizers are inserted into the live network (same module and parameter objects:
      the trainer, evaluator, checkpoint saver and the pruning/distillation handlers keep working) and calibrated on
      ``calibration`` or, by default, on the first ``calibration_batches`` training batches; their scales join the
      optimizer as a new parameter group;
    * ``freeze_bn_epoch``: BatchNorm layers switch to their running statistics and stop updating them;
    * ``freeze_ranges_epoch``: the quantizer scales stop training; the last epochs adapt the weights only.

    At ``Events.COMPLETED`` (and on :meth:`export`) the network is converted to an OpenVINO IR at ``export_path``
    whose ``FakeQuantize`` nodes the OpenVINO CPU runtime executes in int8; ``<export_path>.json`` (``model_int8.json``
    beside ``model_int8.xml``) records which layers are int8, the phases and the NNCF quantizer config.

    Compose with :class:`~monai_prune.handlers.PruningHandler` by ending the pruning schedule before
    ``start_epoch`` (quantizer scales are per channel: channels must not change afterwards; checked at start), and
    with :class:`~monai_prune.handlers.DistillationHandler` freely (the teacher stays fp32).

    ``engine.state.metrics`` gets ``qat_active``, ``qat_bn_frozen``, ``qat_ranges_frozen`` (0/1) and
    ``qat_quantizers``.

    Args:
        network: the trainer's network (a DDP wrapper is unwrapped and rebuilt in place for the new parameters).
        optimizer: the trainer's optimizer (the quantizer scales are added to it).
        start_epoch: first epoch trained with fake-quantization.
        freeze_bn_epoch: first epoch with frozen BatchNorm statistics (None: never).
        freeze_ranges_epoch: first epoch with frozen quantizer scales (None: never).
        calibration: a :class:`~monai_prune.quantization.CalibrationSet` or list of input batches; None: the first
            ``calibration_batches`` batches of the trainer's data loader.
        calibration_batches: how many training batches calibrate the quantizers when ``calibration`` is None.
        keep_fp32: torch module names left in fp32 (see :func:`monai_prune.quantization.qat.prepare_qat`).
        preset: ``"mixed"`` or ``"performance"``.
        export_path: where the OpenVINO int8 IR goes at the end of training (``.xml``); None: no export.
        example_input: an input shaped like one network input, for the export; default: one calibration sample.
        name: logger name; default: the engine's logger.

    Checkpoints: ``state_dict()`` holds the phase flags and the quantizer config. To resume, load the handler's
    state before the network's and the optimizer's (``CheckpointLoader(load_dict={"qat": handler, "model": net,
    "optimizer": opt})``): it rebuilds the quantizers (and their optimizer group) so the weights load next.
    """

    def __init__(self, network: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, start_epoch: int = 1,
                 freeze_bn_epoch: Optional[int] = None, freeze_ranges_epoch: Optional[int] = None,
                 calibration: Any = None, calibration_batches: int = 4, keep_fp32: Sequence[str] = (),
                 preset: str = "mixed", export_path: Optional[str] = None,
                 example_input: Optional[torch.Tensor] = None, name: Optional[str] = None) -> None:
        if not isinstance(network, nn.Module):
            raise InputError(f"network must be a torch.nn.Module, got {type(network).__name__}")
        for key, value in (("start_epoch", start_epoch), ("freeze_bn_epoch", freeze_bn_epoch),
                           ("freeze_ranges_epoch", freeze_ranges_epoch)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{key} must be an epoch number >= 1, got {value!r}")
        for key, value in (("freeze_bn_epoch", freeze_bn_epoch), ("freeze_ranges_epoch", freeze_ranges_epoch)):
            if value is not None and value < start_epoch:
                raise ConfigError(f"{key}={value} is before start_epoch={start_epoch}: phases go start -> freeze")
        if not isinstance(calibration_batches, int) or calibration_batches < 1:
            raise ConfigError(f"calibration_batches must be a positive integer, got {calibration_batches!r}")
        if calibration is not None and not isinstance(calibration, (CalibrationSet, list, tuple)):
            raise ConfigError("calibration must be a CalibrationSet (monai_prune.quantization.calibration_data) or a "
                              "list of input batches")
        if export_path is not None and not str(export_path).endswith(".xml"):
            raise ConfigError(f"export_path is an OpenVINO IR and must end in .xml, got {export_path}")
        if preset not in ("mixed", "performance"):
            raise ConfigError(f"preset must be 'mixed' or 'performance', got {preset!r}")
        self.wrapper = network if unwrap_ddp(network) is not network else None
        self.network = unwrap_ddp(network)
        self.optimizer = optimizer
        self.start_epoch, self.freeze_bn_epoch, self.freeze_ranges_epoch = start_epoch, freeze_bn_epoch, \
            freeze_ranges_epoch
        self.calibration, self.calibration_batches = calibration, calibration_batches
        self.keep_fp32, self.preset = list(keep_fp32), preset
        self.export_path, self.example_input = export_path, example_input
        self.logger = logging.getLogger(name) if name else None
        self.config: Optional[Dict[str, Any]] = None
        self.bn_frozen = self.ranges_frozen = False
        self.exported: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------ ignite protocol
    def attach(self, engine: Engine) -> None:
        if self.logger is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self._check_engine)
        engine.add_event_handler(Events.EPOCH_STARTED, self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._report)
        if self.export_path is not None:
            engine.add_event_handler(Events.COMPLETED, lambda e: self.export())

    def _check_engine(self, engine: Engine) -> None:
        from .pruning_handler import PruningHandler

        trained = getattr(engine, "network", None)
        if trained is not None and unwrap_ddp(trained) is not self.network:
            raise ConfigError("QuantizationAwareTrainingHandler was given a different network than the one this "
                              "engine runs (engine.network); in a bundle: \"network\": \"@network\"")
        engine_opt = getattr(engine, "optimizer", None)
        if engine_opt is not None and self.optimizer is not engine_opt:
            raise ConfigError("QuantizationAwareTrainingHandler needs the trainer's optimizer (optimizer=, in a bundle "
                              "\"@optimizer\") to train the quantizer scales")
        max_epochs = engine.state.max_epochs
        if max_epochs is not None and self.start_epoch > max_epochs:
            raise ConfigError(f"QAT starts at epoch {self.start_epoch} but training stops at epoch {max_epochs}")
        epoch_length = engine.state.epoch_length
        for handlers in engine._event_handlers.values():
            for handler, _, _ in handlers:
                pruner = getattr(handler, "__self__", handler)
                if not isinstance(pruner, PruningHandler) or pruner.method != "channel":
                    continue
                end = pruner.schedule.end
                if pruner.schedule.unit == "iteration":  # last pruning step, in epochs
                    end = -(-end // epoch_length) if epoch_length else end
                if end >= self.start_epoch:
                    raise ConfigError(f"channel pruning runs until epoch {end} but QAT starts at epoch "
                                      f"{self.start_epoch}: end the pruning schedule before QAT (quantizer scales are "
                                      "per channel)")

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch >= self.start_epoch and not is_qat(self.network):
            self._start(engine)
        if self.freeze_bn_epoch is not None and epoch >= self.freeze_bn_epoch and not self.bn_frozen:
            layers = freeze_batchnorm(self.network)
            self.bn_frozen = True
            self.logger.info("epoch %d: QAT froze %d BatchNorm layers (running statistics from now on)", epoch, layers)
        if self.freeze_ranges_epoch is not None and epoch >= self.freeze_ranges_epoch and not self.ranges_frozen:
            params = freeze_ranges(self.network)
            self.ranges_frozen = True
            self.logger.info("epoch %d: QAT froze the ranges of the quantizers (%d parameters)", epoch, params)
        self._report(engine)

    def _start(self, engine: Engine) -> None:
        calibration = self.calibration if self.calibration is not None else self._training_batches(engine)
        if self.example_input is None:
            first = calibration.samples[0] if isinstance(calibration, CalibrationSet) else calibration[0]
            self.example_input = first[:1].detach().cpu().clone()

        def decide():  # rank 0 calibrates; every rank gets the same quantizers and weights
            clone = copy.deepcopy(self.network)  # a failure leaves the trained network untouched
            config = prepare_qat(clone, calibration, keep_fp32=self.keep_fp32, preset=self.preset)
            return config, {k: v.cpu() for k, v in clone.state_dict().items()}

        config, state = broadcast_from_rank0(decide)
        restore_qat(self.network, config)
        self.network.load_state_dict(state)
        self.config = config
        if self.optimizer is not None:
            add_to_optimizer(self.optimizer, quantizer_parameters(self.network))
        refresh_ddp(self.wrapper)
        self.logger.info("epoch %d: QAT started: %d fake-quantizers, %d trainable scales", engine.state.epoch,
                         quantizer_count(self.network), len(quantizer_parameters(self.network)))

    def _training_batches(self, engine: Engine) -> List[torch.Tensor]:
        loader = engine.data_loader if hasattr(engine, "data_loader") else engine.state.dataloader
        prepare = getattr(engine, "prepare_batch", None)
        batches: List[torch.Tensor] = []
        for batch in loader:
            if prepare is not None:
                inputs = prepare(batch, engine.state.device, getattr(engine, "non_blocking", False))[0]
            else:
                inputs = batch["image"] if isinstance(batch, dict) else batch[0]
            batches.append(torch.as_tensor(inputs).detach().float())
            if len(batches) >= self.calibration_batches:
                break
        if not batches:
            raise ConfigError("the trainer's data loader gave no batches to calibrate QAT: give calibration=")
        return batches

    def _report(self, engine: Engine) -> None:
        engine.state.metrics.update(
            qat_active=float(is_qat(self.network)), qat_bn_frozen=float(self.bn_frozen),
            qat_ranges_frozen=float(self.ranges_frozen), qat_quantizers=float(quantizer_count(self.network)))

    # ------------------------------------------------------------------ export
    def export(self, path: Optional[str] = None) -> Dict[str, Any]:
        """Write the OpenVINO int8 IR (and ``<name>.json`` beside it); returns what was written."""
        path = path or self.export_path
        if path is None:
            raise ConfigError("no export path: give export_path= or export(path)")
        if not is_qat(self.network):
            raise ConfigError("QAT never started (training ended before start_epoch): nothing to export")
        if rank() != 0:
            return {}
        result = export_qat_openvino(self.network, self.example_input, path)
        layers = openvino_int8_layers(result.path)
        info = {"path": result.path, "size_bytes": result.size_bytes, "int8_layers": layers["int8"],
                "fp32_layers": layers["fp32"], "keep_fp32": self.keep_fp32, "preset": self.preset,
                "phases": {"start_epoch": self.start_epoch, "freeze_bn_epoch": self.freeze_bn_epoch,
                           "freeze_ranges_epoch": self.freeze_ranges_epoch},
                "nncf_config": self.config}
        atomic_write_text(os.path.splitext(result.path)[0] + ".json", json.dumps(info, indent=1, default=str))
        self.exported = info
        self.logger.info("QAT int8 OpenVINO IR written to %s (%d layers int8, %d fp32, %.2f MB)", result.path,
                         len(layers["int8"]), len(layers["fp32"]), result.size_bytes / 1e6)
        return info

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        return {"config": json.dumps(self.config) if self.config is not None else "",
                "bn_frozen": self.bn_frozen, "ranges_frozen": self.ranges_frozen}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Rebuild the quantizers of a QAT checkpoint on the (fresh) network so its weights load next."""
        if state.get("config") and not is_qat(self.network):
            self.config = json.loads(state["config"])
            restore_qat(self.network, self.config)
            if self.optimizer is not None:
                add_to_optimizer(self.optimizer, quantizer_parameters(self.network))
        if state.get("bn_frozen") and not self.bn_frozen:
            freeze_batchnorm(self.network)
            self.bn_frozen = True
        if state.get("ranges_frozen") and not self.ranges_frozen:
            freeze_ranges(self.network)
            self.ranges_frozen = True
        refresh_ddp(self.wrapper)

