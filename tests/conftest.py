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


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """A MONAI Deploy app run in the test process (as ``serve`` runs studies) configures the root logger with the
    SDK's logging.json: a ``StreamHandler`` on the ``sys.stderr`` of that moment, which is pytest's capture of that
    test, closed afterwards. Each test's root handlers of that kind and the root level are undone after it, so a
    later test in the same worker does not log into a closed file (pytest's own handlers are subclasses: kept)."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler and handler not in before:
            root.removeHandler(handler)
    root.setLevel(level)
    # any logger's plain StreamHandler left on a stream this test closed (capsys) would fail every later record
    for logger in [root, *(v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger))]:
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler and getattr(handler.stream, "closed", False):
                logger.removeHandler(handler)


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
