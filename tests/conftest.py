import logging
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", category=UserWarning)
logging.getLogger("monai_prune").setLevel(logging.INFO)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def small_unet(norm="batch"):
    from monai.networks.nets import UNet

    return UNet(3, 1, 2, (8, 16, 32, 64), (2, 2, 2), num_res_units=2, norm=norm)


def state_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="session")
def dense_spheres():
    """A small UNet trained dense on the synthetic spheres of ``spheres.py`` (12 epochs), and its validation Dice."""
    from monai.utils import set_determinism

    from spheres import _engines, _unet

    set_determinism(0)
    net = _unet()
    trainer, evaluator, _ = _engines(net, epochs=12)
    trainer.run()
    set_determinism(None)
    return net, evaluator.state.metrics["val_dice"]
