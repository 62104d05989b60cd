"""Which network classes of the MONAI model zoo ``prune_channels`` handles, measured.

For every network class a zoo bundle builds (its ``network_def``), this script builds a small instance with random
weights (small channels and inputs that keep the class's structure; the zoo's own arguments where they are cheap),
prunes it at ratio 0.3, counts MACs and parameters before and after, checks every output keeps its shape, and
prints a Markdown table. A refusal (a ``monai_prune.errors`` error naming the unsupported part) is a result, not
a crash, and so is a case stopped at its time limit: the exit code is 0 unless the script itself breaks.

    .venv/bin/python benchmarks/zoo_coverage.py [--json out.json] [--markdown] [--only UNesT HoVerNet] [--heavy]
        [--case-timeout 300] [--readme README.md]

Each row is reported on stderr as soon as it is done; the table is printed at the end. The default sizes run in
about 2 minutes on 2 quiet CPU cores (3 to 4 times that when the cores are shared); ``--heavy`` builds the zoo's
own sizes where they were shrunk and adds the cases whose size is hard-coded. ``--readme PATH`` rewrites the
table between ``<!-- zoo-coverage:start -->`` and ``<!-- zoo-coverage:end -->`` in PATH (with the command, date
and machine that produced it).

Networks defined in a bundle's own ``scripts/`` (UNesT, RegResNet, PointRegressor) are imported from a model-zoo
checkout or git mirror (``--zoo``, or ``$MONAI_MODEL_ZOO``): they are extracted to a temporary folder, never copied
into this repository. Networks needing packages that are not installed are listed as "not installed".
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.util
import json
import logging
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy
import torch
from torch import nn

from monai_prune import count_macs, count_params, prune_channels
from monai_prune.errors import MonaiPruneError
from monai_prune.pruning.zoo_support import output_tensors
from monai_prune.utils import atomic_write_text

DEFAULT_ZOO = "/work/.mirror/Project-MONAI+model-zoo/repo"
RATIO = 0.3
CASE_TIMEOUT_S = 300.0  # a safety net against a case that never ends; --case-timeout changes it, 0 removes it
README_START, README_END = "<!-- zoo-coverage:start -->", "<!-- zoo-coverage:end -->"


# ------------------------------------------------------------------------------------------- bundle scripts
class ZooScripts:
    """Imports classes from a bundle's ``scripts/`` package out of a model-zoo checkout or bare git mirror."""

    def __init__(self, zoo: Optional[str] = None) -> None:
        self.zoo = zoo or os.environ.get("MONAI_MODEL_ZOO") or DEFAULT_ZOO
        self._tmp: Optional[str] = None

    def load(self, bundle: str, dotted: str) -> type:
        module_name, _, class_name = dotted.rpartition(".")
        root = self._extract(bundle)
        for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            del sys.modules[name]  # every bundle calls its package "scripts"
        sys.path.insert(0, root)
        try:
            return getattr(importlib.import_module(module_name), class_name)
        finally:
            sys.path.remove(root)

    def _extract(self, bundle: str) -> str:
        checkout = os.path.join(self.zoo, "models", bundle)
        if os.path.isdir(os.path.join(checkout, "scripts")):
            return checkout
        if not os.path.isdir(self.zoo):
            raise ImportError(f"model zoo not found at {self.zoo} (pass --zoo or set MONAI_MODEL_ZOO to a checkout or "
                              "git mirror of Project-MONAI/model-zoo)")
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="zoo_scripts_")
        root = os.path.join(self._tmp, bundle)
        if not os.path.isdir(root):
            os.makedirs(root)
            archive = subprocess.run(["git", "-C", self.zoo, "archive", "HEAD", f"models/{bundle}/scripts"],
                                     capture_output=True, check=False)
            if archive.returncode:
                raise ImportError(f"no scripts/ for bundle {bundle} in {self.zoo}: {archive.stderr.decode()[:200]}")
            subprocess.run(["tar", "-x", "-C", root, "--strip-components=2"], input=archive.stdout, check=True)
        return root

    def close(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------- the networks
@dataclass
class Case:
    name: str  # network class (and variant)
    bundles: Sequence[str]  # zoo bundles whose network_def builds it
    build: Callable[["ZooScripts", bool], Tuple[nn.Module, Any]]  # (zoo, heavy) -> (model, example_input)
    args: str  # what was built, for the table
    heavy: bool = False  # skipped unless --heavy
    heavy_args: Optional[str] = None  # what build(zoo, heavy=True) builds, where that differs
    compat: Optional[Callable[[], ContextManager]] = None  # entered while the case is built and run


# ------------------------------------------------------------------------------------------- compatibility
@contextlib.contextmanager
def numpy_product_alias() -> Iterator[None]:
    """Compatibility shim for bundle code written for numpy 1.x, entered only around the valve_landmarks bundle's
    ``PointRegressor``: its constructor (``_get_final_layer``) calls ``numpy.product``, a deprecated alias of
    ``numpy.prod`` that numpy 2.0 removed. Only where numpy lacks it, and only while that case is imported, built
    and pruned, ``numpy.product`` is ``numpy.prod``; the alias is removed again afterwards, so nothing else (no
    other case, not monai-prune) runs with it."""
    if hasattr(numpy, "product"):  # numpy 1.x: nothing to do
        yield
        return
    numpy.product = numpy.prod
    try:
        yield
    finally:
        del numpy.product


def _nets():
    from monai.networks import nets

    return nets


def _maisi(name: str):
    module = importlib.import_module(f"monai.apps.generation.maisi.networks.{name}")
    return module


def _t(n: int = 1) -> torch.Tensor:
    return torch.full((n,), 10, dtype=torch.long)


def _unet(z, heavy=False):
    m = _nets().UNet(3, 1, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2, norm="batch")
    return m, torch.randn(1, 1, 32, 32, 32)


def _segresnet(z, heavy=False):
    m = _nets().SegResNet(blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), init_filters=16, in_channels=4,
                          out_channels=3, dropout_prob=0.2)
    return m, torch.randn(1, 4, 32, 32, 32)


def _dynunet(z, heavy=False):
    # the zoo's 6 levels, kernels and strides, residual blocks; half its filters (32..320) unless heavy
    filters = None if heavy else (16, 32, 64, 128, 160, 160)
    m = _nets().DynUNet(3, 2, 1, [3] * 6, [1, 2, 2, 2, 2, [2, 2, 1]], [2, 2, 2, 2, [2, 2, 1]], filters=filters,
                        norm_name="instance", deep_supervision=False, res_block=True)
    # the strides take 64x64x32 down to 2x2x2: instance norm needs more than 1 voxel at the bottom
    return m, torch.randn(1, 2, 64, 64, 32)


def _swinunetr(z, heavy=False):
    # 64³ is the smallest input (5 halvings, instance norm needs more than 1 voxel at the bottom); the window
    # attention at 64³ costs most of the time, so windows of 4 (zoo 7) unless heavy: still 2 blocks a stage, the
    # second one shifted, and window attention over several windows at every stage
    m = _nets().SwinUNETR(in_channels=1, out_channels=14, feature_size=12, window_size=7 if heavy else 4)
    return m, torch.randn(1, 1, 64, 64, 64)


def _basicunet(z, heavy=False):
    return _nets().BasicUNet(2, 5, 1, features=(32, 64, 128, 256, 512, 32)), torch.randn(1, 5, 64, 64)


def _densenet(z, heavy=False):
    return _nets().DenseNet121(spatial_dims=2, in_channels=4, out_channels=4), torch.randn(1, 4, 64, 64)


def _seresnet(z, heavy=False):
    return _nets().SEResNet50(spatial_dims=2, in_channels=3, num_classes=2), torch.randn(1, 3, 64, 64)


def _flexibleunet(z, heavy=False):
    m = _nets().FlexibleUNet(3, 2, "efficientnet-b2", spatial_dims=2, pretrained=False, is_pad=False, pre_conv=None)
    return m, torch.randn(1, 3, 64, 64)


def _tv_resnet(z, heavy=False):
    m = _nets().TorchVisionFCModel("resnet18", num_classes=1, use_conv=True, pretrained=False)
    return m, torch.randn(1, 3, 64, 64)


def _tv_inception(z, heavy=False):
    m = _nets().TorchVisionFCModel("inception_v3", num_classes=4, pool=None, use_conv=False, bias=True,
                                   pretrained=False)
    return m, torch.randn(1, 3, 128, 128)


def _retinanet(z, heavy=False):
    from monai.apps.detection.networks.retinanet_network import RetinaNet, resnet_fpn_feature_extractor

    backbone = _nets().resnet.resnet50(spatial_dims=3, n_input_channels=1, conv1_t_stride=[2, 2, 1],
                                       conv1_t_size=[7, 7, 7])
    features = resnet_fpn_feature_extractor(backbone, 3, False, [1, 2], None)
    m = RetinaNet(spatial_dims=3, num_classes=1, num_anchors=3, feature_extractor=features,
                  size_divisible=[16, 16, 8], use_list_output=False)
    return m, torch.randn(1, 1, 32, 32, 16)


def _generator(z, heavy=False):
    # pruning time grows with the linear layer's 64 * 8 * 8 outputs: a 4 x 4 start (same layers) unless heavy
    start = (64, 8, 8) if heavy else (64, 4, 4)
    m = _nets().Generator(latent_shape=64, start_shape=start, channels=(32, 16, 8, 1), strides=(2, 2, 2, 1))
    return m, torch.randn(1, 64)


def _regresnet(z, heavy=False):
    cls = z.load("mednist_reg", "scripts.net.RegResNet")
    return cls(image_size=[64, 64], spatial_dims=2, mode="bilinear", padding_mode="border"), torch.randn(1, 2, 64, 64)


def _point_regressor(z, heavy=False):  # run under numpy_product_alias (see its Case)
    cls = z.load("valve_landmarks", "scripts.valve_landmarks.PointRegressor")
    m = cls(in_shape=[1, 256, 256], out_shape=[2, 10], channels=[8, 16, 32, 64, 128], strides=[2, 2, 2, 2, 2])
    return m, torch.randn(1, 1, 256, 256)


def _unest_base(z, heavy=False):
    cls = z.load("wholeBrainSeg_Large_UNEST_segmentation", "scripts.networks.unest_base_patch_4.UNesT")
    # the decoder ties feature_size to embed_dim (32 * feature_size == embed_dim[2]); img_size is fixed at 96
    embed, feature_size = ((32, 64, 128), 4) if heavy else ((16, 32, 64), 2)
    m = cls(in_channels=1, out_channels=133, feature_size=feature_size, patch_size=4, depths=(1, 1, 2),
            embed_dim=embed, num_heads=(1, 2, 4))
    return m, torch.randn(1, 1, 96, 96, 96)


def _unest_renal(z, heavy=False):
    cls = z.load("renalStructures_UNEST_segmentation", "scripts.networks.unest.UNesT")
    return cls(in_channels=1, out_channels=4), torch.randn(1, 1, 96, 96, 96)


def _dints(z, heavy=False):
    nets = _nets()
    space = nets.TopologyInstance(channel_mul=0.5, num_blocks=3, num_depths=3, use_downsample=True, spatial_dims=3)
    return nets.DiNTS(space, in_channels=1, num_classes=3, use_downsample=True), torch.randn(1, 1, 32, 32, 32)


def _hovernet(z, heavy=False):
    m = _nets().HoVerNet(mode="fast", adapt_standard_resnet=True, in_channels=3, out_classes=5)
    return m, torch.randn(1, 3, 256, 256)  # fast mode takes 256 x 256 patches only


def _autoencoderkl_3d(z, heavy=False):
    m = _nets().AutoencoderKL(spatial_dims=3, in_channels=1, out_channels=1, latent_channels=8, channels=(8, 16, 16),
                              num_res_blocks=1, norm_num_groups=4, attention_levels=(False, False, False),
                              with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False, include_fc=False)
    return m, torch.randn(1, 1, 32, 32, 32)


def _autoencoderkl_2d(z, heavy=False):
    m = _nets().AutoencoderKL(spatial_dims=2, in_channels=1, out_channels=1, latent_channels=1, channels=(8, 16, 16),
                              num_res_blocks=1, norm_num_groups=4, attention_levels=(False, False, False),
                              with_encoder_nonlocal_attn=True, with_decoder_nonlocal_attn=True, include_fc=False)
    return m, torch.randn(1, 1, 64, 64)


def _dm_unet_3d(z, heavy=False):
    m = _nets().DiffusionModelUNet(spatial_dims=3, in_channels=8, out_channels=8, channels=(16, 32, 32),
                                   attention_levels=(False, True, True), num_head_channels=(0, 8, 8),
                                   num_res_blocks=1, norm_num_groups=8, include_fc=False, use_combined_linear=False)
    return m, (torch.randn(1, 8, 16, 16, 16), _t())


def _dm_unet_2d(z, heavy=False):
    m = _nets().DiffusionModelUNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 32, 32, 64),
                                   attention_levels=(False, True, True, True), num_head_channels=(0, 8, 8, 8),
                                   num_res_blocks=1, norm_num_groups=8, include_fc=False, use_combined_linear=False)
    return m, (torch.randn(1, 1, 32, 32), _t())


def _dm_unet_maisi_mask(z, heavy=False):
    # maisi's mask-generation diffusion: cross-attention on a 10-d context, flash attention
    m = _nets().DiffusionModelUNet(spatial_dims=3, in_channels=4, out_channels=4, channels=(16, 16, 32, 32),
                                   attention_levels=(False, False, True, True), num_head_channels=(0, 0, 8, 8),
                                   num_res_blocks=1, norm_num_groups=8, use_flash_attention=True,
                                   with_conditioning=True, upcast_attention=True, cross_attention_dim=10)
    return m, {"x": torch.randn(1, 4, 16, 16, 16), "timesteps": _t(), "context": torch.randn(1, 1, 10)}


def _autoencoder_maisi(z, heavy=False):
    m = _maisi("autoencoderkl_maisi").AutoencoderKlMaisi(
        spatial_dims=3, in_channels=1, out_channels=1, latent_channels=4, num_channels=(8, 16, 16),
        num_res_blocks=(1, 1, 1), norm_num_groups=4, attention_levels=(False, False, False),
        with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False, use_checkpointing=False,
        use_convtranspose=False, norm_float16=False, num_splits=2, dim_split=1)
    return m, torch.randn(1, 1, 32, 32, 32)


def _dm_unet_maisi(z, heavy=False):
    # the zoo sets use_flash_attention, which this class accepts on a GPU only ("Flash attention is only available
    # for GPU"); on the CPU its attention is the same block without it
    m = _maisi("diffusion_model_unet_maisi").DiffusionModelUNetMaisi(
        spatial_dims=3, in_channels=4, out_channels=4, num_channels=(16, 16, 32, 32),
        attention_levels=(False, False, True, True), num_head_channels=(0, 0, 8, 8), num_res_blocks=1,
        norm_num_groups=8, use_flash_attention=torch.cuda.is_available(), include_top_region_index_input=True,
        include_bottom_region_index_input=True, include_spacing_input=True)
    x = {"x": torch.randn(1, 4, 16, 16, 16), "timesteps": _t(), "top_region_index_tensor": torch.rand(1, 4),
         "bottom_region_index_tensor": torch.rand(1, 4), "spacing_tensor": torch.rand(1, 3)}
    return m, x


def _controlnet_maisi(z, heavy=False):
    m = _maisi("controlnet_maisi").ControlNetMaisi(
        spatial_dims=3, in_channels=4, num_channels=(16, 16, 32, 32), attention_levels=(False, False, True, True),
        num_head_channels=(0, 0, 8, 8), num_res_blocks=1, norm_num_groups=8, use_flash_attention=True,
        conditioning_embedding_in_channels=8, conditioning_embedding_num_channels=(8, 16, 16))
    x = {"x": torch.randn(1, 4, 16, 16, 16), "timesteps": _t(), "controlnet_cond": torch.randn(1, 8, 64, 64, 64)}
    return m, x


def _vista3d(z, heavy=False):
    return _nets().vista3d132(encoder_embed_dim=16, in_channels=1), {
        "input_images": torch.randn(1, 1, 32, 32, 32), "class_vector": torch.tensor([[1], [2]])}


def _cellsam(z, heavy=False):
    from monai.networks.nets.cell_sam_wrapper import CellSamWrapper

    if importlib.util.find_spec("segment_anything") is None:  # the wrapper raises a ValueError for this
        raise ImportError("segment_anything (SAM) is not installed")

    return CellSamWrapper(checkpoint=None), torch.randn(1, 3, 64, 64)


CASES: List[Case] = [
    Case("UNet", ["spleen_ct_segmentation", "prostate_mri_anatomy", "segmentation_template",
                  "ventricular_short_axis_3label"], _unet, "spleen's (16..256, 2 res units, batch), 32³"),
    Case("SegResNet", ["brats_mri_segmentation", "renalStructures_CECT_segmentation", "wholeBody_ct_segmentation"],
         _segresnet, "brats's (16 filters, 4 in, 3 out), 32³"),
    Case("DynUNet", ["pediatric_abdominal_ct_segmentation", "spleen_deepedit_annotation"], _dynunet,
         "zoo's 6 levels, res blocks, instance norm; filters 16..160 (zoo 32..320), 64²×32",
         heavy_args="zoo's (6 levels, res blocks, instance, filters 32..320), 64²×32"),
    Case("SwinUNETR", ["swin_unetr_btcv_segmentation"], _swinunetr,
         "feature_size 12 (zoo 48), window 4 (zoo 7), 64³", heavy_args="feature_size 12 (zoo 48), window 7, 64³"),
    Case("BasicUNet", ["pathology_nuclick_annotation"], _basicunet, "zoo's (2D, 5 in, 32..512), 64²"),
    Case("DenseNet121", ["classification_template", "pathology_nuclei_classification"], _densenet,
         "zoo's (2D, 4 in, 4 out), 64²"),
    Case("SEResNet50", ["endoscopic_inbody_classification"], _seresnet, "zoo's (2D, 3 in, 2 classes), 64²"),
    Case("FlexibleUNet", ["endoscopic_tool_segmentation"], _flexibleunet, "zoo's (efficientnet-b2), 64²"),
    Case("TorchVisionFCModel (resnet18)", ["pathology_tumor_detection"], _tv_resnet,
         "zoo's (use_conv, random weights), 64²"),
    Case("TorchVisionFCModel (inception_v3)", ["breast_density_classification"], _tv_inception,
         "zoo's (random weights), 128²"),
    Case("RetinaNet", ["lung_nodule_ct_detection"], _retinanet, "zoo's (resnet50 FPN, 3 anchors), 32²×16"),
    Case("Generator", ["mednist_gan"], _generator, "zoo's (latent 64) but start 64×4×4 (zoo 64×8×8), latent input",
         heavy_args="zoo's (latent 64, start 64×8×8), latent input"),
    Case("RegResNet (bundle scripts)", ["mednist_reg"], _regresnet, "zoo's (resnet18 + affine head), 64²"),
    Case("PointRegressor (bundle scripts)", ["valve_landmarks"], _point_regressor, "zoo's (8..128), 256²",
         compat=numpy_product_alias),
    Case("UNesT (bundle scripts, unest_base_patch_4)", ["wholeBrainSeg_Large_UNEST_segmentation"], _unest_base,
         "embed 16/32/64 (zoo 128/256/512), depths 1/1/2, 96³ (fixed)",
         heavy_args="embed 32/64/128 (zoo 128/256/512), depths 1/1/2, 96³ (fixed)"),
    Case("UNesT (bundle scripts, unest)", ["renalStructures_UNEST_segmentation"], _unest_renal,
         "zoo's (its sizes are hard-coded: embed 128/256/512), 96³", heavy=True),
    Case("DiNTS", ["multi_organ_segmentation", "pancreas_ct_dints_segmentation"], _dints,
         "full search space (zoo: searched arch codes), channel_mul 0.5, 3 blocks, 3 depths, 32³"),
    Case("HoVerNet", ["pathology_nuclei_segmentation_classification"], _hovernet,
         "zoo's (fast mode, 5 classes), 256² (fixed)"),
    Case("AutoencoderKL (3D)", ["brats_mri_generative_diffusion"], _autoencoderkl_3d, "channels 8/16/16, 32³"),
    Case("AutoencoderKL (2D)", ["brats_mri_axial_slices_generative_diffusion"], _autoencoderkl_2d,
         "channels 8/16/16, non-local attention, 64²"),
    Case("DiffusionModelUNet (3D)", ["brats_mri_generative_diffusion"], _dm_unet_3d,
         "channels 16/32/32, attention, 16³ latent + timestep"),
    Case("DiffusionModelUNet (2D)", ["brats_mri_axial_slices_generative_diffusion"], _dm_unet_2d,
         "channels 16/32/32/64, attention, 32² latent + timestep"),
    Case("DiffusionModelUNet (3D, cross-attention)", ["maisi_ct_generative"], _dm_unet_maisi_mask,
         "channels 16/16/32/32, flash attention, context 10, 16³"),
    Case("AutoencoderKlMaisi", ["maisi_ct_generative"], _autoencoder_maisi, "channels 8/16/16, 2 splits, 32³"),
    Case("DiffusionModelUNetMaisi", ["maisi_ct_generative"], _dm_unet_maisi,
         "channels 16/16/32/32, region + spacing inputs, no flash attention (GPU only), 16³"),
    Case("ControlNetMaisi", ["maisi_ct_generative"], _controlnet_maisi,
         "channels 16/16/32/32, mask 64³ → latent 16³"),
    Case("VISTA3D", ["vista3d"], _vista3d, "vista3d132 with encoder_embed_dim 16 (zoo 48), 2 classes, 32³"),
    Case("CellSamWrapper", ["vista2d"], _cellsam, "SAM ViT-B image encoder"),
]


# ------------------------------------------------------------------------------------------- running one case
def _shapes(output) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(t.shape) for k, t in output_tensors(output).items()}


def _call(model: nn.Module, x):
    with torch.no_grad():
        if isinstance(x, dict):
            return model(**x)
        return model(*x) if isinstance(x, tuple) else model(x)


class CaseTimeout(BaseException):
    """Raised by the alarm when a case runs past its time limit. A BaseException, so that no ``except Exception``
    on its way up (torch-pruning's, monai-prune's) turns it into another error."""


@contextlib.contextmanager
def time_limit(seconds: Optional[float]) -> Iterator[None]:
    """Raise :class:`CaseTimeout` in the main thread after ``seconds`` (SIGALRM; nothing where there is none)."""
    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum, frame):
        raise CaseTimeout(seconds)

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _empty_row(case: Case, heavy: bool) -> Dict[str, Any]:
    return {"network": case.name, "bundles": list(case.bundles),
            "built_with": case.heavy_args if heavy and case.heavy_args else case.args, "status": "",
            "macs_before": None, "macs_after": None, "params_before": None, "params_after": None,
            "output_shape_kept": None, "message": "", "seconds": 0.0}


def _measure(case: Case, zoo: ZooScripts, heavy: bool, row: Dict[str, Any]) -> None:
    torch.manual_seed(0)
    try:
        model, x = case.build(zoo, heavy)
    except ImportError as e:  # a package (or the zoo's scripts) that is not here
        row.update(status="not installed", message=f"{type(e).__name__}: {e}")
        return
    model.eval()
    row["params_before"] = count_params(model)
    dense = _shapes(_call(model, x))
    row["macs_before"] = count_macs(model, x)
    try:
        pruned, plan = prune_channels(model, x, ratio=RATIO)
    except MonaiPruneError as e:
        row.update(status="refused", message=f"{type(e).__name__}: {e}")
        return
    after = _shapes(_call(pruned, x))
    row.update(macs_after=count_macs(pruned, x), params_after=count_params(pruned),
               output_shape_kept=after == dense, groups_pruned=plan.num_groups)
    row["status"] = "pruned" if after == dense else "failed"
    if after != dense:
        row["message"] = f"outputs changed: {dense} -> {after}"
    elif row["macs_after"] >= row["macs_before"]:
        row["message"] = "no MACs removed"


def run_case(case: Case, zoo: ZooScripts, heavy: bool = False,
             timeout_s: Optional[float] = CASE_TIMEOUT_S) -> Dict[str, Any]:
    """One row: build, measure, prune, measure again; stopped after ``timeout_s`` (0 or None for no limit)."""
    row = _empty_row(case, heavy)
    limit = timeout_s or None
    start = time.perf_counter()
    try:
        with time_limit(limit), (case.compat() if case.compat else contextlib.nullcontext()):
            _measure(case, zoo, heavy, row)
    except CaseTimeout:
        row.update(status="timed out", message=f"stopped after {limit:g} s")
    except Exception as e:  # an unexpected failure of monai_prune on this network: a result for the table
        row.update(status="failed", message=f"{type(e).__name__}: {e}")
        logging.getLogger("zoo_coverage").debug("%s", traceback.format_exc())
    finally:
        row["seconds"] = round(time.perf_counter() - start, 1)
    return row


# ------------------------------------------------------------------------------------------- output
def _num(n: Optional[int], unit: float, suffix: str) -> str:
    return "–" if n is None else f"{n / unit:.3g}{suffix}"


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


def _ratio(after: Optional[int], before: Optional[int]) -> str:
    return f" ({after / before:.2f})" if after and before else ""


def markdown_row(r: Dict[str, Any]) -> str:
    macs = f"{_num(r['macs_before'], 1e9, 'G')} → {_num(r['macs_after'], 1e9, 'G')}"
    macs += _ratio(r["macs_after"], r["macs_before"])
    params = f"{_num(r['params_before'], 1e6, 'M')} → {_num(r['params_after'], 1e6, 'M')}"
    params += _ratio(r["params_after"], r["params_before"])
    kept = {True: "yes", False: "no", None: "–"}[r["output_shape_kept"]]
    message = _first_line(r["message"]).replace("|", "\\|")
    return (f"| {r['network']} | {', '.join(r['bundles'])} | {r['built_with']} | {r['status']} | {macs} | {params} "
            f"| {kept} | {r['seconds']:g} | {message} |")


def markdown(rows: List[Dict[str, Any]]) -> str:
    lines = ["| network class | zoo bundles | built with | status | MACs before → after | params before → after "
             "| output shape kept | seconds | message |", "|---|---|---|---|---|---|---|---|---|"]
    return "\n".join(lines + [markdown_row(r) for r in rows])


def progress_line(i: int, n: int, r: Dict[str, Any]) -> str:
    line = f"[{i}/{n}] {r['network']}: {r['status']} in {r['seconds']:g} s"
    if r["macs_after"] and r["macs_before"]:
        line += f", MACs {r['macs_after'] / r['macs_before']:.2f}, params {r['params_after'] / r['params_before']:.2f}"
    message = _first_line(r["message"])
    return line + (f"; {message[:200]}" if message else "")


# ------------------------------------------------------------------------------------------- README
def _readme_halves(path: str) -> Tuple[str, str]:
    """The text of ``path`` up to and including the start marker, and from the end marker on; ValueError (one
    line) when the markers are not there exactly once each, in order."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from e
    start, end = text.find(README_START), text.find(README_END)
    if text.count(README_START) != 1 or text.count(README_END) != 1 or end < start:
        raise ValueError(f"{path} must contain {README_START} and then {README_END}, once each, around the "
                         "table to rewrite")
    return text[:start + len(README_START)], text[end:]


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} CPUs ({torch.get_num_threads()} "
            "torch threads)")


def _versions() -> str:
    import monai
    import torch_pruning

    return (f"torch {torch.__version__}, monai {monai.__version__}, torch-pruning {torch_pruning.__version__}, "
            f"numpy {numpy.__version__}")


def readme_block(rows: List[Dict[str, Any]], command: str, total_s: float) -> str:
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return (f"_Generated by `{command}` on {today} (UTC), {_machine()}; {_versions()}; {total_s:.0f} s in all. "
            "Rerun the command to update it; edits between the markers are overwritten._\n\n" + markdown(rows))


def write_readme(path: str, block: str) -> None:
    """Replace what lies between the markers in ``path`` with ``block``, atomically (a temporary file in the same
    folder, then ``os.replace``)."""
    head, tail = _readme_halves(path)  # read again: the file may have changed while the cases ran
    atomic_write_text(path, f"{head}\n{block}\n{tail}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the rows to this JSON file")
    parser.add_argument("--markdown", action="store_true", help="print only the Markdown table (no progress lines)")
    parser.add_argument("--only", nargs="+", help="run only the networks whose name contains one of these")
    parser.add_argument("--heavy", action="store_true",
                        help="build the zoo's own sizes where the default shrinks them, and also run full-size "
                             "networks whose size is hard-coded")
    parser.add_argument("--case-timeout", type=float, default=CASE_TIMEOUT_S, metavar="S",
                        help=f"stop a case after S seconds and report it as timed out (default {CASE_TIMEOUT_S:g}; "
                             "0: no limit)")
    parser.add_argument("--readme", metavar="PATH",
                        help=f"rewrite the table between {README_START} and {README_END} in PATH")
    parser.add_argument("--zoo", help=f"model-zoo checkout or git mirror (default $MONAI_MODEL_ZOO or {DEFAULT_ZOO})")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "benchmarks/zoo_coverage.py", *(sys.argv[1:] if argv is None else argv)])
    if args.readme:
        try:
            _readme_halves(args.readme)  # before the cases run, not after
        except ValueError as e:
            print(f"zoo_coverage.py: error: {e}", file=sys.stderr)
            return 2
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    logging.getLogger("monai_prune").setLevel(logging.WARNING)

    cases = [c for c in CASES if not args.only or any(o.lower() in c.name.lower() for o in args.only)]
    zoo = ZooScripts(args.zoo)
    rows = []
    began = time.perf_counter()
    try:
        for i, case in enumerate(cases, 1):
            if case.heavy and not args.heavy:
                row = _empty_row(case, False)
                row.update(status="skipped",
                           message="full size only (its constructor hard-codes the encoder); run with --heavy")
            else:
                row = run_case(case, zoo, heavy=args.heavy, timeout_s=args.case_timeout)
            rows.append(row)
            if not args.markdown:
                print(progress_line(i, len(cases), row), file=sys.stderr, flush=True)
    finally:
        zoo.close()
    total_s = time.perf_counter() - began
    if not args.markdown:
        print(f"{len(rows)} cases in {total_s:.0f} s", file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    print(markdown(rows), flush=True)
    if args.readme:
        try:
            write_readme(args.readme, readme_block(rows, command, total_s))
        except ValueError as e:
            print(f"zoo_coverage.py: error: {e}", file=sys.stderr)
            return 2
        if not args.markdown:
            print(f"table written to {args.readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
