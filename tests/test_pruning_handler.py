"""PruningHandler in a stock MONAI SupervisedTrainer: shrinks the network on schedule, logs metrics, resumes."""

import logging

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.handlers import CheckpointLoader, CheckpointSaver, StatsHandler
from ignite.engine import Events
from monai.losses import DiceCELoss

import monai_prune as mp
from monai_prune.errors import ConfigError
from monai_prune.handlers import PruningHandler
from monai_prune.schedules import CubicSchedule, LinearSchedule
from helpers.engines import X, Lines, make_trainer
from helpers.networks import small_unet

def test_schedule_drives_pruning_in_a_supervised_trainer(tmp_path):
    net = small_unet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    trainer = make_trainer(net, opt, epochs=4)
    losses = []
    handler = PruningHandler(network=net, optimizer=opt, method="channel",
                             schedule=LinearSchedule(final=0.5, start_epoch=1, end_epoch=3), example_input=X)
    handler.attach(trainer)
    stats_lines = Lines()
    logging.getLogger("prune_stats").addHandler(stats_lines)
    logging.getLogger("prune_stats").setLevel(logging.INFO)
    StatsHandler(name="prune_stats", iteration_log=False, tag_name="loss").attach(trainer)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[0]["loss"])))
    macs0 = mp.count_macs(small_unet(), X)
    trainer.run()

    metrics = trainer.state.metrics
    assert metrics["prune_target"] == pytest.approx(0.5)
    assert abs(metrics["prune_sparsity"] - 0.5) < 0.07, metrics["prune_sparsity"]
    assert metrics["prune_macs"] == mp.count_macs(net, X) < 0.45 * macs0
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any("prune_sparsity" in line for line in stats_lines.lines)  # the stock StatsHandler logged our metric
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for p in net.parameters()}

    # a stock CheckpointSaver writes the pruned model + the handler; a fresh dense network resumes from it
    saver = CheckpointSaver(str(tmp_path), {"model": net, "pruner": handler, "optimizer": opt},
                           save_final=True, final_filename="ck.pt")
    saver.attach(trainer)
    saver.completed(trainer)
    fresh = small_unet()
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    fresh_handler = PruningHandler(network=fresh, optimizer=fresh_opt,
                                   schedule=LinearSchedule(final=0.5, start_epoch=1, end_epoch=3), example_input=X)
    resumed = make_trainer(fresh, fresh_opt, epochs=4)
    CheckpointLoader(str(tmp_path / "ck.pt"), {"pruner": fresh_handler, "model": fresh, "optimizer": fresh_opt},
                     map_location="cpu").attach(resumed)
    resumed.state.epoch = 0
    resumed._fire_event(Events.STARTED)  # CheckpointLoader acts on STARTED
    assert torch.load(tmp_path / "ck.pt", weights_only=True)  # loads safely
    fresh.eval(), net.eval()
    with torch.no_grad():
        assert torch.equal(fresh(torch.ones(1, 1, 32, 32, 32)), net(torch.ones(1, 1, 32, 32, 32)))
    assert fresh_handler.achieved == pytest.approx(0.5)


def test_bad_handler_arguments():
    net = small_unet()
    with pytest.raises(ConfigError, match="method must be one of"):
        PruningHandler(net, method="lottery", schedule=CubicSchedule(0.5, end_epoch=2), example_input=X)
    with pytest.raises(ConfigError, match="schedule must be"):
        PruningHandler(net, schedule=0.5, example_input=X)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    handler = PruningHandler(net, opt, schedule=CubicSchedule(0.5, start_epoch=1, end_epoch=8), example_input=X)
    with pytest.raises(ConfigError, match="training stops at 4"):
        handler.attach(make_trainer(net, opt, epochs=4))
    fits = CubicSchedule(0.5, start_epoch=1, end_epoch=2)
    with pytest.raises(ConfigError, match="needs optimizer="):
        PruningHandler(net, schedule=fits, example_input=X).attach(make_trainer(net, opt, epochs=4))
    with pytest.raises(ConfigError, match="different optimizer"):
        PruningHandler(net, torch.optim.SGD(net.parameters(), lr=0.1), schedule=fits,
                       example_input=X).attach(make_trainer(net, opt, epochs=4))
    other = small_unet()
    with pytest.raises(ConfigError, match="different network"):
        PruningHandler(other, opt, schedule=fits, example_input=X).attach(make_trainer(net, opt, epochs=4))
    with pytest.raises(ConfigError, match="importance for method='magnitude'"):
        PruningHandler(net, opt, method="magnitude", schedule=fits, importance="bn_scale")


@pytest.mark.parametrize("method, schedule, kwargs", [
    ("magnitude", LinearSchedule(final=0.8, start_epoch=1, end_epoch=2), {"scope": "global"}),
    ("nm", LinearSchedule(final=0.5, start_epoch=1, end_epoch=1), {"nm": (2, 4)}),
])
def test_sparsity_methods_keep_zeros_through_training(method, schedule, kwargs, tmp_path):
    net = small_unet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    trainer = make_trainer(net, opt, epochs=3)
    handler = PruningHandler(network=net, optimizer=opt, method=method, schedule=schedule, example_input=X, **kwargs)
    handler.attach(trainer)
    trainer.run()
    metrics = trainer.state.metrics
    assert metrics["prune_sparsity"] == pytest.approx(schedule.final, abs=0.01)  # measured after more training
    assert metrics["prune_macs"] == mp.count_macs(small_unet(), X)  # zeros do not shrink dense MACs
    # masks travel in the handler's state and load with weights_only=True
    torch.save(handler.state_dict(), tmp_path / "h.pt")
    fresh = PruningHandler(network=small_unet(), method=method, schedule=schedule, example_input=X, **kwargs)
    fresh.load_state_dict(torch.load(tmp_path / "h.pt", weights_only=True))
    assert set(fresh.masks) == set(handler.masks)


def test_nm_schedule_must_match_n_over_m():
    with pytest.raises(ConfigError, match="final sparsity"):
        PruningHandler(small_unet(), method="nm", schedule=LinearSchedule(final=0.7, end_epoch=1), nm=(2, 4))


def _run_with_checkpoints(tmp_path, epochs, resume_from=None, stop_after=None):
    torch.manual_seed(0)
    net = small_unet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    trainer = make_trainer(net, opt, epochs=epochs)
    handler = PruningHandler(network=net, optimizer=opt, method="channel",
                             schedule=CubicSchedule(final=0.6, start_epoch=1, end_epoch=4), example_input=X)
    handler.attach(trainer)
    objects = {"pruner": handler, "model": net, "optimizer": opt, "trainer": trainer}
    if resume_from is not None:
        CheckpointLoader(str(resume_from), objects, map_location="cpu").attach(trainer)
    CheckpointSaver(str(tmp_path), objects, save_interval=1, n_saved=None, epoch_level=True).attach(trainer)
    if stop_after is not None:  # training stops after this epoch's checkpoint
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after), lambda e: e.terminate())
    trainer.run()
    return net, handler


def test_stop_and_resume_in_process_reaches_the_same_network(tmp_path):
    """A run stopped in this process (``engine.terminate()``) after epoch 2 and resumed from its checkpoint into
    fresh objects ends like the uninterrupted run. A real SIGKILL of a separate process: ``test_kill_resume.py``."""
    straight, straight_handler = _run_with_checkpoints(tmp_path / "a", epochs=5)
    _run_with_checkpoints(tmp_path / "b", epochs=5, stop_after=2)
    checkpoint = next((tmp_path / "b").glob("*epoch=2*"))
    resumed, resumed_handler = _run_with_checkpoints(tmp_path / "c", epochs=5, resume_from=checkpoint)
    shapes = {k: v.shape for k, v in straight.state_dict().items()}
    assert shapes == {k: v.shape for k, v in resumed.state_dict().items()}
    assert [s["kept"] for s in straight_handler.plan.steps] == [s["kept"] for s in resumed_handler.plan.steps]
    assert resumed_handler.achieved == pytest.approx(0.6) == straight_handler.achieved
    assert straight_handler.measure()["prune_sparsity"] == pytest.approx(resumed_handler.measure()["prune_sparsity"])


def test_compression_stats_follow_the_shrinking_network():
    from monai_prune.handlers import CompressionStatsHandler

    net = small_unet()
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    trainer = make_trainer(net, opt, epochs=2)
    PruningHandler(network=net, optimizer=opt, schedule=LinearSchedule(final=0.5, start_epoch=1, end_epoch=1),
                   example_input=X).attach(trainer)
    CompressionStatsHandler(network=net, example_input=X).attach(trainer)
    trainer.run()
    m = trainer.state.metrics
    assert m["model_params"] == mp.count_params(net) and m["model_macs"] == mp.count_macs(net, X)
    assert m["model_params_ratio"] < 0.35 and m["model_size_bytes"] > 0 and m["model_zero_fraction"] < 0.01
    with pytest.raises(ConfigError, match="event must be"):
        CompressionStatsHandler(net, X, event="WHENEVER")


def test_unprunable_inputs_fail_when_the_handler_is_built():
    from monai.networks.nets import UNet

    net = small_unet()
    fits = LinearSchedule(final=0.5, start_epoch=1, end_epoch=1)
    everything = [n for n, m in net.named_modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    with pytest.raises(ConfigError, match="no prunable channel group"):
        PruningHandler(net, torch.optim.SGD(net.parameters(), lr=0.1), schedule=fits, example_input=X,
                       ignore=everything)
    odd = UNet(3, 1, 2, (6, 12, 24), (2, 2), num_res_units=1)  # 6 input channels: 4 does not divide them
    with pytest.raises(ConfigError, match="does not divide"):
        PruningHandler(odd, torch.optim.SGD(odd.parameters(), lr=0.1), method="nm", nm=(2, 4), schedule=fits)


def test_a_bad_channel_option_fails_when_the_handler_is_built():
    """`--set prune#importance=nonsense` in a bundle overlay: refused while the config is parsed, before training
    (ignite would otherwise log a traceback at the first pruning step)."""
    from monai.networks.nets import UNet

    from monai_prune.handlers import PruningHandler
    from monai_prune.schedules import LinearSchedule

    net = UNet(2, 1, 2, (4, 8), (2,))
    for options, message in (({"importance": "nonsense"}, "importance must be one of"),
                             ({"round_to": 0}, "round_to must be a positive integer")):
        with pytest.raises(ConfigError, match=message):
            PruningHandler(net, None, method="channel", schedule=LinearSchedule(final=0.5, start_epoch=1, end_epoch=2),
                           example_input=torch.zeros(1, 1, 16, 16), **options)
