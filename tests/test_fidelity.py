"""Per-class fidelity metrics against hand computations: a mean that holds must not hide a class that collapses."""

import json
import os
import sys
import math

import pytest
import torch

from monai_prune.errors import InputError
from monai_prune.errors import ConfigError
from monai_prune.fidelity import (FidelityCard, PerClassMetrics, check_guardrails, class_names, compare_per_class,
                                   json_safe)


def _onehot(index_map, classes):
    return torch.nn.functional.one_hot(index_map.long(), classes).movedim(-1, 0).float()


def test_segmentation_per_class_dice_matches_hand_counts_and_monai():
    from monai.metrics import DiceMetric

    torch.manual_seed(0)
    label = torch.zeros(16, 16, 16, dtype=torch.long)
    label[2:10, 2:10, 2:10] = 1          # a large organ
    label[12:14, 12:14, 12:14] = 2       # a small one
    pred = label.clone()
    pred[2:10, 2:10, 2:4] = 0            # the large organ loses a quarter
    pred[12:14, 12:14, 12:14] = 0        # the small organ is missed entirely
    m = PerClassMetrics(class_names({"0": "background", "1": "liver", "2": "lesion"}, 3))
    m.update(_onehot(pred, 3), label[None].float())  # label as one channel of indices, as LoadImage gives it
    result = m.compute()
    assert result["task"] == "segmentation" and result["cases"] == 1 and list(result["per_class"]) == ["liver", "lesion"]
    assert result["per_class"]["liver"]["dice"] == pytest.approx(2 * 384 / (384 + 512))
    assert result["per_class"]["lesion"]["dice"] == 0.0
    reference = DiceMetric(include_background=False, reduction="none")(_onehot(pred, 3)[None], _onehot(label, 3)[None])
    assert result["per_class"]["liver"]["dice"] == pytest.approx(float(reference[0, 0]))

    # a second case without the lesion in label or prediction is skipped for that class (not counted as 0 or 1)
    empty = label.clone()
    empty[empty == 2] = 0
    m.update(_onehot(empty, 3), _onehot(empty, 3))
    result = m.compute()
    assert result["per_class"]["lesion"]["dice"] == 0.0 and result["per_case_dice"][1][1] is None
    assert result["per_class"]["liver"]["dice"] == pytest.approx((2 * 384 / 896 + 1.0) / 2)


def test_bool_one_hot_labels_and_a_one_channel_label_map_of_several_classes():
    # bool one-hot (e.g. a label through AsDiscreted/ConvertToMultiChannel... then .bool()): argmax has no bool kernel
    label = torch.zeros(8, 8, 8, dtype=torch.long)
    label[1:5, 1:5, 1:5] = 1
    label[6:8, 6:8, 6:8] = 2
    pred = label.clone()
    pred[1:5, 1:5, 1:2] = 0
    names = ["background", "liver", "lesion"]
    m = PerClassMetrics(names)
    m.update(_onehot(pred, 3).bool(), _onehot(label, 3).bool())
    result = m.compute()
    assert result["label_mode"] == "multi_class"  # a one-hot that sums to 1: exclusive classes
    assert result["per_class"]["liver"]["dice"] == pytest.approx(2 * 48 / (48 + 64))
    assert result["per_class"]["lesion"]["dice"] == 1.0
    # an argmax map as one channel (what search_workflow passes), with three named classes
    m = PerClassMetrics(names)
    m.update(pred[None], label[None].float())
    assert m.compute()["per_class"] == result["per_class"]


def test_classification_accuracy_sensitivity_and_auc():
    scores = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55], [0.2, 0.8]])
    labels = [0, 1, 1, 0, 1]
    m = PerClassMetrics(["normal", "nodule"], skip=())
    for s, y in zip(scores, labels):
        m.update(s, torch.nn.functional.one_hot(torch.tensor(y), 2).float())  # one-hot labels, as AsDiscreted gives
    result = m.compute()
    assert result["task"] == "classification" and result["accuracy"] == pytest.approx(3 / 5)
    assert result["per_class"]["nodule"]["sensitivity"] == pytest.approx(2 / 3)
    assert result["per_class"]["normal"]["sensitivity"] == pytest.approx(1 / 2)
    # nodule AUC: positives' scores 0.4, 0.7, 0.8 vs negatives' 0.1, 0.55: 5 of 6 pairs ordered
    assert result["per_class"]["nodule"]["auc"] == pytest.approx(5 / 6)


def test_compare_and_json_safety():
    before = {"per_class": {"spleen": {"dice": 0.9}, "lesion": {"dice": math.nan}}}
    after = {"per_class": {"spleen": {"dice": 0.85}}}
    table = compare_per_class(before, after)
    assert table["spleen"]["dice"]["delta"] == pytest.approx(-0.05)
    assert json_safe(table)["lesion"]["dice"] == {"before": None, "after": None, "delta": None}


def test_bad_inputs_are_refused():
    m = PerClassMetrics(["a", "b", "c"])
    with pytest.raises(InputError, match="3 output channels but"):
        PerClassMetrics(["a", "b"]).update(torch.rand(3, 4, 4, 4), torch.zeros(1, 4, 4, 4))
    with pytest.raises(InputError, match="spatial shape"):
        m.update(torch.rand(3, 4, 4, 4), torch.zeros(1, 4, 4, 5))
    m.update(torch.rand(3, 4, 4, 4), torch.zeros(1, 4, 4, 4))
    with pytest.raises(InputError, match="one metric object per task"):
        m.update(torch.rand(3), torch.tensor([1]))
    with pytest.raises(InputError, match="no samples"):
        PerClassMetrics().compute()


def _measured(table, latency=(1.0, 0.5), macs=(100.0, 30.0)):
    return {"per_class": {name: {metric: {"before": b, "after": a} for metric, (b, a) in metrics.items()}
                          for name, metrics in table.items()},
            "latency_s": {"before": latency[0], "after": latency[1]}, "macs": {"before": macs[0], "after": macs[1]}}


def test_guardrails_catch_one_class_collapsing_while_the_mean_holds():
    # three organs: the two large ones even improve, the small lesion loses 0.15 Dice; the mean drops only 0.0133
    measured = _measured({"liver": {"dice": (0.95, 0.99)}, "kidney": {"dice": (0.90, 0.97)},
                          "lesion": {"dice": (0.60, 0.45)}})
    mean = {w: sum(m["dice"][w] for m in measured["per_class"].values()) / 3 for w in ("before", "after")}
    assert mean["before"] - mean["after"] < 0.02  # a mean-Dice guardrail (NNCF max_drop style) would pass it
    broken = check_guardrails({"max_delta_dice": 0.02}, measured)
    assert len(broken) == 1 and "'lesion'" in broken[0] and "0.1500" in broken[0] and "0.6000" in broken[0]
    assert check_guardrails({"max_delta_dice": 0.2}, measured) == []
    broken = check_guardrails({"min_dice": {"liver": 0.9, "lesion": 0.5}}, measured)
    assert broken == ["class 'lesion': Dice 0.4500 is below its floor 0.5000 by 0.0500"]
    assert len(check_guardrails({"min_dice": 0.98}, measured)) == 2  # one floor for every class: kidney and lesion


def test_guardrails_on_classification_budgets_and_bad_declarations():
    measured = _measured({"no_lesion": {"sensitivity": (1.0, 1.0), "auc": (1.0, 1.0)},
                          "lesion": {"sensitivity": (1.0, 0.375), "auc": (1.0, 1.0)}})
    assert check_guardrails({"max_delta_auc": 0.01}, measured) == []  # AUC holds ...
    (broken,) = check_guardrails({"max_delta_sensitivity": 0.05}, measured)  # ... while lesion recall collapses
    assert "'lesion'" in broken and "0.6250" in broken
    assert check_guardrails({"max_latency_ratio": 0.6, "target_macs": 0.5}, measured) == []
    broken = check_guardrails({"max_latency_ratio": 0.4, "target_latency_s": 0.1, "target_macs": 20}, measured)
    assert len(broken) == 3 and "0.500" in broken[0]
    with pytest.raises(ConfigError, match="unknown guardrails"):
        check_guardrails({"max_drop": 0.01}, measured)
    with pytest.raises(ConfigError, match="dice was not measured"):
        check_guardrails({"max_delta_dice": 0.01}, measured)
    with pytest.raises(ConfigError, match="model's classes"):
        check_guardrails({"min_dice": {"spleen": 0.9}}, _measured({"liver": {"dice": (0.9, 0.9)}}))


def test_hd95_volumes_with_spacing_and_worst_cases():
    from monai.data import MetaTensor

    from monai_prune.fidelity import worst_cases

    label = torch.zeros(20, 20, 20, dtype=torch.long)
    label[4:12, 4:12, 4:12] = 1
    pred = torch.zeros_like(label)
    pred[6:14, 4:12, 4:12] = 1  # shifted 2 voxels along x
    affine = torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0]))  # 2 mm along x, 1 mm elsewhere
    m = PerClassMetrics(["background", "organ"])
    m.update(MetaTensor(_onehot(pred, 2), affine=affine), MetaTensor(label[None].float(), affine=affine))
    result = m.compute()
    organ = result["per_class"]["organ"]
    assert result["units"] == {"hd95": "mm", "volume": "ml"}
    assert organ["hd95"] == pytest.approx(4.0)  # 2 voxels x 2 mm
    assert organ["volume_error_ml"] == 0.0 and organ["volume_error_pct"] == 0.0  # same size, moved
    bigger = pred.clone()
    bigger[4:6, 4:12, 4:12] = 1  # 128 more voxels of 2 mm^3
    m2 = PerClassMetrics(["background", "organ"])
    m2.update(MetaTensor(_onehot(bigger, 2), affine=affine), MetaTensor(label[None].float(), affine=affine))
    organ2 = m2.compute()["per_class"]["organ"]
    assert organ2["volume_error_ml"] == pytest.approx(128 * 2 / 1000) and organ2["volume_error_pct"] == 25.0
    # without spacing the units say voxels
    m3 = PerClassMetrics(["background", "organ"])
    m3.update(_onehot(pred, 2), label[None].float())
    assert m3.compute()["units"]["hd95"] == "voxels" and m3.compute()["per_class"]["organ"]["hd95"] == 2.0

    before = {"per_case_dice": [[0.9], [0.8], [0.7]]}
    after = {"per_case_dice": [[0.9], [0.5], [0.69]]}
    worst = worst_cases(before, after, k=2)
    assert [w["case"] for w in worst] == [1, 2] and worst[0]["drop"] == pytest.approx(0.3)


def test_expected_calibration_error_by_hand():
    from monai_prune.fidelity import expected_calibration_error

    probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.65, 0.35], [0.65, 0.35]])
    truth = torch.tensor([0, 1, 0, 0])
    # bin (0.9, 1.0]: accuracy 0.5, confidence 0.95 -> |0.45| x 2/4; bin (0.6, 0.7]: accuracy 1.0, conf 0.65 -> 0.35 x 2/4
    assert expected_calibration_error(probs, truth) == pytest.approx(0.45 * 0.5 + 0.35 * 0.5)
    assert expected_calibration_error(torch.log(probs), truth) == pytest.approx(0.4)  # logits are softmaxed first


def test_hd95_guardrail():
    measured = _measured({"liver": {"dice": (0.95, 0.95), "hd95": (3.0, 3.5)},
                          "lesion": {"dice": (0.8, 0.78), "hd95": (2.0, 9.0)}})
    (broken,) = check_guardrails({"max_hd95_increase_mm": 1.0}, measured)
    assert "'lesion'" in broken and "+7.00" in broken


def test_backend_agreement_passes_the_same_model_and_catches_a_diverged_runtime(tmp_path):
    from monai.inferers import SlidingWindowInferer
    from monai.networks.nets import UNet

    from monai_prune.export import export_onnx
    from monai_prune.fidelity import backend_agreement

    torch.manual_seed(0)
    net = UNet(3, 1, 3, (4, 8), (2,), num_res_units=0).eval()
    inputs = [torch.rand(1, 1, 24, 24, 20) for _ in range(2)]
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=2, overlap=0.25)
    same = backend_agreement(net, inputs, inferer)
    assert set(same) >= {"onnxruntime"}
    for result in same.values():
        assert result["argmax_agreement"] > 0.999 and result["max_abs_diff"] < 1e-3
        assert min(result["dice_vs_torch"].values()) > 0.99
    # a runtime serving other weights (a stale or corrupted export) is caught
    other = UNet(3, 1, 3, (4, 8), (2,), num_res_units=0).eval()
    stale = export_onnx(other, inputs[0], str(tmp_path / "stale.onnx")).path
    diverged = backend_agreement(net, inputs, inferer, onnx_path=stale, backends=["onnxruntime"])
    assert diverged["onnxruntime"]["argmax_agreement"] < 0.9 and diverged["onnxruntime"]["max_abs_diff"] > 0.01


# ---------------------------------------------------------------------------------------------------- the card
def _seg_measurements():
    """Dense and compressed per-class metrics of two cases, computed (not written down): the liver loses a slab,
    the small lesion loses more, and a 'cyst' class never occurs (nan before and after)."""
    names = ["background", "liver", "lesion", "cyst"]
    before, after = PerClassMetrics(names), PerClassMetrics(names)
    for shift in (0, 1):
        label = torch.zeros(16, 16, 16, dtype=torch.long)
        label[2 + shift:10, 2:10, 2:10] = 1
        label[11:15, 11:15, 11:15] = 2
        dense = label.clone()
        dense[2 + shift:10, 2:10, 2:3] = 0  # the dense model is not perfect either
        compressed = dense.clone()
        compressed[2 + shift:10, 2:10, 3:4] = 0
        compressed[11:15, 11:15, 11:13] = 0
        before.update(_onehot(dense, 4), label[None].float())
        after.update(_onehot(compressed, 4), label[None].float())
    return before.compute(), after.compute()


def _compression(guardrails=None, allow=False):
    """A compress-bundle ``compression`` section from real measurements."""
    from monai_prune.fidelity import worst_cases

    b, a = _seg_measurements()
    section = {"recipe": "channel_pruning", "epochs": 2, "per_class": compare_per_class(b, a),
               "validation_cases": b["cases"], "units": b["units"], "worst_cases": worst_cases(b, a),
               "metrics": {"val_mean_dice": {"before": 0.9, "after": 0.8}},
               "params": {"before": 1000, "after": 400}, "macs": {"before": 2.0e9, "after": 0.6e9},
               "size_bytes": {"before": 4000, "after": 1600},
               "latency_s": {"before": 0.2, "after": 0.1, "inferer": "SlidingWindowInferer", "device": "cpu",
                             "input_shape": [1, 1, 16, 16, 16], "what": "the bundle's validate#inferer"}}
    if guardrails is not None:
        broken = check_guardrails(guardrails, section)
        section["guardrails"] = {"declared": guardrails, "broken": broken, "allowed_degraded": bool(broken and allow)}
    return section


def _worst(section):
    """The foreground class whose Dice fell most, from the measured table."""
    rows = {n: m["dice"] for n, m in section["per_class"].items() if m["dice"]["before"] is not None}
    name = min(rows, key=lambda n: rows[n]["delta"])
    return name, rows[name]["delta"]


def test_card_headline_names_status_worst_class_and_its_measured_delta():
    from monai_prune.fidelity import FidelityCard

    unguarded = _compression()
    name, delta = _worst(unguarded)
    assert name == "lesion" and delta < unguarded["per_class"]["liver"]["dice"]["delta"] < 0  # both lost, lesion most
    card = FidelityCard.from_compression(unguarded, title="tiny")
    assert card.status == "UNGUARDED" and card.task == "segmentation" and card.cases == 2
    assert card.headline().startswith("UNGUARDED: no guardrails declared; worst class Δ Dice")
    assert f"Δ Dice {delta:+.4f} (lesion" in card.headline()
    assert card.worst_class()["class"] == "lesion" and card.worst_class()["delta"] == pytest.approx(delta)

    held = FidelityCard.from_compression(_compression({"max_delta_dice": 0.9, "target_macs": 0.5}))
    assert held.status == "PASS" and held.broken == []
    assert held.headline().startswith("PASS: all 2 guardrails held (max_delta_dice 0.9, target_macs 0.5); ")
    assert f"worst class Δ Dice {delta:+.4f} (lesion" in held.headline()

    limit = round(-delta / 2, 4)  # half the lesion's measured drop: broken for the lesion
    section = _compression({"max_delta_dice": limit, "target_macs": 0.5}, allow=True)
    degraded = FidelityCard.from_compression(section)
    assert degraded.status == "DEGRADED" and len(degraded.broken) >= 1
    headline = degraded.headline()
    assert headline.startswith("DEGRADED: 1 guardrail broken — class 'lesion': dice fell from")
    assert "(written with --allow-degraded)" in headline and f"Δ Dice {delta:+.4f} (lesion" in headline
    assert "\n" not in headline
    refused = FidelityCard.from_compression(_compression({"max_delta_dice": limit}, allow=False))
    assert refused.status == "FAIL" and refused.headline().startswith("FAIL: 1 guardrail broken")


def test_card_json_round_trip_and_nan_survives_as_none(tmp_path):
    from monai_prune.fidelity import FidelityCard

    section = _compression({"max_delta_dice": 0.01, "min_dice": {"liver": 0.5}}, allow=True)
    assert section["per_class"]["cyst"]["dice"]["before"] is None  # never in the data: undefined
    card = FidelityCard.from_compression(section, title="tiny 0.2.0")
    assert card.per_class["cyst"]["dice"] == {"before": None, "after": None, "delta": None}
    assert card.per_class["cyst"]["hd95"]["delta"] is None

    path = card.to_json(str(tmp_path / "card.json"))
    text = open(path).read()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert data["status"] == "DEGRADED" and data["headline"] == card.headline() and data == card.to_dict()
    loaded = FidelityCard.load(path)
    assert loaded == card and loaded.to_dict() == data and loaded.headline() == card.headline()
    assert FidelityCard.from_dict(card.to_dict()) == card
    assert loaded.per_class["lesion"]["dice"]["delta"] == pytest.approx(section["per_class"]["lesion"]["dice"]["delta"])

    # built directly from a table holding nan: the card keeps None, its JSON stays strict
    direct = FidelityCard(title="t", task="segmentation", per_class=section["per_class"])
    assert direct.per_class["cyst"]["dice"]["before"] is None and direct == FidelityCard.from_dict(direct.to_dict())
    with pytest.raises(InputError, match="needs"):
        FidelityCard.from_dict({"title": "t"})
    with pytest.raises(InputError, match="task"):
        FidelityCard(title="t", task="detection", per_class={})
    with pytest.raises(InputError, match="no fidelity card"):
        FidelityCard.load(str(tmp_path / "missing.json"))
    with pytest.raises(InputError, match="per_class"):
        FidelityCard.from_compression({"recipe": "x"})


def test_card_markdown_has_every_class_metric_and_guardrail_held_or_broken():
    from monai_prune.fidelity import FidelityCard

    section = _compression({"max_delta_dice": 0.01, "max_hd95_increase_mm": 1000, "target_macs": 0.5}, allow=True)
    card = FidelityCard.from_compression(section)
    md = card.to_markdown()
    assert md.splitlines()[0] == f"**{card.headline()}**" and str(card) == md
    for name, metrics in section["per_class"].items():
        for metric, values in metrics.items():
            label = card._metric_label(metric)
            before = "n/a" if values["before"] is None else f"{values['before']:.4f}"
            after = "n/a" if values["after"] is None else f"{values['after']:.4f}"
            assert f"| {name} | {label} | {before} | {after} |" in md, (name, metric)
    assert "| max_delta_dice | 0.01 | broken |" in md
    assert "| max_hd95_increase_mm | 1000 | held |" in md and "| target_macs | 0.5 | held |" in md
    assert "HD95 (voxels)" in md and "Written only because of --allow-degraded." in md
    assert "| MACs per input | 2.000 G | 0.600 G | 0.300 |" in md and "(2.00x faster)" in md
    assert "| weights size | 4.000 kB | 1.600 kB | 0.400 |" in md and "| parameters | 1,000 | 400 | 0.400 |" in md
    assert "SlidingWindowInferer, cpu" in md and "| val_mean_dice | 0.9000 | 0.8000 | -0.1000 |" in md
    worst = section["worst_cases"][0]
    assert f"| {worst['case']} | {worst['dice_before']:.4f} | {worst['dice_after']:.4f} |" in md
    assert "None declared" in FidelityCard.from_compression(_compression()).to_markdown()
    assert FidelityCard.from_compression(section).to_markdown(heading_level=3).count("\n### ") >= 4


def test_classification_card_judges_classes_by_sensitivity():
    from monai_prune.fidelity import FidelityCard

    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.35, 0.65], [0.1, 0.9]])
    labels = [0, 1, 1, 0, 1]
    before, after = PerClassMetrics(["normal", "nodule"], skip=()), PerClassMetrics(["normal", "nodule"], skip=())
    for s, y in zip(scores, labels):
        before.update(s, torch.tensor([y]))
        after.update(s.flip(0) if y == 1 and s[1] < 0.75 else s, torch.tensor([y]))  # one nodule now missed
    b, a = before.compute(), after.compute()
    table = compare_per_class(b, a)
    card = FidelityCard(title="cls", task="classification", per_class=table,
                        summary={"accuracy": {"before": b["accuracy"], "after": a["accuracy"]},
                                 "ece": {"before": b["ece"], "after": a["ece"]}},
                        guardrails={"max_delta_sensitivity": 0.05}, broken=check_guardrails(
                            {"max_delta_sensitivity": 0.05}, {"per_class": table}), allowed_degraded=True)
    assert table["nodule"]["sensitivity"]["delta"] < 0 and card.status == "DEGRADED"
    # the headline names the larger drop of sensitivity and AUC over the classes
    pairs = [(n, k) for n in table for k in ("sensitivity", "auc")]
    name, metric = min(pairs, key=lambda p: table[p[0]][p[1]]["delta"])
    delta = table[name][metric]["delta"]
    assert f"worst class Δ {'AUC' if metric == 'auc' else metric} {delta:+.4f} ({name}:" in card.headline()
    assert "expected calibration error" in card.to_markdown() and "| nodule | AUC |" in card.to_markdown()


def test_the_deploy_benchmark_writes_end_to_end_and_per_stage_ratios_into_the_card(tmp_path):
    """``benchmarks/deploy_e2e.py`` puts the whole pipeline's seconds (dense stock vs the fastest variant that keeps
    the Dice guardrail) into the compressed bundle's card, beside the network ratio; a faster variant that lost
    accuracy is never the one reported."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("deploy_e2e", os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "deploy_e2e.py"))
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up
    spec.loader.exec_module(bench)

    def row(name, wall, first, network, dice_label, startup=5.0):
        return {"variant": name, "backend": "openvino", "precision": "fp32", "postprocessing": "fast (argmax) on x",
                "wall_s": wall, "first_study_s": first, "startup_s": startup, "dice_vs_label": dice_label,
                "dice_vs_dense": 0.97, "stages_s": {"load": 0.5, "preprocessing": 0.7, "network": network,
                                                   "postprocessing": 0.4, "seg_write": 1.0, "app_other": 0.5}}

    rows = [row("dense-stock", 25.0, 25.0, 8.0, 0.91), row("too-lossy", 4.0, 9.0, 1.0, 0.85),
            row("resident", 6.5, 11.0, 4.0, 0.905, startup=0.0), row("one-shot", 13.0, 13.0, 4.2, 0.91)]
    pipeline = bench.card_pipeline(rows, "a test pipeline")
    assert pipeline["what"].startswith("a test pipeline; after = resident")
    assert pipeline["end_to_end"] == {"before": 25.0, "after": 6.5}
    assert pipeline["stages"]["network (sliding window)"] == {"before": 8.0, "after": 4.0}
    bundle = tmp_path / "bundle"
    (bundle / "docs").mkdir(parents=True)
    card = FidelityCard(title="t", task="segmentation",
                        per_class={"spleen": {"dice": {"before": 0.91, "after": 0.905, "delta": -0.005}}})
    card.to_json(str(bundle / "docs" / "fidelity_card.json"))
    assert bench.write_card_pipeline(str(bundle), pipeline) == str(bundle / "docs" / "fidelity_card.json")
    loaded = FidelityCard.load(str(bundle / "docs" / "fidelity_card.json"))
    assert loaded.pipeline_s == pipeline and loaded.per_class == card.per_class
    markdown = (bundle / "docs" / "fidelity_card.md").read_text()
    assert "## End to end: a test pipeline; after = resident" in markdown
    assert "| end to end (steady state) | 25.00 | 6.50 | 0.260 | 3.85x |" in markdown
    assert "| stage: network (sliding window) | 8.00 | 4.00 | 0.500 | 2.00x |" in markdown
    assert "| stage: start-up and imports | 5.00 | 0.00 | 0.000 | n/a |" in markdown
    assert bench.card_pipeline([rows[0], rows[1]], "x") is None  # nothing kept accuracy: nothing to report
