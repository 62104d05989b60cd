"""Taylor importance accumulated over training iterations: the accumulator, its use by prune_channels and the
sparsity masks, and inside PruningHandler in a stock SupervisedTrainer."""

import logging

import pytest
import torch
from monai.losses import DiceCELoss

import monai_prune as mp
from monai_prune.errors import ConfigError
from monai_prune.handlers import PruningHandler
from monai_prune.importance import TaylorAccumulator
from monai_prune.schedules import LinearSchedule
from monai_prune.sparsity import magnitude_masks, nm_masks
from helpers.networks import small_unet
from helpers.engines import X, Lines, make_trainer

FIRST = "model.0.conv.unit0.conv"


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    label = (torch.rand(2, 1, 32, 32, 32, generator=g) > 0.7).float()
    return label + 0.3 * torch.randn(2, 1, 32, 32, 32, generator=g), label


def test_accumulator_sums_abs_weight_times_gradient_over_iterations():
    net = small_unet()
    acc = TaylorAccumulator(net)
    assert not acc.accumulate()  # no gradients yet: nothing added
    with pytest.raises(ConfigError, match="no gradients accumulated"):
        acc.scores()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    expected = {}
    for seed in (1, 2):
        net.zero_grad()
        x, y = _batch(seed)
        loss_fn(net(x), y).backward()
        for n, p in net.named_parameters():
            expected[n] = expected.get(n, 0) + (p.detach() * p.grad).abs()
        assert acc.accumulate()
    assert acc.iterations == 2
    scores = acc.scores()
    assert scores.keys() == expected.keys()
    for n in scores:
        assert torch.allclose(scores[n], expected[n])
    restored = TaylorAccumulator(net)
    restored.load_state_dict(acc.state_dict())
    assert all(torch.equal(restored.scores()[n], scores[n]) for n in scores)


def test_prune_channels_ranks_channels_by_accumulated_scores():
    net = small_unet()
    scores = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    scores[f"{FIRST}.weight"][4:] = 1.0  # only output channels 4..7 of the first convolution matter
    _, by_taylor = mp.prune_channels(net, X, ratio=0.5, importance="taylor", taylor_scores=scores)
    _, by_l1 = mp.prune_channels(net, X, ratio=0.5, importance="l1")

    def kept(plan):
        step = next(s for s in plan.steps if any(op["module"] == FIRST and op["side"] == "out" for op in s["ops"]))
        return step["kept"]

    assert kept(by_taylor) == [4, 5, 6, 7]
    assert kept(by_l1) != [4, 5, 6, 7]  # the weights alone would have chosen otherwise


def test_masks_follow_scores_instead_of_magnitude():
    net = small_unet()
    name = "model.1.submodule.0.conv.unit0.conv.weight"
    w = dict(net.named_parameters())[name]
    inverse = {name: 1.0 / (w.detach().abs() + 1e-6)}  # the smallest weights matter most
    masks = magnitude_masks(net, 0.5, layers=["model.1.submodule.0.conv.unit0.conv"], scores=inverse)
    kept = w.detach().abs()[masks[name]]
    dropped = w.detach().abs()[~masks[name]]
    assert kept.max() <= dropped.min()
    nm = nm_masks(net, 2, 4, layers=["model.1.submodule.0.conv.unit0.conv"], scores=inverse)
    by_magnitude = nm_masks(net, 2, 4, layers=["model.1.submodule.0.conv.unit0.conv"])
    assert not (nm[name] & by_magnitude[name]).any()  # exactly the complementary half of every group of 4
    with pytest.raises(ConfigError, match="do not match"):
        magnitude_masks(net, 0.5, scores={name: torch.ones(3)})


@pytest.mark.parametrize("method", ["channel", "magnitude"])
def test_handler_prunes_by_taylor_accumulated_between_steps(method):
    net = small_unet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    trainer = make_trainer(net, opt, epochs=4)  # 2 iterations per epoch
    lines = Lines()
    logging.getLogger("taylor_test").addHandler(lines)
    logging.getLogger("taylor_test").setLevel(logging.INFO)
    handler = PruningHandler(network=net, optimizer=opt, method=method, importance="taylor", example_input=X,
                             schedule=LinearSchedule(final=0.5, start_epoch=1, end_epoch=3), name="taylor_test")
    handler.attach(trainer)
    trainer.run()
    steps = [line for line in lines.lines if "Taylor importance over" in line]
    # targets 0.25 after epoch 2 (scores summed over epochs 1-2) and 0.5 after epoch 3 (epoch 3 only)
    assert len(steps) == 2 and "over 4 iterations" in steps[0] and "over 2 iterations" in steps[1], steps
    metrics = trainer.state.metrics
    assert abs(metrics["prune_sparsity"] - 0.5) < 0.07
    if method == "channel":
        assert metrics["prune_macs"] < 0.45 * mp.count_macs(small_unet(), X)
    assert handler.taylor.iterations == 2  # the last epoch, accumulated after the final step
