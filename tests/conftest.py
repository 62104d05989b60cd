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
