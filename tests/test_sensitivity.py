"""Sensitivity analysis on a really trained small 3D UNet (synthetic spheres): every prunable group is pruned alone at
several ratios and the foreground Dice on held-out volumes is measured; the table, cache, plot and the per-layer
ratios it suggests are checked against direct recomputation."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import UNet
from monai.networks.utils import one_hot
from helpers.spheres import TRAIN, VAL

from monai_prune import prune_channels
from monai_prune.errors import ConfigError, InputError
from monai_prune.layers import layer_widths
from monai_prune.pruning.plan import state_shapes
from monai_prune.sensitivity import SensitivityResult, prunable_layers, sensitivity_analysis

RATIOS = (0.25, 0.5, 0.75)
# tracing and MACs need only the input's layout, and MACs fractions do not depend on its size: a small one is quicker
X = torch.zeros(1, 1, 16, 16, 16)


def dice_on_held_out(model):
    """Foreground Dice over the held-out sphere volumes: the mean and the worst volume (higher is better)."""
    model.eval()
    per_volume = []
    with torch.no_grad():
        for item in VAL:
            pred = model(item["image"][None]).argmax(1, keepdim=True)
            metric = DiceMetric(include_background=False)
            metric(one_hot(pred, 2), one_hot(item["label"][None].long(), 2))
            per_volume.append(float(metric.aggregate()))
    return {"dice": sum(per_volume) / len(per_volume), "dice_worst": min(per_volume)}


class Counted:
    """``dice_on_held_out`` that counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, model):
        self.calls += 1
        return dice_on_held_out(model)


@pytest.fixture(scope="module")
def trained():
    """A small UNet trained briefly (80 Adam steps on random 16^3 crops) on the synthetic spheres: Dice ≈ 0.97."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = UNet(3, 1, 2, (8, 16, 32), (2, 2), num_res_units=1, norm="batch")
        images = torch.stack([d["image"] for d in TRAIN])
        labels = torch.stack([d["label"] for d in TRAIN])
        optimizer, loss_fn = torch.optim.Adam(net.parameters(), 5e-3), DiceCELoss(to_onehot_y=True, softmax=True)
        net.train()
        for _ in range(80):
            pick = torch.randperm(len(images))[:4]
            z, y, x = torch.randint(0, images.shape[-1] - 16 + 1, (3,)).tolist()
            crop = (pick, slice(None), slice(z, z + 16), slice(y, y + 16), slice(x, x + 16))
            loss = loss_fn(net(images[crop]), labels[crop])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    return net


@pytest.fixture(scope="module")
def analysis(trained, tmp_path_factory):
    cache = tmp_path_factory.mktemp("sensitivity") / "cache.json"
    before = copy.deepcopy(trained.state_dict())
    counted = Counted()
    trained.train()  # the caller's mode is kept; evaluate still sees eval-mode copies
    result = sensitivity_analysis(trained, X, counted, ratios=RATIOS, cache=cache, evaluate_id="spheres-val-dice",
                                  progress=False)
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items()), "the caller's model was modified"
    assert trained.training
    trained.eval()
    return result, cache, counted.calls


def test_table_has_every_layer_at_every_ratio_and_dice_really_drops(trained, analysis):
    result, _, calls = analysis
    layers = prunable_layers(trained, X)
    assert result.layers == layers and len(layers) >= 4
    assert result.dense["dice"] > 0.6, result.dense
    assert len(result.table) == len(layers) * len(RATIOS)
    assert {(row["layer"], row["ratio"]) for row in result.table} == {(n, r) for n in layers for r in RATIOS}
    assert calls == result.evaluations == 1 + len(result.table)  # every cell removes channels, so every cell evaluates
    for row in result.table:  # each returned name is accepted by layer_ratios: its own group shrank
        assert row["error"] is None
        assert row["channels_kept"] == int(row["channels_before"] * (1 - row["ratio"])), row
        assert set(row["delta"]) == {"dice", "dice_worst"}
    assert min(row["delta"]["dice"] for row in result.table) < -0.05  # some group matters


def test_delta_is_evaluate_pruned_minus_evaluate_dense(trained, analysis):
    result, _, _ = analysis
    row = min(result.table, key=lambda r: r["delta"]["dice"])
    pruned, _ = prune_channels(trained, X, ratio=0, layer_ratios={row["layer"]: row["ratio"]})
    dense, direct = dice_on_held_out(trained), dice_on_held_out(pruned)
    for metric in ("dice", "dice_worst"):
        assert row["delta"][metric] == pytest.approx(direct[metric] - dense[metric], abs=1e-6)
        assert row["metrics"][metric] == pytest.approx(direct[metric], abs=1e-6)


def test_macs_fraction_is_below_one_and_falls_with_the_ratio(analysis):
    result, _, _ = analysis
    for layer in result.layers:
        rows = sorted((r for r in result.table if r["layer"] == layer), key=lambda r: r["ratio"])
        macs = [r["macs_fraction"] for r in rows]
        params = [r["params_fraction"] for r in rows]
        assert all(0 < m < 1 for m in macs) and all(0 < p < 1 for p in params), (layer, macs, params)
        assert macs == sorted(macs, reverse=True) and params == sorted(params, reverse=True)
    widest = max(result.layers, key=lambda n: next(r["channels_before"] for r in result.table if r["layer"] == n))
    macs = [r["macs_fraction"] for r in result.table if r["layer"] == widest]
    assert macs[0] > macs[1] > macs[2], macs


def test_pruning_one_group_leaves_every_other_group_unchanged(trained, analysis):
    result, _, _ = analysis
    layer = result.layers[len(result.layers) // 2]
    pruned, plan = prune_channels(trained, X, ratio=0, layer_ratios={layer: 0.5})
    assert [step["root"] for step in plan.steps] == [layer]
    before, after = layer_widths(trained), layer_widths(pruned)
    assert after[layer] == before[layer] // 2
    assert all(after[n] == before[n] for n in result.layers if n != layer)
    touched = {op["module"] for op in plan.steps[0]["ops"]}
    shapes0, shapes1 = state_shapes(trained), state_shapes(pruned)
    changed = {k.rpartition(".")[0] for k in shapes0 if shapes0[k] != shapes1[k]}
    assert changed and changed <= touched


def test_cache_hit_evaluates_nothing_and_gives_the_same_table(trained, analysis):
    result, cache, _ = analysis
    counted = Counted()
    again = sensitivity_analysis(trained, X, counted, ratios=RATIOS, cache=cache, evaluate_id="spheres-val-dice",
                                 progress=False)
    assert counted.calls == 0 and again.evaluations == 0
    assert again.table == result.table and again.dense == result.dense and again.layers == result.layers
    # a new ratio only measures the new cells; dense and the known ratio come from the cache
    one = sensitivity_analysis(trained, X, counted, ratios=(0.5, 0.6), layers=result.layers[:1], cache=cache,
                               evaluate_id="spheres-val-dice", progress=False)
    assert counted.calls == 1 and one.table[0] == next(r for r in result.table if r["layer"] == result.layers[0]
                                                       and r["ratio"] == 0.5)


def test_corrupt_cache_warns_and_is_rewritten(trained, analysis, tmp_path):
    cache = tmp_path / "cache.json"
    cache.write_text("{not json", encoding="utf-8")
    counted = Counted()
    layer = analysis[0].layers[0]
    with pytest.warns(RuntimeWarning, match="ignoring the sensitivity cache"):
        result = sensitivity_analysis(trained, X, counted, ratios=(0.5,), layers=[layer], cache=cache, progress=False)
    assert counted.calls == 2 and len(result.table) == 1
    assert json.loads(cache.read_text(encoding="utf-8"))["format"] == 1


def test_markdown_json_and_png(analysis, tmp_path):
    result, _, _ = analysis
    text = result.to_markdown()
    assert "| layer | channels | Δdice @0.25 | Δdice @0.5 | Δdice @0.75 | MACs @0.25 |" in text
    assert all(f"`{n}`" in text for n in result.layers)
    assert "Δdice_worst @0.5" in result.to_markdown("dice_worst")
    loaded = SensitivityResult.load(result.to_json(tmp_path / "sensitivity.json"))
    assert loaded.table == result.table and loaded.dense == result.dense
    for curves in (True, False):
        path = result.plot(tmp_path / f"heat{curves}.png", curves=curves)
        data = Path(path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_suggested_ratios_spare_sensitive_layers_and_prune_as_asked(trained, analysis):
    result, _, _ = analysis
    deltas = dict(zip(result.layers, result.deltas("dice")))
    at_half = sorted(-d[1] for d in deltas.values())
    max_delta = max(at_half[len(at_half) // 2], 0.0)  # the median drop at ratio 0.5: some layers pass, some do not
    suggested = result.suggest_layer_ratios(0.5, max_delta)
    assert set(suggested) == set(result.layers)
    assert all(0 <= r <= 0.5 for r in suggested.values()) and len(set(suggested.values())) > 1
    for a in result.layers:
        first_breaks = deltas[a][0] < -max_delta
        assert (suggested[a] == 0) == first_breaks, (a, deltas[a], suggested[a])
        if deltas[a][0] >= -max_delta and deltas[a][1] >= -max_delta:
            assert suggested[a] == 0.5
        for b in result.layers:  # a layer that drops more at every ratio never gets more pruning
            if all(da <= db for da, db in zip(deltas[a], deltas[b])):
                assert suggested[a] <= suggested[b], (a, b, deltas[a], deltas[b], suggested)
    pruned, _ = prune_channels(trained, X, ratio=0, layer_ratios=suggested)
    before, after = layer_widths(trained), layer_widths(pruned)
    for layer, ratio in suggested.items():
        assert after[layer] == int(before[layer] * (1 - ratio)), (layer, ratio)
    assert dice_on_held_out(pruned)["dice"] > 0.3


def test_interpolation_between_measured_ratios():
    result = SensitivityResult(dense={"dice": 0.9}, ratios=[0.25, 0.5, 0.75], layers=["a", "b", "c", "d"], table=[
        {"layer": layer, "ratio": r, "channels_before": 8, "macs_fraction": 0.9, "delta": None if d is None else {"dice": d}}
        for layer, ds in {"a": (-0.01, -0.03, -0.1), "b": (-0.05, -0.1, -0.2), "c": (0.0, -0.01, -0.015),
                          "d": (0.0, None, -0.01)}.items() for r, d in zip([0.25, 0.5, 0.75], ds)])
    assert result.suggest_layer_ratios(0.75, 0.02) == {"a": 0.375, "b": 0.0, "c": 0.75, "d": 0.25}
    assert result.suggest_layer_ratios(0.4, 0.02) == {"a": 0.375, "b": 0.0, "c": 0.4, "d": 0.25}
    assert result.suggest_layer_ratios(0.1, 0.02)["a"] == 0.1
    assert "failed" in result.to_markdown()


def test_bad_input_fails_clearly(trained, analysis):
    result, cache, _ = analysis
    run = {"cache": cache, "evaluate_id": "spheres-val-dice", "progress": False}
    for ratios in ((0.0,), (1.0,), (-0.2, 0.5), ()):
        with pytest.raises(ConfigError, match="in \\(0, 1\\)"):
            sensitivity_analysis(trained, X, dice_on_held_out, ratios=ratios, **run)
    with pytest.raises(ConfigError, match="max_layer_ratio"):
        sensitivity_analysis(trained, X, dice_on_held_out, ratios=(0.95,), **run)
    with pytest.raises(ConfigError, match="'model.nope'.*prunable layers"):
        sensitivity_analysis(trained, X, dice_on_held_out, layers=["model.nope"], **run)
    for answer in ({"dice": "good"}, None, {}):
        with pytest.raises(InputError, match="numeric metrics"):  # the cache knows the layers, not this evaluate
            sensitivity_analysis(trained, X, lambda m, a=answer: a, ratios=(0.5,), layers=result.layers[:1],
                                 cache=cache, evaluate_id=f"broken {answer}", progress=False)
    for call in (lambda: result.suggest_layer_ratios(0.5, 0.01, metric="hd95"), lambda: result.to_markdown("hd95"),
                 lambda: result.plot("unused.png", metric="hd95")):
        with pytest.raises(ConfigError, match="'hd95' is not among the measured metrics"):
            call()
    with pytest.raises(ConfigError, match="target_ratio"):
        result.suggest_layer_ratios(1.5, 0.01)
    with pytest.raises(ConfigError, match="taylor"):
        sensitivity_analysis(trained, X, dice_on_held_out, config=__import__("monai_prune").ChannelPruningConfig(
            importance="taylor"), **run)
    assert not any(math.isnan(v) for v in result.dense.values())
