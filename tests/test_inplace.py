"""Pruning inside a running training: the same module objects, an optimizer that still fits, training goes on."""

import pytest
import torch
from monai.losses import DiceCELoss

import monai_prune as mp
from monai_prune.pruning import prune_channels_inplace
from helpers.networks import small_unet

X = torch.zeros(1, 1, 32, 32, 32)


def _batch():
    return torch.randn(2, 1, 32, 32, 32), torch.randint(0, 2, (2, 1, 32, 32, 32))


def _train(model, optimizer, steps, scheduler=None):
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    losses = []
    for _ in range(steps):
        x, y = _batch()
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.Adam(p, lr=1e-3),
    lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9),
    lambda p: torch.optim.AdamW(p, lr=1e-3),
])
def test_training_continues_after_progressive_pruning(make_opt):
    model = small_unet()
    first_conv = model.model[0].conv.unit0.conv
    optimizer = make_opt(model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
    _train(model, optimizer, 2, scheduler)
    model.train()
    plan = prune_channels_inplace(model, X, 0.3, optimizer=optimizer)
    plan = prune_channels_inplace(model, X, 0.3, optimizer=optimizer, plan=plan)

    assert model.model[0].conv.unit0.conv is first_conv  # the trainer's references stay valid
    assert first_conv.out_channels < 8 and model.training
    held = [p for g in optimizer.param_groups for p in g["params"]]
    assert {id(p) for p in held} == {id(p) for p in model.parameters()} and len(held) == len(list(model.parameters()))
    for param, state in optimizer.state.items():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                assert value.shape == param.shape
    losses = _train(model, optimizer, 2, scheduler)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert optimizer.param_groups[0]["lr"] < 1e-1  # the scheduler still drives the same optimizer

    # two steps accumulate into one plan that rebuilds the final network from the original constructor
    fresh = mp.apply_plan(small_unet(), plan)
    fresh.load_state_dict(model.state_dict())
    assert plan.config["steps_applied"] == 2


def test_adam_moments_are_sliced_not_reset():
    model = small_unet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    _train(model, optimizer, 1)
    conv = model.model[0].conv.unit0.conv
    moments = optimizer.state[conv.weight]["exp_avg"].clone()
    plan = prune_channels_inplace(model, X, 0.5, optimizer=optimizer)
    kept = next(s["kept"] for s in plan.steps if s["root"] == "model.0.conv.unit0.conv")
    assert torch.equal(optimizer.state[conv.weight]["exp_avg"], moments[kept])


def test_foreign_optimizer_is_refused():
    model = small_unet()
    optimizer = torch.optim.SGD(small_unet().parameters(), lr=0.1)
    widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    with pytest.raises(ValueError, match="nothing was pruned"):
        prune_channels_inplace(model, X, 0.5, optimizer=optimizer)
    assert [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv3d)] == widths
