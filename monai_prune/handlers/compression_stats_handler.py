"""``CompressionStatsHandler``: put the network's measured size and cost into ``engine.state.metrics``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

import torch
from monai.utils import optional_import
from torch import nn

from ..errors import ConfigError, InputError
from ..layers import PRUNABLE_TYPES
from ..measure import count_macs, count_params, state_dict_bytes
from ..sparsity import measured_sparsity

Events, _ = optional_import("ignite.engine", name="Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", name="Engine")


class CompressionStatsHandler:
    """Measure the network at an event and publish it as metrics, for trainers and evaluators alike.

    Metrics (with ``prefix``, default ``"model_"``): ``params``, ``macs`` (per ``example_input``),
    ``size_bytes`` (state dict as saved), ``zero_fraction`` (exact zeros among weights of Conv/Linear layers),
    and ``params_ratio``/``macs_ratio`` against the values first measured. Stock ``StatsHandler``,
    ``TensorBoardStatsHandler`` and ``MLFlowHandler`` attached after it log them.

    Args:
        network: the network to measure (the same object the engine runs; pruned in place or not).
        example_input: a tensor shaped like one network input, for MACs.
        event: ignite event name to measure on (default ``"EPOCH_COMPLETED"``).
        prefix: metric name prefix.
        name: logger name; default: the engine's logger.
    """

    def __init__(self, network: nn.Module, example_input: torch.Tensor, event: str = "EPOCH_COMPLETED",
                 prefix: str = "model_", name: Optional[str] = None) -> None:
        if not isinstance(network, nn.Module):
            raise InputError(f"network must be a torch.nn.Module, got {type(network).__name__}")
        if not isinstance(example_input, torch.Tensor):
            raise ConfigError("example_input must be a tensor shaped like one network input")
        if not hasattr(Events, event):
            raise ConfigError(f"event must be an ignite Events name such as EPOCH_COMPLETED, got {event!r}")
        self.network, self.example_input, self.event, self.prefix = network, example_input, event, prefix
        self.logger = logging.getLogger(name) if name else None
        self.baseline = self.measure()

    def attach(self, engine: Engine) -> None:
        if self.logger is None:
            self.logger = engine.logger
        engine.add_event_handler(getattr(Events, self.event), self)

    def measure(self) -> dict:
        weights = [f"{n}.weight" if n else "weight" for n, m in self.network.named_modules()
                   if isinstance(m, PRUNABLE_TYPES)]
        return {"params": count_params(self.network), "macs": count_macs(self.network, self.example_input),
                "size_bytes": state_dict_bytes(self.network), "zero_fraction": measured_sparsity(self.network, weights)}

    def __call__(self, engine: Engine) -> None:
        now = self.measure()
        now["params_ratio"] = now["params"] / self.baseline["params"]
        now["macs_ratio"] = now["macs"] / self.baseline["macs"]
        engine.state.metrics.update({self.prefix + k: v for k, v in now.items()})
        self.logger.info("network: %.3gM params (%.2fx), %.3gG MACs (%.2fx), %.1f MB, %.1f%% zero weights",
                         now["params"] / 1e6, now["params_ratio"], now["macs"] / 1e9, now["macs_ratio"],
                         now["size_bytes"] / 1e6, 100 * now["zero_fraction"])
