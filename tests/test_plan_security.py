"""A pruning plan is data (issue 15): an edited plan never runs code on load, and a malformed one is one clear error."""

import json
import os

import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from monai_prune import PruningPlan, prune_channels
from monai_prune.errors import InputError, PlanMismatchError, PlanSecurityError

NET = {"_target_": "UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2, "channels": [8, 16],
       "strides": [2], "num_res_units": 1}


@pytest.fixture(scope="module")
def plan_dict():
    torch.manual_seed(0)
    net = UNet(2, 1, 2, (8, 16), (2,), num_res_units=1)
    _, plan = prune_channels(net, torch.rand(1, 1, 32, 32), ratio=0.5, network_def=NET)
    return plan.to_dict()


def _load(tmp_path, data):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    return PruningPlan.load(path)


def test_a_clean_plan_rebuilds_the_pruned_network(plan_dict, tmp_path):
    net = _load(tmp_path, plan_dict).build_network()
    assert net(torch.rand(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    full = dict(plan_dict, network_def={**NET, "_target_": "monai.networks.nets.UNet", "norm": ["instance", {"eps": 1e-3}]})
    assert isinstance(_load(tmp_path, full).build_network(), UNet)


@pytest.mark.parametrize("key, value, where", [
    ("channels", "$__import__('pathlib').Path('{marker}').write_text('pwned') or [8, 16]", "network_def#channels"),
    ("act", "@some_reference", "network_def#act"),
    ("dropout", "%configs/train.json#lr", "network_def#dropout"),
    ("norm", ["batch", {"eps": "$__import__('pathlib').Path('{marker}').write_text('x') and 1e-5"}],
     "network_def#norm[1]#eps"),
    ("_requires_", "$__import__('pathlib').Path('{marker}').write_text('x')", "network_def#_requires_"),
    ("_mode_", "debug", "network_def#_mode_"),
])
def test_expressions_in_a_plan_are_refused_and_never_run(plan_dict, tmp_path, key, value, where):
    marker = tmp_path / "pwned.txt"
    value = json.loads(json.dumps(value).replace("{marker}", str(marker)))
    plan = _load(tmp_path, dict(plan_dict, network_def={**NET, key: value}))
    with pytest.raises(PlanSecurityError, match=where.replace("[", r"\[").replace("]", r"\]")):
        plan.build_network()
    assert not marker.exists()


@pytest.mark.parametrize("target", ["subprocess.run", "os.system", "builtins.eval", "torch.nn.Linear",
                                    "monai.networks.nets._private", "monai.bundle.ConfigParser"])
def test_only_network_classes_may_be_built(plan_dict, tmp_path, target):
    bad = {"_target_": target, "args": ["touch", str(tmp_path / "pwned")]}
    plan = _load(tmp_path, dict(plan_dict, network_def=bad))
    with pytest.raises(PlanSecurityError, match="is not a network class"):
        plan.build_network()
    nested = _load(tmp_path, dict(plan_dict, network_def={**NET, "act": bad}))
    with pytest.raises(PlanSecurityError, match="network_def#act#_target_"):
        nested.build_network()
    assert not (tmp_path / "pwned").exists()


class MyNet(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.head = nn.Conv2d(width, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)))


def test_the_caller_allows_its_own_network_class(tmp_path):
    net = MyNet(8)
    definition = {"_target_": f"{__name__}.MyNet", "width": 8}
    _, plan = prune_channels(net, torch.rand(1, 1, 16, 16), ratio=0.5, network_def=definition)
    plan.save(tmp_path / "plan.json")
    loaded = PruningPlan.load(tmp_path / "plan.json")
    with pytest.raises(PlanSecurityError, match="allow="):
        loaded.build_network()
    rebuilt = loaded.build_network(allow=[MyNet])
    assert rebuilt.conv.out_channels == 4 and rebuilt(torch.rand(1, 1, 16, 16)).shape == (1, 2, 16, 16)
    with pytest.raises(PlanMismatchError, match="MyNet"):
        _load(tmp_path, dict(plan.to_dict(), network_def={"_target_": "MyNet", "depth": 3})).build_network(allow=[MyNet])


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.pop("pruned_shapes"), "missing the field 'pruned_shapes'"),
    (lambda d: d.update(format="1"), "'format' must be an integer"),
    (lambda d: d.update(steps={"a": 1}), "'steps' must be a list"),
    (lambda d: d.update(pruned_shapes={"w": ["8"]}), "'pruned_shapes' must be an object"),
    (lambda d: d["steps"][0]["ops"][0].update(idxs="0,1"), r"steps\[0\].ops\[0\].idxs' must be a list"),
    (lambda d: d["steps"][0]["ops"][0].update(side="left"), r"side' must be 'in' or 'out'"),
    (lambda d: d["steps"][0].pop("ops"), r"steps\[0\].ops' must be a list"),
    (lambda d: d.update(network_def="UNet"), "'network_def' must be an object"),
    (lambda d: d.update(network=3), "'network' must be a string"),
])
def test_a_malformed_plan_is_one_clear_error(plan_dict, tmp_path, edit, match):
    data = json.loads(json.dumps(plan_dict))
    edit(data)
    with pytest.raises(InputError, match=match):
        _load(tmp_path, data)
    assert os.listdir(tmp_path) == ["plan.json"]
