"""Fixtures only (helpers with public names live in ``tests/helpers/``)."""

import logging
import os
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", category=UserWarning)
# NNCF compiles its CPU extension on first use in a new environment (a fresh clone's .venv) and gives up after 60 s
# by default, which a busy 2-core machine can exceed: the QAT tests would fail on the build, not on our code
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")
logging.getLogger("monai_prune").setLevel(logging.INFO)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def dense_spheres():
    """A small UNet trained dense on the synthetic spheres of ``spheres.py`` (12 epochs), and its validation Dice."""
    from monai.utils import set_determinism

    from helpers.spheres import engines, unet

    set_determinism(0)
    net = unet()
    trainer, evaluator, _ = engines(net, epochs=12)
    trainer.run()
    set_determinism(None)
    return net, evaluator.state.metrics["val_dice"]
