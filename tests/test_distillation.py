"""Distillation: the loss formula by hand, and the handler inside a stock SupervisedTrainer with pruning."""

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from monai_prune.distill import DistillationLoss, kd_divergence
from monai_prune.errors import ConfigError
from monai_prune.handlers import DistillationHandler, PruningHandler
from monai_prune.schedules import LinearSchedule
from helpers.networks import small_unet
from helpers.engines import X, make_trainer


def test_kd_term_matches_a_hand_computation():
    s, t = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 4, 4, 4)
    T = 2.0
    p_t = F.softmax(t / T, dim=1)
    by_hand = (p_t * (p_t.log() - F.log_softmax(s / T, dim=1))).sum(1).mean() * T * T
    assert kd_divergence(s, t, T) == pytest.approx(float(by_hand), rel=1e-5)
    assert float(kd_divergence(t, t, T)) == pytest.approx(0.0, abs=1e-6)
    loss = DistillationLoss(lambda p, y: torch.tensor(1.0), alpha=lambda epoch: 0.1 * epoch, temperature=T)
    loss.epoch, loss.teacher_output = 3, t
    assert float(loss(s, None)) == pytest.approx(1.0 + 0.3 * float(by_hand), rel=1e-5)
    assert loss.teacher_output is None  # consumed: never reused for the next batch
    with pytest.raises(ConfigError, match="temperature"):
        DistillationLoss(lambda p, y: 0, temperature=0)


def test_distillation_with_progressive_pruning_in_a_supervised_trainer():
    net = small_unet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    trainer = make_trainer(net, opt, epochs=3)
    kd = DistillationHandler(network=net, alpha=0.5, temperature=2.0)
    teacher_before = {k: v.clone() for k, v in kd.teacher.state_dict().items()}
    PruningHandler(network=net, optimizer=opt, schedule=LinearSchedule(final=0.5, start_epoch=1, end_epoch=2),
                   example_input=X).attach(trainer)
    kd.attach(trainer)
    assert isinstance(trainer.loss_function, DistillationLoss) and isinstance(kd.loss.task_loss, DiceCELoss)
    trainer.run()
    metrics = trainer.state.metrics
    assert 0.0 <= metrics["kd_agreement"] <= 1.0 and metrics["kd_loss"] >= 0.0
    assert metrics["prune_sparsity"] > 0.4
    assert all(torch.equal(v, kd.teacher.state_dict()[k]) for k, v in teacher_before.items())  # teacher frozen
    assert torch.isfinite(torch.tensor(trainer.state.output[0]["loss"]))


def test_reverse_direction_and_bad_direction():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    p_s = F.softmax(s / 2, dim=1)
    by_hand = (p_s * (p_s.log() - F.log_softmax(t / 2, dim=1))).sum(1).mean() * 4
    assert kd_divergence(s, t, 2.0, "student_teacher") == pytest.approx(float(by_hand), rel=1e-5)
    assert float(kd_divergence(s, t, 2.0, "student_teacher")) != pytest.approx(float(kd_divergence(s, t, 2.0)))
    with pytest.raises(ConfigError, match="direction"):
        DistillationHandler(small_unet(), direction="sideways")


def test_teacher_is_the_network_as_training_starts_and_resumes_from_the_handler_state(tmp_path):
    from monai.handlers import CheckpointLoader

    trained = small_unet()
    torch.nn.init.constant_(trained.model[0].conv.unit0.conv.weight, 0.01)  # stands for "trained weights"
    torch.save(trained.state_dict(), tmp_path / "dense.pt")
    net = small_unet()  # random init, as a bundle builds it; the stock loader fills in the trained weights
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    trainer = make_trainer(net, opt, epochs=2)
    CheckpointLoader(str(tmp_path / "dense.pt"), {"model": net}).attach(trainer)
    kd = DistillationHandler(network=net)
    kd.attach(trainer)
    pruner = PruningHandler(network=net, optimizer=opt, schedule=LinearSchedule(final=0.5, start_epoch=1, end_epoch=1),
                            example_input=X)
    pruner.attach(trainer)
    trainer.run()
    assert torch.equal(kd.teacher.model[0].conv.unit0.conv.weight, trained.model[0].conv.unit0.conv.weight)
    torch.save({"pruner": pruner.state_dict(), "distiller": kd.state_dict(), "model": net.state_dict()},
               tmp_path / "ck.pt")

    # resumed: the network is pruned when training starts; the teacher comes back from the checkpoint
    fresh = small_unet()
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    resumed = make_trainer(fresh, fresh_opt, epochs=3)
    fresh_pruner = PruningHandler(network=fresh, optimizer=fresh_opt, example_input=X,
                                  schedule=LinearSchedule(final=0.5, start_epoch=1, end_epoch=1))
    fresh_kd = DistillationHandler(network=fresh)
    CheckpointLoader(str(tmp_path / "ck.pt"), {"pruner": fresh_pruner, "distiller": fresh_kd, "model": fresh}).attach(
        resumed)
    fresh_kd.attach(resumed)
    fresh_pruner.attach(resumed)
    resumed.run()
    assert torch.equal(fresh_kd.teacher.model[0].conv.unit0.conv.weight, trained.model[0].conv.unit0.conv.weight)

    # without the teacher's state the resumed run cannot know the dense teacher: a clear error at start
    again = small_unet()
    again_opt = torch.optim.Adam(again.parameters(), lr=1e-3)
    broken = make_trainer(again, again_opt, epochs=3)
    again_pruner = PruningHandler(network=again, optimizer=again_opt, example_input=X,
                                  schedule=LinearSchedule(final=0.5, start_epoch=1, end_epoch=1))
    CheckpointLoader(str(tmp_path / "ck.pt"), {"pruner": again_pruner, "model": again}).attach(broken)
    DistillationHandler(network=again).attach(broken)
    with pytest.raises(Exception, match="already compressed"):
        broken.run()
