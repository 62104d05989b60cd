"""What every stage of one search reads: the caller's inputs, checked, and the search log."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List

import torch
from torch import nn

from .config import SearchConfig
from .log import SearchLog


@dataclass
class SearchContext:
    """One search's fixed inputs: the dense ``model`` (a private copy, in eval mode), an ``example`` input, the
    guardrails, the config, the backends to time, the output folder and its log; ``agreement_inputs`` and ``title``
    are the chosen model's fidelity card's."""

    model: nn.Module
    example: torch.Tensor
    guardrails: Dict[str, Any]
    config: SearchConfig
    backends: List[str]
    out_dir: str
    log: SearchLog
    agreement_inputs: List[torch.Tensor] = field(default_factory=list)
    title: str = "search"

    def folder(self, *parts: str) -> str:
        """A folder under ``OUT/candidates/`` (``dense``, a candidate's key, ...)."""
        return os.path.join(self.out_dir, "candidates", *parts)
