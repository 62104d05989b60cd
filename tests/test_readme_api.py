"""The Python tour of the issue and README, run as written (with a small UNet)."""

import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

import monai_prune


def test_issue_example_end_to_end(tmp_path):
    args = dict(spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16, 32, 64), strides=(2, 2, 2),
                num_res_units=2, norm="batch")
    model = UNet(**args).eval()
    example_input = torch.randn(1, 1, 32, 32, 32)
    pruned, plan = monai_prune.prune_channels(model, example_input, ratio=0.5)
    assert monai_prune.count_macs(pruned, example_input) < monai_prune.count_macs(model, example_input)
    assert monai_prune.count_params(pruned) < monai_prune.count_params(model)
    plan.save(tmp_path / "plan.json")
    torch.save(pruned.state_dict(), tmp_path / "model.pt")
    fresh = monai_prune.apply_plan(UNet(**args), monai_prune.PruningPlan.load(tmp_path / "plan.json"))
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(example_input), pruned(example_input))
    monai_prune.export_torchscript(pruned, example_input, tmp_path / "model.ts")
    monai_prune.export_onnx(pruned, example_input, tmp_path / "model.onnx")
    predictor = monai_prune.Predictor(pruned, example_input, backend="onnxruntime")
    seg = sliding_window_inference(torch.rand(1, 1, 40, 40, 40), (32, 32, 32), 2, predictor)
    assert seg.shape == (1, 2, 40, 40, 40)
