"""The pruning plan: plain JSON, replayed on a fresh network, weights loaded with weights_only=True."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import monai_prune as mp
from monai_prune.errors import InputError, PlanMismatchError
from helpers.networks import small_unet


@pytest.fixture
def pruned_unet():
    model = small_unet().eval()
    x = torch.randn(1, 1, 32, 32, 32)
    pruned, plan = mp.prune_channels(model, x, ratio=0.5, network_def={
        "_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
        "channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 2, "norm": "batch"})
    return model, pruned, plan, x


def test_plan_is_plain_json_with_kept_channels(pruned_unet, tmp_path):
    _, pruned, plan, _ = pruned_unet
    path = plan.save(tmp_path / "plan.json")
    data = json.loads(open(path).read())
    assert data["format"] == 1 and data["versions"]["torch"] and data["versions"]["torch-pruning"]
    step = data["steps"][0]
    assert len(step["kept"]) == step["channels_before"] - len(step["ops"][0]["idxs"])
    # the root layer of every step ends with exactly its kept channels
    modules = dict(pruned.named_modules())
    for step in data["steps"]:
        assert modules[step["root"]].out_channels == len(step["kept"])
    assert mp.PruningPlan.load(path).to_dict() == plan.to_dict()


def test_replay_in_another_process_is_bit_identical(pruned_unet, tmp_path):
    _, pruned, plan, x = pruned_unet
    plan.save(tmp_path / "plan.json")
    torch.save(pruned.state_dict(), tmp_path / "model.pt")
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = pruned.eval()(x)
    script = textwrap.dedent(f"""
        import torch, monai_prune
        from monai.networks.nets import UNet
        net = UNet(3, 1, 2, (8, 16, 32, 64), (2, 2, 2), num_res_units=2, norm="batch")
        net = monai_prune.apply_plan(net, monai_prune.PruningPlan.load({str(tmp_path / 'plan.json')!r}))
        net.load_state_dict(torch.load({str(tmp_path / 'model.pt')!r}, weights_only=True))
        net.eval()
        with torch.no_grad():
            torch.save(net(torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)), {str(tmp_path / 'y.pt')!r})
        # the plan also rebuilds the network by itself from its recorded network_def
        rebuilt = monai_prune.PruningPlan.load({str(tmp_path / 'plan.json')!r}).build_network()
        rebuilt.load_state_dict(torch.load({str(tmp_path / 'model.pt')!r}, weights_only=True))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    got = torch.load(tmp_path / "y.pt", weights_only=True)
    assert torch.equal(got, expected)


def test_plan_refuses_a_different_network(pruned_unet):
    _, _, plan, _ = pruned_unet
    from monai.networks.nets import UNet

    other = UNet(3, 1, 2, (8, 16, 32, 64), (2, 2, 2), num_res_units=1)
    with pytest.raises(PlanMismatchError, match="layout"):
        mp.apply_plan(other, plan)


def test_apply_plan_does_not_modify_its_input(pruned_unet):
    model, _, plan, _ = pruned_unet
    fresh = small_unet()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    mp.apply_plan(fresh, plan)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_bad_plan_files(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        mp.PruningPlan.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(InputError, match="not a monai-prune pruning plan"):
        mp.PruningPlan.load(tmp_path / "other.json")


def test_plan_checksum_changes_with_content(pruned_unet):
    _, _, plan, _ = pruned_unet
    before = plan.checksum
    plan.steps[0]["kept"] = plan.steps[0]["kept"][:-1]
    assert plan.checksum != before and len(before) == 64
