"""Multi-label (sigmoid, overlapping channels) per-class fidelity, like the model zoo's brats_mri_segmentation.

BraTS predicts three overlapping channels, tumour core (TC) inside whole tumour (WT), enhancing tumour (ET) inside
TC: ``Activationsd(sigmoid) + AsDiscreted(threshold=0.5)`` on the prediction,
``ConvertToMultiChannelBasedOnBratsClassesd`` on the label (a bool tensor),
``DiceMetric(include_background=True, reduction="mean_batch")`` per channel. An argmax over such channels is
meaningless (and ``argmax`` has no bool kernel: compress-bundle died there). Here the same pipeline runs through a
real MONAI ``SupervisedEvaluator`` on nested spheres, and every per-class number is checked against MONAI's own
metrics on the same outputs.
"""

import json
import math

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor, create_test_image_3d
from monai.engines import SupervisedEvaluator
from monai.inferers import SimpleInferer
from monai.metrics import DiceMetric, compute_hausdorff_distance
from monai.transforms import (Activationsd, AsDiscreted, CastToTyped, Compose,
                              ConvertToMultiChannelBasedOnBratsClassesd, Lambdad, SplitDimd)

from monai_prune.errors import InputError
from monai_prune.fidelity import (FidelityCard, PerClassMetrics, agreement_note, check_guardrails, class_names,
                                  compare_per_class, detect_label_mode, label_mode_from_bundle, prediction_agreement,
                                  worst_cases)

SIZE = 32
SPACING = (1.5, 1.5, 2.0)  # mm, so that HD95 and volumes are in mm / ml, not voxels
NAMES = class_names({"0": "TC", "1": "WT", "2": "ET"}, 3)
TC_FRACTION, ET_FRACTION = 0.6, 0.3  # radii of the nested spheres, as fractions of the whole tumour's


def _case(seed, with_et=True):
    """A BraTS-like case: a raw label map (2 edema / 1 necrotic core / 4 enhancing, nested spheres) and, as the
    'image', per-channel logits (signed distance in voxels to the TC/WT/ET boundary, positive inside)."""
    _, wt = create_test_image_3d(SIZE, SIZE, SIZE, num_objs=1, rad_max=11, rad_min=8, num_seg_classes=1,
                                 random_state=np.random.RandomState(seed))
    wt = torch.as_tensor(wt > 0)
    grid = torch.stack(torch.meshgrid(*[torch.arange(SIZE, dtype=torch.float32)] * 3, indexing="ij"))
    center = grid[:, wt].mean(1)
    radius = (3 * float(wt.sum()) / (4 * math.pi)) ** (1 / 3)
    dist = (grid - center.view(3, 1, 1, 1)).norm(dim=0)
    tc_r, et_r = TC_FRACTION * radius, (ET_FRACTION * radius if with_et else 0.0)
    raw = torch.zeros(SIZE, SIZE, SIZE)
    raw[wt] = 2
    raw[dist < tc_r] = 1
    raw[dist < et_r] = 4
    logits = torch.stack([tc_r - dist, radius - dist, et_r - dist if with_et else -10 - dist])
    affine = torch.diag(torch.tensor([*SPACING, 1.0], dtype=torch.float64))
    return {"image": MetaTensor(logits, affine=affine), "label": MetaTensor(raw[None], affine=affine)}


CASES = [_case(0), _case(1), _case(2), _case(3, with_et=False)]  # the last case has no enhancing tumour at all


class Logits(torch.nn.Module):
    """A 'network' that returns its input logits moved by a per-channel offset (negative: the channel shrinks)."""

    def __init__(self, offsets):
        super().__init__()
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.float32).view(1, 3, 1, 1, 1))

    def forward(self, x):
        return x + self.offsets


DENSE = (0.0, -0.4, 0.0)  # the dense model is not perfect: its whole tumour is a little small
COMPRESSED = (0.0, -0.4, -1.3)  # the compressed one also loses the enhancing tumour's rim


def _evaluate(offsets, dtype):
    """Run a SupervisedEvaluator with BraTS' postprocessing; PerClassMetrics attached as compress-bundle attaches
    it, MONAI's DiceMetric (mean_batch and per case) and the outputs collected from the same iterations."""
    label_transforms = [ConvertToMultiChannelBasedOnBratsClassesd("label")]  # gives bool
    post = [Activationsd("pred", sigmoid=True), AsDiscreted("pred", threshold=0.5)]  # gives float 0/1
    if dtype == "float":
        label_transforms.append(CastToTyped("label", torch.float32))
    else:
        post.append(Lambdad("pred", lambda x: x.bool()))
    post.append(SplitDimd(["pred", "label"], output_postfixes=["tc", "wt", "et"]))  # as BraTS' validation does
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), network=Logits(offsets).eval(), inferer=SimpleInferer(),
        val_data_loader=DataLoader(Dataset(CASES, Compose(label_transforms)), batch_size=2),
        postprocessing=Compose(post))
    metrics = PerClassMetrics(NAMES).attach(evaluator)
    mean_batch = DiceMetric(include_background=True, reduction="mean_batch")
    per_case = DiceMetric(include_background=True, reduction="none")
    outputs = []

    def collect(engine):
        for item in engine.state.output:
            assert item["pred"].dtype == (torch.bool if dtype == "bool" else torch.float32)
            assert item["label"].dtype == (torch.bool if dtype == "bool" else torch.float32)
            pred, label = item["pred"].float()[None], item["label"].float()[None]
            mean_batch(pred, label)
            per_case(pred, label)
            outputs.append((item["pred"].as_tensor().bool(), item["label"].as_tensor().bool()))

    from ignite.engine import Events

    evaluator.add_event_handler(Events.ITERATION_COMPLETED, collect)
    evaluator.run()
    return metrics.compute(), mean_batch.aggregate(), per_case.aggregate(), outputs


@pytest.fixture(scope="module", params=["bool", "float"])
def measured(request):
    return {"dtype": request.param, "dense": _evaluate(DENSE, request.param),
            "compressed": _evaluate(COMPRESSED, request.param)}


def test_the_data_is_multi_label_with_nested_overlapping_channels(measured):
    for pred, label in measured["dense"][3]:
        tc, wt, et = label
        assert bool((tc <= wt).all()) and bool((et <= tc).all())  # WT ⊇ TC ⊇ ET
        assert int((label.sum(0) > 1).sum()) > 0  # overlapping: an argmax cannot represent it
    assert not measured["dense"][3][-1][1][2].any()  # the last case has no ET


@pytest.mark.parametrize("model", ["dense", "compressed"])
def test_per_channel_dice_equals_monai_dice_metric_mean_batch(measured, model):
    result, mean_batch, per_case, _ = measured[model]
    assert result["label_mode"] == "multi_label" and result["cases"] == len(CASES)
    assert list(result["per_class"]) == ["TC", "WT", "ET"]  # every channel is a class: no background to skip
    for c, name in enumerate(NAMES):
        assert result["per_class"][name]["dice"] == pytest.approx(float(mean_batch[c]), abs=1e-6), name
    for i, row in enumerate(result["per_case_dice"]):
        for c, value in enumerate(row):
            reference = float(per_case[i, c])
            assert (value is None) == math.isnan(reference) and (value is None or value == pytest.approx(reference))
    assert result["per_case_dice"][-1][2] is None  # ET absent in label and prediction: skipped, like MONAI's nan
    assert result["per_class"]["WT"]["dice"] < 1.0  # the dense model is not perfect


def test_hd95_and_volumes_per_channel_in_mm(measured):
    result, _, _, outputs = measured["compressed"]
    assert result["units"] == {"hd95": "mm", "volume": "ml"}
    voxel_ml = SPACING[0] * SPACING[1] * SPACING[2] / 1000
    for c, name in enumerate(NAMES):
        distances = [float(compute_hausdorff_distance(p[c][None, None].float(), t[c][None, None].float(),
                                                      include_background=True, percentile=95, spacing=list(SPACING)))
                     for p, t in outputs if p[c].any() and t[c].any()]
        assert result["per_class"][name]["hd95"] == pytest.approx(sum(distances) / len(distances)), name
        errors = [abs(int(p[c].sum()) - int(t[c].sum())) * voxel_ml for p, t in outputs]
        assert result["per_class"][name]["volume_error_ml"] == pytest.approx(sum(errors) / len(errors)), name
    assert result["per_class"]["TC"]["hd95"] == 0.0 and result["per_class"]["ET"]["hd95"] > 1.0


def _compression(measured, guardrails=None, allow=True):
    before, after = measured["dense"][0], measured["compressed"][0]
    section = {"recipe": "channel_pruning", "per_class": compare_per_class(before, after),
               "label_mode": before["label_mode"], "validation_cases": before["cases"], "units": before["units"],
               "worst_cases": worst_cases(before, after), "macs": {"before": 2.0e9, "after": 1.0e9}}
    if guardrails is not None:
        broken = check_guardrails(guardrails, section)
        section["guardrails"] = {"declared": guardrails, "broken": broken, "allowed_degraded": bool(broken and allow)}
    return section


def test_guardrails_name_the_channel_that_broke(measured):
    table = _compression(measured)["per_class"]
    et = table["ET"]
    assert et["dice"]["delta"] < -0.05 and table["TC"]["dice"]["delta"] == 0 and table["WT"]["dice"]["delta"] == 0
    (broken,) = check_guardrails({"max_delta_dice": 0.05}, {"per_class": table})
    assert broken == (f"class 'ET': dice fell from {et['dice']['before']:.4f} to {et['dice']['after']:.4f} "
                      f"(drop {-et['dice']['delta']:.4f} > max_delta_dice 0.05)")
    (broken,) = check_guardrails({"min_dice": 0.9}, {"per_class": table})
    assert broken.startswith("class 'ET': Dice") and "below its floor 0.9000" in broken
    (broken,) = check_guardrails({"max_hd95_increase_mm": 1.0}, {"per_class": table})
    assert broken.startswith(f"class 'ET': HD95 grew from {et['hd95']['before']:.2f} to {et['hd95']['after']:.2f} mm")
    assert check_guardrails({"max_delta_dice": -et["dice"]["delta"] + 0.01}, {"per_class": table}) == []


def test_fidelity_card_from_a_multi_label_measurement(measured, tmp_path):
    section = _compression(measured, {"max_delta_dice": 0.05, "target_macs": 0.6})
    card = FidelityCard.from_compression(section, title="brats-like")
    et = section["per_class"]["ET"]["dice"]
    assert card.label_mode == "multi_label" and card.status == "DEGRADED" and card.cases == len(CASES)
    assert card.headline().startswith("DEGRADED: 1 guardrail broken — class 'ET': dice fell from")
    assert f"worst class Δ Dice {et['delta']:+.4f} (ET: {et['before']:.4f} -> {et['after']:.4f})" in card.headline()
    md = card.to_markdown()
    assert "segmentation (multi-label: every output channel is its own class, channels may overlap)" in md
    for name in NAMES:
        assert f"| {name} | Dice |" in md and f"| {name} | HD95 (mm) |" in md
    assert "| max_delta_dice | 0.05 | broken |" in md and "| target_macs | 0.6 | held |" in md
    assert any("Dice per channel on its binary mask" in note for note in card.notes)
    loaded = FidelityCard.load(card.to_json(str(tmp_path / "card.json")))
    assert loaded == card and loaded.label_mode == "multi_label"
    assert json.loads(open(tmp_path / "card.json").read())["label_mode"] == "multi_label"
    with pytest.raises(InputError, match="label_mode"):
        FidelityCard(title="t", task="segmentation", per_class={}, label_mode="sigmoid")


# ---------------------------------------------------------------------------------------------------- the mode
def _overlapping():
    label = _case(5)
    pred = ConvertToMultiChannelBasedOnBratsClassesd("label")(dict(label))["label"].as_tensor()
    return pred  # bool (3, S, S, S): WT ⊇ TC ⊇ ET


def test_the_mode_is_decided_from_the_data():
    masks = _overlapping()
    onehot = torch.nn.functional.one_hot(masks.sum(0).long(), 4).movedim(-1, 0)  # exclusive classes 0..3
    index_map = masks.sum(0, keepdim=True).float()
    assert detect_label_mode(masks, masks) == "multi_label"  # bool, overlapping
    assert detect_label_mode(masks.float(), masks) == "multi_label"  # float 0/1
    assert detect_label_mode(onehot.float(), index_map) == "multi_class"  # one-hot that sums to 1, label map
    assert detect_label_mode(onehot.bool(), onehot.bool()) == "multi_class"
    assert detect_label_mode(torch.randn(4, 8, 8, 8), index_map[:, :8, :8, :8]) == "multi_class"  # logits
    sigmoid = torch.rand(3, *masks.shape[1:])  # probabilities that do not sum to 1, against overlapping masks
    assert detect_label_mode(sigmoid, masks) == "multi_label"


def test_bool_inputs_no_longer_crash_and_modes_can_be_given():
    masks = _overlapping()
    auto = PerClassMetrics(NAMES)
    auto.update(masks.float(), masks)  # float prediction, bool label: `argmax(): does not support bool input` before
    assert auto.compute()["label_mode"] == "multi_label"
    assert [v["dice"] for v in auto.compute()["per_class"].values()] == [1.0, 1.0, 1.0]
    explicit = PerClassMetrics(NAMES, multi_label=True)
    explicit.update(masks, masks)
    assert explicit.compute()["per_class"] == auto.compute()["per_class"]
    assert PerClassMetrics(NAMES, label_mode="multi_label").requested_mode == "multi_label"
    # exclusive classes asked for: the argmax of the overlapping channels is measured (and bool works there too)
    forced = PerClassMetrics(NAMES, label_mode="multi_class")
    forced.update(masks, masks)
    assert forced.compute()["label_mode"] == "multi_class"
    # a one-hot that sums to 1 gives the same numbers in either mode
    exclusive = torch.nn.functional.one_hot(masks.sum(0).long(), 4).movedim(-1, 0).bool()
    shifted = exclusive.roll(1, dims=1)
    a, b = PerClassMetrics(skip=()), PerClassMetrics(skip=(), multi_label=True)
    a.update(shifted, exclusive)
    b.update(shifted, exclusive)
    assert a.compute()["per_class"] == b.compute()["per_class"]


def test_wrong_multi_label_inputs_say_what_to_do():
    masks = _overlapping()
    with pytest.raises(InputError, match=r"but the label is \(1, 32, 32, 32\): give a 3-channel label of binary"):
        PerClassMetrics(NAMES, multi_label=True).update(masks, masks.sum(0, keepdim=True).float())
    with pytest.raises(InputError, match=r"probabilities in \[0, 1\] or binary masks"):
        PerClassMetrics(NAMES, multi_label=True).update(torch.randn(3, 8, 8, 8), masks[:, :8, :8, :8])
    with pytest.raises(InputError, match="binary masks"):
        PerClassMetrics(NAMES, multi_label=True).update(masks, masks.float() * 2)
    with pytest.raises(InputError, match="contradicts"):
        PerClassMetrics(NAMES, label_mode="multi_class", multi_label=True)
    with pytest.raises(InputError, match="label_mode must be"):
        PerClassMetrics(NAMES, label_mode="sigmoid")
    # probabilities measured through the argmax first, overlapping channels after: the mode must be given
    m = PerClassMetrics(NAMES)
    m.update(torch.softmax(torch.randn(3, 8, 8, 8), 0), torch.zeros(1, 8, 8, 8))
    with pytest.raises(InputError, match="pass label_mode='multi_label'"):
        m.update(masks, masks)


BRATS_PRED = {"type": "image", "format": "segmentation", "num_channels": 3, "dtype": "float32", "value_range": [0, 1],
              "channel_def": {"0": "Tumor core", "1": "Whole tumor", "2": "Enhancing tumor"}}
BRATS_POST = {"_target_": "Compose", "transforms": [
    {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
    {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
    {"_target_": "SplitDimd", "keys": ["pred", "label"], "output_postfixes": ["tc", "wt", "et"]}]}
SPLEEN_POST = {"_target_": "Compose", "transforms": [
    {"_target_": "Activationsd", "keys": "pred", "softmax": True},
    {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False], "to_onehot": 2}]}


def test_label_mode_from_bundle_metadata_and_postprocessing():
    # brats_mri_segmentation (model zoo): its metadata does not say; its validate#postprocessing (sigmoid) does
    assert label_mode_from_bundle(BRATS_PRED) is None
    assert label_mode_from_bundle(BRATS_PRED, BRATS_POST) == "multi_label"
    whole_metadata = {"network_data_format": {"outputs": {"pred": BRATS_PRED}}}
    assert label_mode_from_bundle(whole_metadata, BRATS_POST) == "multi_label"
    assert label_mode_from_bundle(None, SPLEEN_POST) == "multi_class"  # spleen_ct_segmentation
    assert label_mode_from_bundle(None, Compose([Activationsd("pred", sigmoid=True),
                                                  AsDiscreted("pred", threshold=0.5)])) == "multi_label"
    assert label_mode_from_bundle(None, Compose([Activationsd("pred", softmax=True),
                                                  AsDiscreted("pred", argmax=True)])) == "multi_class"
    assert label_mode_from_bundle({**BRATS_PRED, "label_mode": "multi_class"}, BRATS_POST) == "multi_class"
    assert label_mode_from_bundle({**BRATS_PRED, "multi_label": True}) == "multi_label"
    assert label_mode_from_bundle(None, {"_target_": "Compose", "transforms": "$@train#post"}) is None
    assert class_names(BRATS_PRED["channel_def"], 3) == ["Tumor core", "Whole tumor", "Enhancing tumor"]


def test_prediction_agreement_compares_channels_as_binary_masks():
    x = torch.stack([c["image"].as_tensor() for c in CASES[:2]])
    dense, compressed = Logits(DENSE).eval(), Logits(COMPRESSED).eval()
    found = prediction_agreement(dense, compressed, [x[:1], x[1:]], label_mode="multi_label")
    a, b = (x + torch.tensor(COMPRESSED).view(1, 3, 1, 1, 1)) > 0, (x + torch.tensor(DENSE).view(1, 3, 1, 1, 1)) > 0
    assert found["label_mode"] == "multi_label" and "argmax_agreement" not in found
    assert found["mask_agreement"] == pytest.approx(float((a == b).float().mean())) and found["elements"] == a.numel()
    for c in range(3):
        inter, total = int((a[:, c] & b[:, c]).sum()), int(a[:, c].sum() + b[:, c].sum())
        assert found["dice"][str(c)] == pytest.approx(2 * inter / total)
    assert found["dice"]["0"] == 1.0 and found["dice"]["2"] < 0.9  # TC untouched, ET shrunk
    note = agreement_note(found, "2 inputs")
    assert "agreement of the binary channel masks (multi-label)" in note and "argmax" not in note
    assert "argmax_agreement" in prediction_agreement(dense, compressed, [x[:1]])  # exclusive classes by default
    with pytest.raises(InputError, match="label_mode must be"):
        prediction_agreement(dense, compressed, [x[:1]], label_mode="sigmoid")


def test_backend_agreement_of_a_multi_label_model_and_its_card_table():
    from monai.networks.nets import UNet

    from monai_prune.fidelity import backend_agreement

    torch.manual_seed(0)
    net = UNet(3, 2, 3, (4, 8), (2,), num_res_units=0).eval()
    found = backend_agreement(net, [torch.rand(1, 2, 16, 16, 16)], backends=["onnxruntime"], label_mode="multi_label")
    ort = found["onnxruntime"]
    assert ort["label_mode"] == "multi_label" and ort["mask_agreement"] > 0.999 and set(ort["dice_vs_torch"]) == {
        "0", "1", "2"}
    card = FidelityCard(title="t", task="segmentation", per_class={}, backend_agreement=found, label_mode="multi_label")
    assert "| runtime | channel mask agreement |" in card.to_markdown()
    assert f"| onnxruntime | {ort['mask_agreement']:.5f} |" in card.to_markdown()
