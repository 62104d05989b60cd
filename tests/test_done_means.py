"""Issue 4's acceptance test: a small 3D UNet trained on synthetic spheres with a stock SupervisedTrainer +
ValidationHandler + our handlers (cubic channel schedule removing >= 50% of the MACs, with distillation from the
dense network) keeps its validation Dice within 0.05 of the dense run, reaches exactly the schedule's sparsity,
shows its metrics through a stock StatsHandler, and resumes after an interruption to the same architecture."""

import copy
import logging

import pytest
from ignite.engine import Events
from monai.handlers import CheckpointLoader, CheckpointSaver, StatsHandler
from monai.utils import set_determinism

import monai_prune as mp
from monai_prune.handlers import DistillationHandler, PruningHandler
from monai_prune.schedules import CubicSchedule
from helpers.spheres import X, engines, unet
from helpers.engines import Lines

pytestmark = pytest.mark.slow
FINAL, START, END = 0.5, 1, 5


def _compressing(net, epochs):
    trainer, evaluator, opt = engines(net, epochs, lr=1e-3)
    pruner = PruningHandler(network=net, optimizer=opt, method="channel", example_input=X, evaluator=evaluator,
                            schedule=CubicSchedule(final=FINAL, start_epoch=START, end_epoch=END))
    distiller = DistillationHandler(network=net, alpha=0.5, temperature=2.0)
    pruner.attach(trainer)
    distiller.attach(trainer)
    return trainer, evaluator, opt, pruner, distiller


def test_scheduled_pruning_with_distillation_keeps_dice_and_removes_half_the_macs(dense_spheres):
    dense_net, dense_dice = dense_spheres
    assert dense_dice > 0.7, dense_dice  # the dense model learnt the task
    set_determinism(1)
    net = copy.deepcopy(dense_net)
    trainer, evaluator, _, pruner, _ = _compressing(net, epochs=12)
    lines = Lines()
    logging.getLogger("done_means_stats").addHandler(lines)
    logging.getLogger("done_means_stats").setLevel(logging.INFO)
    StatsHandler(name="done_means_stats", iteration_log=False, tag_name="loss").attach(trainer)
    trainer.run()
    set_determinism(None)

    metrics = trainer.state.metrics
    macs0 = mp.count_macs(dense_net, X)
    assert mp.count_macs(net, X) == metrics["prune_macs"] <= 0.5 * macs0
    assert metrics["prune_sparsity"] == pytest.approx(FINAL, abs=0.01)  # the schedule's final sparsity, measured
    assert metrics["prune_target"] == FINAL
    compressed_dice = evaluator.state.metrics["val_dice"]
    print(f"\ndone-means: dense Dice {dense_dice:.4f}, scheduled+KD Dice {compressed_dice:.4f}, MACs "
          f"{metrics['prune_macs'] / macs0:.3f} of dense, channel sparsity {metrics['prune_sparsity']:.4f}")
    assert compressed_dice >= dense_dice - 0.05, (dense_dice, compressed_dice)
    logged = "\n".join(lines.lines)
    for key in ("prune_sparsity", "prune_macs", "kd_agreement", "kd_loss"):
        assert key in logged, key  # the stock StatsHandler shows them


def test_interrupted_run_resumes_to_the_same_architecture_and_sparsity(dense_spheres, tmp_path):
    dense_net, _ = dense_spheres
    uninterrupted = copy.deepcopy(dense_net)
    trainer, _, _, _, _ = _compressing(uninterrupted, epochs=7)
    trainer.run()

    # killed after epoch 3 (mid-schedule); the stock CheckpointSaver kept its state each epoch
    first = copy.deepcopy(dense_net)
    trainer, _, opt, pruner, distiller = _compressing(first, epochs=7)
    saver = CheckpointSaver(str(tmp_path), {"trainer": trainer, "pruner": pruner, "distiller": distiller,
                                            "model": first, "optimizer": opt}, save_interval=1, n_saved=1,
                            epoch_level=True)
    saver.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=3), lambda e: e.terminate())
    trainer.run()
    assert trainer.state.epoch == 3
    ckpt = next(tmp_path.glob("*.pt"))

    # a new process would build the dense network again and load the checkpoint with stock CheckpointLoader
    resumed = unet()
    trainer, _, opt, pruner, distiller = _compressing(resumed, epochs=7)
    CheckpointLoader(str(ckpt), {"trainer": trainer, "pruner": pruner, "distiller": distiller, "model": resumed,
                                 "optimizer": opt}).attach(trainer)
    trainer.run()
    assert trainer.state.epoch == 7
    shapes = {k: v.shape for k, v in resumed.state_dict().items()}
    assert shapes == {k: v.shape for k, v in uninterrupted.state_dict().items()}
    assert trainer.state.metrics["prune_sparsity"] == pytest.approx(FINAL, abs=0.01)
    assert mp.count_macs(resumed, X) == mp.count_macs(uninterrupted, X)
