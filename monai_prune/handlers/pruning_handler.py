"""``PruningHandler``: progressive structured channel pruning inside a MONAI/ignite trainer."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import torch
from monai.utils import optional_import
from torch import nn

from ..distributed import broadcast_from_rank0, rank, refresh_ddp, unwrap_ddp
from ..errors import ConfigError, InputError, PlanMismatchError
from ..importance import TaylorAccumulator
from ..layers import channel_sparsity, layer_widths
from ..measure import count_macs, count_params
from ..pruning.channel import prune_channels, pruning_config
from ..pruning.inplace import apply_plan_inplace, prune_channels_inplace
from ..pruning.plan import PruningPlan, architecture_signature
from ..quantization.qat import is_qat
from ..schedules import SparsitySchedule
from ..sparsity import MaskKeeper, magnitude_masks, measured_sparsity, nm_masks

Events, _ = optional_import("ignite.engine", name="Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", name="Engine")

METHODS = ("channel", "magnitude", "nm")


class PruningHandler:
    """Compress ``network`` as training goes, following ``schedule``.

    ``method="channel"``: at each step where the schedule's target rises, the channels needed to reach it are
    removed from the live network (same module objects) and the optimizer's parameter groups and state are
    rebuilt for the kept channels. ``method="magnitude"``: weights with the smallest |w| are masked to zero
    (``scope`` local or global), the masks re-applied after every optimizer step. ``method="nm"``: N:M masks
    (``nm=(2, 4)``) from the schedule's first step; the schedule's final sparsity must be 1 - N/M.
    ``engine.state.metrics`` gets ``prune_target``, ``prune_sparsity`` (measured: fraction of prunable output
    channels removed, or of weights zeroed), ``prune_params`` and ``prune_macs``, so stock
    Stats/TensorBoard/MLflow handlers log them. Zeros do not reduce dense MACs, and the metrics say so.

    Args:
        network: the network the trainer trains.
        optimizer: the trainer's optimizer (rebuilt after every pruning step); None when not training.
        method: ``"channel"`` (structured channel pruning).
        schedule: a :mod:`monai_prune.schedules` schedule; epoch schedules act on ``EPOCH_COMPLETED``,
            iteration schedules on ``ITERATION_COMPLETED``.
        example_input: a tensor shaped like one network input (for tracing and MAC counts; required for
            ``"channel"``).
        importance: channel importance (:func:`monai_prune.prune_channels`: ``"l1"``, ``"l2"``, ``"bn_scale"``,
            ``"random"``, ``"taylor"``); for ``"magnitude"``/``"nm"``: ``"l1"`` (|w|) or ``"taylor"``. With
            ``"taylor"`` the handler sums |w * dL/dw| after every training iteration and prunes by those sums at
            the next step (then starts summing again).
        round_to, ignore: passed to :func:`monai_prune.prune_channels`.
        scope, include_bias: for ``"magnitude"``: per-layer (``"local"``) or one global threshold; biases too.
        nm: ``(N, M)`` for ``"nm"``.
        permanent: at the end of training stop re-applying masks (the zeros stay in the weights).
        evaluator: the validation evaluator (``@validate#evaluator``). After every change of architecture its best
            metric and the key-metric tracking of its ``CheckpointSaver`` restart, so the "best" checkpoint is
            always one of the current (final) architecture, never a larger network from earlier in the schedule.
        plan_path: write the accumulated :class:`~monai_prune.PruningPlan` here (atomically) after every step,
            e.g. next to the bundle's ``models/model.pt``; with it, the checkpoint's weights load into
            ``apply_plan(network, plan)``.
        network_def: the network's constructor config (a plain dict in bundle syntax, as read from the bundle's
            ``train.json``), stored in the plan so that ``plan.build_network()`` rebuilds the pruned network alone.
        name: logger name; default: the engine's logger.

    Multi-process: under ``torchrun`` pass the ``DistributedDataParallel`` wrapper (or its module) as
    ``network``. Channels and masks are chosen on rank 0 and broadcast, so every rank prunes the same, and the
    wrapper is rebuilt in place for the new parameters (same object: the trainer and evaluator keep working).

    Checkpoints: ``state_dict()`` holds the accumulated plan, the sparsity reached and any masks. To resume, load the
    handler's state before the network's weights (``CheckpointLoader(load_dict={"pruner": handler, "model":
    net, "optimizer": opt})``): it replays the plan on the freshly built network first.
    """

    def __init__(
        self,
        network: nn.Module,
        optimizer: Optional[torch.optim.Optimizer] = None,
        method: str = "channel",
        schedule: Optional[SparsitySchedule] = None,
        example_input: Optional[torch.Tensor] = None,
        importance: str = "l1",
        round_to: Optional[int] = None,
        ignore: Optional[List[str]] = None,
        scope: str = "local",
        include_bias: bool = False,
        nm: tuple = (2, 4),
        permanent: bool = True,
        evaluator: Optional[Engine] = None,
        plan_path: Optional[str] = None,
        network_def: Optional[Dict[str, Any]] = None,
        name: Optional[str] = None,
    ) -> None:
        if not isinstance(network, nn.Module):
            raise InputError(f"network must be a torch.nn.Module, got {type(network).__name__}")
        if method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
        if not isinstance(schedule, SparsitySchedule):
            raise ConfigError("schedule must be a monai_prune.schedules schedule, e.g. CubicSchedule(final=0.5, "
                              "start_epoch=1, end_epoch=8)")
        if method == "channel" and not isinstance(example_input, torch.Tensor):
            raise ConfigError("example_input must be a tensor shaped like one network input (for tracing)")
        if method != "channel" and importance not in ("l1", "taylor"):
            raise ConfigError(f"importance for method={method!r} is 'l1' (|w|) or 'taylor' (|w * dL/dw| accumulated "
                              f"over the iterations between steps), got {importance!r}")
        if method == "nm" and abs(schedule.final - (1 - nm[0] / nm[1])) > 1e-6:
            raise ConfigError(f"N:M {nm[0]}:{nm[1]} zeroes {1 - nm[0] / nm[1]:.3f} of the weights; give a schedule "
                              f"whose final sparsity is that (got {schedule.final})")
        self.wrapper = network if unwrap_ddp(network) is not network else None  # a DDP wrapper, rebuilt after pruning
        self.network = unwrap_ddp(network)
        self.optimizer, self.method, self.schedule = optimizer, method, schedule
        self.example_input = example_input
        self.options: Dict[str, Any] = {"importance": importance, "round_to": round_to, "ignore": list(ignore or [])}
        if method == "channel":  # a bad importance/round_to fails here, when the config is parsed, not mid-training
            pruning_config(0.0, **self.options)
        self.scope, self.include_bias, self.nm, self.permanent = scope, include_bias, tuple(nm), permanent
        if network_def is not None and not isinstance(network_def, dict):
            raise ConfigError("network_def must be the network's constructor config as a plain dict (e.g. read from the "
                              f"bundle's train.json), got {type(network_def).__name__}")
        self.evaluator, self.plan_path, self.network_def = evaluator, plan_path, network_def
        self.taylor = TaylorAccumulator(self.network) if importance == "taylor" else None
        self.masks: Dict[str, torch.Tensor] = {}
        self.keeper: Optional[MaskKeeper] = None
        self.logger = logging.getLogger(name) if name else None
        self.plan: Optional[PruningPlan] = None
        self.achieved = 0.0
        self._cost: Optional[Dict[str, float]] = None  # params/MACs, measured again only when the network changes
        self._widths0 = layer_widths(self.network)
        self._macs0 = self._precheck()
        self._params0 = count_params(self.network)

    def _precheck(self) -> int:
        """Fail now, not at the first pruning step mid-training: nothing prunable, N:M that does not fit.
        Returns the dense MACs on ``example_input`` (0 without one)."""
        if self.method == "channel":
            structure_only = {**self.options, "importance": "l1"}  # no gradients needed to find the groups
            _, plan = prune_channels(self.network, self.example_input, ratio=0.0, **structure_only)  # raises if none
            return plan.stats["macs_before"]
        if self.method == "nm":
            nm_masks(self.network, *self.nm)
        else:
            magnitude_masks(self.network, 0.0, scope=self.scope, include_bias=self.include_bias)
        return count_macs(self.network, self.example_input) if self.example_input is not None else 0

    # ------------------------------------------------------------------ ignite protocol
    def attach(self, engine: Engine) -> None:
        if self.logger is None:
            self.logger = engine.logger
        self._check_engine(engine)  # a trainer built from a bundle config has no network yet: checked again at start
        engine.add_event_handler(Events.STARTED, self._check_engine)
        max_epochs = engine.state.max_epochs
        if self.taylor is not None:  # before the pruning step of the same iteration
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        if self.schedule.unit == "epoch":
            if max_epochs is not None:
                self.schedule.check_fits(max_epochs)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        else:
            epoch_length = engine.state.epoch_length
            if max_epochs is not None and epoch_length is not None:
                self.schedule.check_fits(max_epochs * epoch_length)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        if self.method != "channel" and self.permanent:
            engine.add_event_handler(Events.COMPLETED, self._make_permanent)

    def _check_engine(self, engine: Engine) -> None:
        """The engine must train this network with this optimizer: else pruning would desynchronise them."""
        trained = getattr(engine, "network", None)
        if trained is not None and unwrap_ddp(trained) is not self.network:
            raise ConfigError("PruningHandler was given a different network than the one this engine runs "
                              "(engine.network); pass the trainer's network (in a bundle: \"network\": \"@network\")")
        engine_opt = getattr(engine, "optimizer", None)
        if engine_opt is not None and self.optimizer is None and self.method == "channel":
            raise ConfigError("PruningHandler(method='channel') on a trainer needs optimizer= (the trainer's optimizer) "
                              "so that it can be rebuilt for the pruned parameters")
        if engine_opt is not None and self.optimizer is not None and engine_opt is not self.optimizer:
            raise ConfigError("PruningHandler was given a different optimizer than the trainer's (engine.optimizer)")

    def _accumulate(self, engine: Engine) -> None:
        self.taylor.accumulate()

    def __call__(self, engine: Engine) -> None:
        step = engine.state.epoch if self.schedule.unit == "epoch" else engine.state.iteration
        target = self.schedule(step)
        if target > self.achieved + 1e-9:
            began = time.perf_counter()
            self._compress(target)
            self.achieved = target
            self._cost = None
            self.logger.info("%s %d: pruning step to %.3f took %.1f s%s", self.schedule.unit, step, target,
                             time.perf_counter() - began, f" (Taylor importance over {self.taylor.iterations} "
                             "iterations)" if self.taylor is not None else "")
            if self.taylor is not None:
                self.taylor.reset()
        metrics = self.measure()
        metrics["prune_target"] = target
        engine.state.metrics.update(metrics)
        if target > 0:
            self.logger.info("%s %d: %s target sparsity %.3f, measured %.3f, params %.3gM%s", self.schedule.unit, step,
                             self.method, target, metrics["prune_sparsity"], metrics["prune_params"] / 1e6,
                             f", MACs {metrics['prune_macs'] / 1e9:.3g}G" if "prune_macs" in metrics else "")

    def _compress(self, target: float) -> None:
        """Decide on rank 0 (the only rank under DDP), share the decision, apply it on every rank."""
        scores = self.taylor.scores() if self.taylor is not None else None
        if self.method == "channel" and is_qat(self.network):
            raise ConfigError("channel pruning after quantization-aware training started: the quantizer scales are "
                              "per channel; end the pruning schedule before the QAT start_epoch")
        if self.method == "channel":
            ratio = 1.0 - (1.0 - target) / (1.0 - self.achieved)
            was_training = self.network.training
            layer_ratios = self._layer_ratios(target)
            self.plan = prune_channels_inplace(self.network, self.example_input, ratio, optimizer=self.optimizer,
                                               plan=self.plan, taylor_scores=scores, layer_ratios=layer_ratios,
                                               **self.options)
            self.plan.network_def = self.network_def
            self.network.train(was_training)
            refresh_ddp(self.wrapper)
            if self.plan_path and rank() == 0:
                self.plan.save(self.plan_path)
            self._restart_best_metric()
            return
        if self.method == "magnitude":
            masks = broadcast_from_rank0(lambda: magnitude_masks(self.network, target, scope=self.scope,
                                                                 include_bias=self.include_bias, scores=scores))
        else:
            masks = broadcast_from_rank0(lambda: nm_masks(self.network, *self.nm, scores=scores))
        self._keep(masks)

    def _layer_ratios(self, target: float) -> Dict[str, float]:
        """Per-layer ratios that take each layer from its current width to round(original * (1 - target)).

        A uniform ratio per step would compound rounding over the schedule's steps (0.53 for a 0.5 target on a
        small UNet); aiming every step at the original widths lands the final step on the schedule's sparsity.
        torch-pruning keeps int(width * (1 - ratio)) channels, hence the half channel.
        """
        ratios = {}
        for name, width in layer_widths(self.network).items():
            keep = max(1, int(round(self._widths0[name] * (1.0 - target))))
            ratios[name] = 1.0 - (keep + 0.5) / width if width > keep else 0.0
        return ratios

    def _restart_best_metric(self) -> None:
        """The evaluator's best metric and key-metric checkpoints belong to the previous architecture: restart."""
        if self.evaluator is None:
            return
        self.evaluator.state.best_metric, self.evaluator.state.best_metric_epoch = -1, -1
        from monai.handlers import CheckpointSaver

        for handler, _, _ in self.evaluator._event_handlers.get(Events.EPOCH_COMPLETED, []):
            owner = getattr(handler, "__self__", None)
            if isinstance(owner, CheckpointSaver) and owner._key_metric_checkpoint is not None:
                owner._key_metric_checkpoint.reset()
        self.logger.info("architecture changed: best-metric tracking of the evaluator restarted")

    def _keep(self, masks: Dict[str, torch.Tensor]) -> None:
        if self.keeper is not None:
            self.keeper.remove()
        self.masks = masks
        self.keeper = MaskKeeper(self.network, self.optimizer, masks)

    def _make_permanent(self, engine: Engine) -> None:
        if self.keeper is not None:
            self.keeper.remove()
            self.logger.info("sparsity masks made permanent: %.3f of the masked weights are zero",
                             measured_sparsity(self.network, self.masks))

    # ------------------------------------------------------------------ measurement
    def measure(self) -> Dict[str, float]:
        """Measured now: channel sparsity over the prunable layers, params, MACs (and their ratios)."""
        if self.method == "channel":
            sparsity = channel_sparsity(self._widths0, layer_widths(self.network),
                                        self.plan.kept_layers if self.plan else ())
        else:
            sparsity = measured_sparsity(self.network, self.masks) if self.masks else 0.0
        if self._cost is None:  # a forward pass: not on every iteration, only after the network changed
            params = count_params(self.network)
            self._cost = {"prune_params": params, "prune_params_ratio": params / self._params0}
            if self.example_input is not None:
                macs = count_macs(self.network, self.example_input)  # dense MACs: zeros are still multiplied
                self._cost.update(prune_macs=macs, prune_macs_ratio=macs / self._macs0)
        return {"prune_sparsity": sparsity, **self._cost}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        state = {"plan": self.plan.to_json() if self.plan else "", "achieved": self.achieved, "masks": dict(self.masks)}
        if self.taylor is not None:
            state["taylor"] = self.taylor.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Replay the saved plan on the (freshly built, dense) network so its weights can load next."""
        plan = PruningPlan.from_dict(json.loads(state["plan"])) if state.get("plan") else None
        if plan is not None:
            if architecture_signature(self.network) != plan.source_signature:
                raise PlanMismatchError("the checkpoint's pruning plan does not fit this network: build the same "
                                        "dense network the checkpointed run started from")
            apply_plan_inplace(self.network, plan, self.optimizer)
        self.plan, self.achieved, self._cost = plan, float(state.get("achieved", 0.0)), None
        if state.get("masks"):
            self._keep(dict(state["masks"]))
        if self.taylor is not None and state.get("taylor"):
            self.taylor.load_state_dict(state["taylor"])
        refresh_ddp(self.wrapper)
