"""Quantization-aware training: a small 3D UNet is trained dense, then pruned (cubic schedule, with distillation)
and QAT-fine-tuned in one stock SupervisedTrainer run, exported to an OpenVINO int8 IR and run through
sliding-window inference; its Dice is measured against the dense fp32 model and the fp32 pruned one. Phases (start, freeze BN, freeze
ranges) act when they should, the state resumes, and misuse fails clearly."""

import copy
import json

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.inferers import sliding_window_inference
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from monai.utils import set_determinism

import monai_prune as mp
from monai_prune.errors import ConfigError
from monai_prune.handlers import DistillationHandler, PruningHandler, QuantizationAwareTrainingHandler
from monai_prune.quantization.qat import is_qat
from monai_prune.runtime import Predictor
from monai_prune.schedules import CubicSchedule
from helpers.spheres import SIZE, VAL, X, engines, unet

ROI = (SIZE,) * 3


def _dice_and_labels(predictor):
    """Foreground Dice over the validation volumes through sliding-window inference, and the label maps."""
    metric = DiceMetric(include_background=False, reduction="mean")
    labels = []
    with torch.no_grad():
        for item in VAL:
            logits = sliding_window_inference(item["image"][None], ROI, 1, predictor, overlap=0.25)
            pred = logits.argmax(1, keepdim=True)
            metric(one_hot(pred, 2), one_hot(item["label"][None].long(), 2))
            labels.append(pred)
    return float(metric.aggregate()), labels


@pytest.mark.slow
def test_pruned_then_qat_fine_tuned_unet_exports_a_real_int8_openvino_model(dense_spheres, tmp_path):
    dense_net, dense_dice = dense_spheres
    assert dense_dice > 0.6, dense_dice
    set_determinism(1)
    net = copy.deepcopy(dense_net)
    trainer, _, opt = engines(net, epochs=4, lr=1e-3, validate=False)
    pruner = PruningHandler(network=net, optimizer=opt, example_input=X,
                            schedule=CubicSchedule(final=0.5, start_epoch=1, end_epoch=1))
    snapshots = {}

    def before_qat(engine):  # the fp32 pruned network QAT starts from (attached before the QAT handler: runs first)
        snapshots["fp32"] = copy.deepcopy(net).eval()

    trainer.add_event_handler(Events.EPOCH_STARTED(once=2), before_qat)
    qat = QuantizationAwareTrainingHandler(network=net, optimizer=opt, start_epoch=2, freeze_bn_epoch=3,
                                           freeze_ranges_epoch=4, export_path=str(tmp_path / "model_int8.xml"))
    for handler in (pruner, DistillationHandler(network=net, alpha=0.5, temperature=2.0), qat):
        handler.attach(trainer)

    def record(tag):
        def grab(engine):
            bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d))
            scales = [p.detach().clone() for n, p in net.named_parameters() if n.startswith("__nncf")]
            snapshots[tag] = (scales, bn.running_mean.clone())
        return grab

    for epoch in (2, 3, 4):
        trainer.add_event_handler(Events.EPOCH_STARTED(once=epoch), record(f"start{epoch}"))
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=epoch), record(f"end{epoch}"))
    trainer.run()
    set_determinism(None)

    # phases: scales trained in epoch 2, BN statistics frozen from epoch 3, scales frozen in epoch 4
    scales = {k: v[0] for k, v in snapshots.items() if k != "fp32"}
    running = {k: v[1] for k, v in snapshots.items() if k != "fp32"}
    assert len(scales["start2"]) > 0 and opt.param_groups[-1]["weight_decay"] == 0.0
    assert any(not torch.equal(a, b) for a, b in zip(scales["start2"], scales["end2"]))
    assert not torch.equal(running["start2"], running["end2"])  # BN still learns in epoch 2
    assert torch.equal(running["start3"], running["end3"]) and torch.equal(running["start4"], running["end4"])
    assert all(torch.equal(a, b) for a, b in zip(scales["start4"], scales["end4"]))
    metrics = trainer.state.metrics
    assert metrics["qat_active"] == metrics["qat_bn_frozen"] == metrics["qat_ranges_frozen"] == 1.0
    assert metrics["qat_quantizers"] > 10 and metrics["prune_sparsity"] == pytest.approx(0.5, abs=0.01)

    # the int8 IR: written, most convolutions int8, runs in MONAI's sliding-window inferer on another shape
    info = json.loads((tmp_path / "model_int8.json").read_text())
    assert (tmp_path / "model_int8.xml").exists() and (tmp_path / "model_int8.bin").exists()
    assert len(info["int8_layers"]) >= 0.8 * (len(info["int8_layers"]) + len(info["fp32_layers"]))
    assert info["size_bytes"] < 0.5 * mp.state_dict_bytes(snapshots["fp32"])  # weights stored as int8
    assert info["phases"] == {"start_epoch": 2, "freeze_bn_epoch": 3, "freeze_ranges_epoch": 4}
    int8 = Predictor(str(tmp_path / "model_int8.xml"), backend="openvino")
    int8_dice, int8_labels = _dice_and_labels(int8)
    fp32_dice, fp32_labels = _dice_and_labels(snapshots["fp32"])
    fake_dice, fake_labels = _dice_and_labels(net.eval())
    agreement = float(np.mean([(a == b).float().mean() for a, b in zip(int8_labels, fake_labels)]))
    print(f"\nQAT: dense Dice {dense_dice:.4f}; pruned fp32 (before QAT) {fp32_dice:.4f}; after QAT, torch "
          f"fake-quant {fake_dice:.4f}, OpenVINO int8 IR {int8_dice:.4f} (voxel agreement with fake-quant "
          f"{agreement:.4f}); {len(info['int8_layers'])} layers int8, {len(info['fp32_layers'])} fp32")
    assert int8_dice >= dense_dice - 0.05, (dense_dice, int8_dice)  # pruned + int8 keeps the dense Dice
    assert int8_dice > fp32_dice  # QAT fine-tuning recovered what the last pruning step took
    assert agreement > 0.98

    # resume: a fresh pruned network + a new handler loaded from the state gives the same network
    fresh = mp.apply_plan(unet(), pruner.plan)
    fresh_opt = torch.optim.Adam(fresh.parameters(), 1e-3)
    again = QuantizationAwareTrainingHandler(network=fresh, optimizer=fresh_opt, start_epoch=2, freeze_bn_epoch=3)
    again.load_state_dict(qat.state_dict())
    fresh.load_state_dict(net.state_dict())
    fresh_opt.load_state_dict(opt.state_dict())
    assert is_qat(fresh) and len(fresh_opt.param_groups) == len(opt.param_groups)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(X), net.eval()(X))


def test_qat_misuse_fails_clearly(tmp_path):
    net = unet()
    for kwargs, match in (({"start_epoch": 0}, "epoch number"), ({"start_epoch": 3, "freeze_bn_epoch": 2}, "before"),
                          ({"export_path": str(tmp_path / "m.onnx")}, "must end in .xml"),
                          ({"calibration_batches": 0}, "positive"), ({"preset": "fast"}, "preset")):
        with pytest.raises(ConfigError, match=match):
            QuantizationAwareTrainingHandler(network=net, **kwargs)
    # pruning that would still run after QAT started is refused before training starts
    trainer, _, opt = engines(net, epochs=4)
    PruningHandler(network=net, optimizer=opt, example_input=X,
                   schedule=CubicSchedule(final=0.5, start_epoch=1, end_epoch=3)).attach(trainer)
    QuantizationAwareTrainingHandler(network=net, optimizer=opt, start_epoch=2).attach(trainer)
    with pytest.raises(ConfigError, match="end the pruning schedule before QAT"):
        trainer.run()
    # a handler for another optimizer, or QAT that would start after training ends
    trainer, _, opt = engines(unet(), epochs=2)
    QuantizationAwareTrainingHandler(network=trainer.network, optimizer=opt, start_epoch=3).attach(trainer)
    with pytest.raises(ConfigError, match="training stops at epoch 2"):
        trainer.run()
    assert not is_qat(trainer.network)
    with pytest.raises(ConfigError, match="never started"):
        QuantizationAwareTrainingHandler(network=net, export_path=str(tmp_path / "m.xml")).export()
