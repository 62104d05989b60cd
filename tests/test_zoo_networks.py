"""Issue 16: model-zoo networks that failed in prune_channels / count_macs, on tiny instances.

UNesT lives in its bundle's ``scripts/``; it is imported from a model-zoo checkout or git mirror
(``$MONAI_MODEL_ZOO``, see ``benchmarks/zoo_coverage.py``) and the test is skipped where there is none.
"""

import contextlib
import importlib.util
import os
import sys

import pytest
import torch
from monai.networks import nets

import monai_prune as mp
from monai_prune.pruning.zoo_support import output_tensors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _zoo_coverage():
    spec = importlib.util.spec_from_file_location("zoo_coverage", os.path.join(ROOT, "benchmarks", "zoo_coverage.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _call(model, x):
    with torch.no_grad():
        return model(**x) if isinstance(x, dict) else model(*x) if isinstance(x, tuple) else model(x)


def _assert_pruned(model, x, ratio=0.3):
    """Pruned: every output keeps its shape, MACs and parameters fall, the result is finite."""
    model.eval()
    dense = {k: t.shape for k, t in output_tensors(_call(model, x)).items()}
    pruned, plan = mp.prune_channels(model, x, ratio=ratio)
    out = output_tensors(_call(pruned, x))
    assert {k: t.shape for k, t in out.items()} == dense
    assert all(torch.isfinite(t).all() for t in out.values())
    assert plan.stats["macs_after"] < plan.stats["macs_before"]
    assert mp.count_params(pruned) < mp.count_params(model)
    return pruned, plan


def test_unest_prunes_around_its_nest_encoder():
    """Before: PruningError(ZeroDivisionError) in tracing (5-D expands read as grouped-query attention)."""
    zoo = _zoo_coverage().ZooScripts()
    try:
        unest = zoo.load("wholeBrainSeg_Large_UNEST_segmentation", "scripts.networks.unest_base_patch_4.UNesT")
    except ImportError as e:
        pytest.skip(f"model zoo not available: {e}")
    finally:
        zoo.close()
    torch.manual_seed(0)
    model = unest(in_channels=1, out_channels=3, feature_size=2, patch_size=4, depths=(1, 1, 1), embed_dim=(16, 32, 64),
                  num_heads=(1, 1, 2))
    pruned, plan = _assert_pruned(model, torch.randn(1, 1, 96, 96, 96))
    assert any(n.startswith("nestViT.levels") for n in plan.kept_layers)  # NesT levels kept whole


class _SmallPatchHoVerNet(nets.HoVerNet):
    """HoVerNet's own layers on a 64² patch (its forward accepts 256² only, too slow for a unit test)."""

    def forward(self, x):
        x = self.conv0(x)
        short_cuts = []
        for i, block in enumerate(self.res_blocks):
            x = block(x)
            if i <= 2:
                short_cuts.append(x)
        x = self.upsample(self.bottleneck(x))
        return {"nucleus_prediction": self.nucleus_prediction(x, short_cuts),
                "horizontal_vertical": self.horizontal_vertical(x, short_cuts),
                "type_prediction": self.type_prediction(x, short_cuts)}


def test_hovernet_keeps_every_dict_output():
    """Before: TypeError "expected the network to return a tensor of shape (B, C, ...), got dict"."""
    torch.manual_seed(0)
    model = _SmallPatchHoVerNet(mode="fast", in_channels=3, out_classes=5, decoder_padding=True,
                                adapt_standard_resnet=True)
    pruned, plan = _assert_pruned(model, torch.randn(1, 3, 64, 64))
    assert {k: v.shape[1] for k, v in _call(pruned, torch.randn(1, 3, 64, 64)).items()} == {
        "nucleus_prediction": 2, "horizontal_vertical": 2, "type_prediction": 5}


def test_dints_input_layer_is_the_stem_that_runs_first():
    """Before: InputError "first layer 'dints_space.cell_tree.(0, 0)...' expects 16 input channels"; then the
    pruned cells broke (spatial slices x[:, :, 1:, 1:, 1:] read as channel slices)."""
    torch.manual_seed(0)
    space = nets.TopologyInstance(channel_mul=0.25, num_blocks=2, num_depths=2, use_downsample=True, spatial_dims=3)
    model = nets.DiNTS(space, in_channels=1, num_classes=2, use_downsample=True)
    _assert_pruned(model, torch.randn(1, 1, 16, 16, 16))


def test_dints_wrong_input_names_the_layer_that_ran_first():
    space = nets.TopologyInstance(channel_mul=0.25, num_blocks=2, num_depths=2, use_downsample=True, spatial_dims=3)
    model = nets.DiNTS(space, in_channels=1, num_classes=2, use_downsample=True)
    with pytest.raises(mp.errors.InputError, match=r"its first layer 'stem_down\.0\.mod\.1' \(Conv3d\) expects 1 "
                                                   r"input channel, got 3"):
        mp.prune_channels(model, torch.randn(1, 3, 16, 16, 16), ratio=0.3)


def test_diffusion_model_unet_3d_skip_and_stored_widths():
    """Before: PruningError "layer 'down_blocks.0.resnets.0.skip_connection' raised ValueError: Input number of
    channels (8) is not equal to expected number of channels (16)" (the downsampler's stored width)."""
    torch.manual_seed(0)
    model = nets.DiffusionModelUNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(16, 32, 32),
                                    attention_levels=(False, True, True), num_head_channels=(0, 8, 8),
                                    num_res_blocks=1, norm_num_groups=8, include_fc=False)
    pruned, _ = _assert_pruned(model, (torch.randn(1, 1, 16, 16, 16), torch.tensor([10])))
    down = pruned.down_blocks[0].downsampler
    assert down.num_channels == pruned.down_blocks[0].resnets[0].conv2.conv.out_channels < 16


@pytest.mark.parametrize("resblock_updown", [False, True], ids=["conv_downsampler", "resblock_pool_downsampler"])
def test_diffusion_model_unet_3d_plan_replay_syncs_stored_widths(tmp_path, resblock_updown):
    """Before: apply_plan left the downsampler's stored num_channels at the dense width, so the replayed network
    raised "Input number of channels (4) is not equal to expected number of channels (8)"."""

    def build():
        return nets.DiffusionModelUNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(8, 16),
                                       attention_levels=(False, True), num_head_channels=(0, 8), num_res_blocks=1,
                                       norm_num_groups=4, include_fc=False, resblock_updown=resblock_updown).eval()

    torch.manual_seed(0)
    model = build()
    with torch.no_grad():  # the output convolution is zero-initialised: random weights make the comparison real
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    x = (torch.randn(1, 1, 8, 8, 8), torch.tensor([10]))
    pruned, plan = _assert_pruned(model, x)
    plan.save(tmp_path / "plan.json")
    fresh = mp.apply_plan(build(), mp.PruningPlan.load(tmp_path / "plan.json")).eval()
    fresh.load_state_dict(pruned.state_dict(), strict=True)

    def stored(net):
        return {n: m.num_channels for n, m in net.named_modules() if type(m).__name__ == "DiffusionUnetDownsample"}

    assert stored(fresh) == stored(pruned) and all(w < 8 for w in stored(pruned).values())
    expected = _call(pruned, x)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(_call(fresh, x), expected, rtol=1e-5, atol=1e-5)


def test_count_macs_attention_called_with_keywords():
    """Before: ``q, k, v = args[:3]`` ValueError on scaled_dot_product_attention(query=..., key=..., value=...)."""
    torch.manual_seed(0)
    model = nets.ControlNet(spatial_dims=2, in_channels=1, channels=(8, 8), attention_levels=(False, True),
                            num_head_channels=(0, 8), num_res_blocks=1, norm_num_groups=4, use_flash_attention=True,
                            conditioning_embedding_in_channels=1, conditioning_embedding_num_channels=(8,)).eval()
    x = (torch.randn(1, 1, 16, 16), torch.tensor([10]), torch.randn(1, 1, 16, 16))
    total, layers = mp.count_macs(model, x, per_layer=True)
    # two attention blocks (down block and middle block) on 8x8 tokens of 8 channels: QK^T and AV, 2 * 64 * 64 * 8 each
    assert layers["<attention products>"] == 2 * (2 * 64 * 64 * 8)
    assert total == sum(layers.values())


def _maisi_autoencoder(channels=(8, 16, 16)):
    maisi = pytest.importorskip("monai.apps.generation.maisi.networks.autoencoderkl_maisi")
    return maisi.AutoencoderKlMaisi(
        spatial_dims=3, in_channels=1, out_channels=1, latent_channels=4, num_channels=channels,
        num_res_blocks=(1,) * len(channels), norm_num_groups=4, attention_levels=(False,) * len(channels),
        with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False, use_checkpointing=False,
        use_convtranspose=False, norm_float16=False, num_splits=2, dim_split=1).eval()


def test_autoencoder_kl_maisi_prunes_and_replays(tmp_path):
    """Before: prune_channels never returned (torch-pruning's group search went round MaisiGroupNorm3D's per-group
    view/slice/cat for ever); it is traced as the nn.GroupNorm it subclasses."""
    torch.manual_seed(0)
    model = _maisi_autoencoder()
    x = torch.randn(1, 1, 24, 24, 24)
    pruned, plan = _assert_pruned(model, x)
    norms = [m for m in pruned.modules() if type(m).__name__ == "MaisiGroupNorm3D"]
    assert norms and any(m.num_channels < 16 for m in norms)
    assert all(m.num_channels % m.num_groups == 0 and m.weight.shape == (m.num_channels,) for m in norms)
    assert all("forward" not in m.__dict__ for m in pruned.modules())  # its own forward runs again

    plan.save(tmp_path / "plan.json")
    fresh = mp.apply_plan(_maisi_autoencoder(), mp.PruningPlan.load(tmp_path / "plan.json")).eval()
    fresh.load_state_dict(pruned.state_dict(), strict=True)
    torch.manual_seed(1)  # the autoencoder samples its latent
    expected = _call(pruned, x)
    torch.manual_seed(1)
    replayed = _call(fresh, x)
    assert expected[0].abs().max() > 0.1
    for a, b in zip(replayed, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_group_search_that_does_not_end_is_refused(monkeypatch):
    """Without the GroupNorm tracing the search would run for ever: it is stopped with an error naming the layer."""
    from monai_prune.pruning import channel

    monkeypatch.setattr(channel, "traced_as_base", lambda model: contextlib.nullcontext())
    torch.manual_seed(0)
    with pytest.raises(mp.errors.PruningError, match=r"does not end on this AutoencoderKlMaisi .*\(MaisiGroupNorm3D\)"):
        mp.prune_channels(_maisi_autoencoder(channels=(8, 16)), torch.randn(1, 1, 16, 16, 16), ratio=0.3)
