"""Reading a weights file safely: the one reader the CLI, the recipes' dense-weights loader and compress-bundle use.

``torch.load(weights_only=True)`` only: a file that pickles other Python objects (a whole ``torch.save(model)``, or
a payload) is refused, never unpickled. A plain state dict and a checkpoint dict holding one (MONAI
``CheckpointSaver``: ``{"model": state, ...}``, or ``{"state_dict": state}``) both give the network's state dict.
"""

from __future__ import annotations

import os
import pickle
import warnings
from typing import Any, Dict, Mapping

import torch

from .errors import InputError


def weights_state(checkpoint: Any, path: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """The network's state dict in what ``torch.load`` returned: a plain state dict, or a checkpoint dict that holds
    it under ``"model"`` (MONAI ``CheckpointSaver(save_dict={"model": net, ...})`` with several objects) or
    ``"state_dict"``. A ``module.`` prefix on every key (a DDP-wrapped network saved as is) is removed."""
    if not isinstance(checkpoint, Mapping):
        raise InputError(f"{path} holds a {type(checkpoint).__name__}, not a state dict or a checkpoint dict; it was "
                         "not loaded")
    for key in ("model", "state_dict"):
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    state = dict(checkpoint)
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} holds no network state dict (names to tensors; keys: "
                         f"{sorted(map(str, checkpoint))[:8]}); it was not loaded")
    return state


def read_state_dict(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """The network state dict stored in ``path`` (see the module docstring); :class:`InputError` naming the file
    when it is missing, pickles other objects, or is truncated or corrupt."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"weights file {path} does not exist")
    try:
        with warnings.catch_warnings():  # a pickle protocol note about a file that is then refused anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputError(f"{path} is not a weights-only PyTorch state dict (torch.load(weights_only=True) refused "
                         "it): it pickles other Python objects (e.g. a whole torch.save(model)), which could run code "
                         "when loaded, so it was not loaded; save model.state_dict() instead") from e
    except Exception as e:  # torch reports a truncated or damaged file as RuntimeError/EOFError/...
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise InputError(f"{path} is not a weights-only PyTorch state dict, or it is corrupt or truncated "
                         f"({first.split('. ')[0]}); it was not loaded") from e
    return weights_state(checkpoint, path)
