"""Gradient-based (first-order Taylor) importance accumulated over training iterations.

The Taylor estimate of the loss change when a weight is zeroed is |w * dL/dw|. One batch gives a noisy estimate;
:class:`TaylorAccumulator` sums |w_t * g_t| element-wise over the iterations between two pruning steps (read
after the backward pass, at ``ITERATION_COMPLETED``, while the gradients are still on the parameters). The sums
are per-parameter tensors shaped like the weights, used by

* :func:`monai_prune.prune_channels` (``importance="taylor", taylor_scores=...``): a channel's importance is the
  group sum of its weights' scores (torch-pruning's group Taylor criterion);
* :func:`monai_prune.sparsity.magnitude_masks` / :func:`~monai_prune.sparsity.nm_masks` (``scores=...``): the
  scores replace |w| when choosing which weights to zero.

Under DDP the gradients are already averaged over ranks, so every rank accumulates the same scores; the handler
still takes its decisions on rank 0 and broadcasts them.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from .errors import ConfigError


class TaylorAccumulator:
    """Running sum of |w * dL/dw| per parameter of ``model`` (only parameters that have a gradient).

    Args:
        model: the network being trained.
        names: parameter names to track; default: every parameter that requires grad.
    """

    def __init__(self, model: nn.Module, names: Optional[list] = None) -> None:
        self.model = model
        self.names = list(names) if names is not None else None
        self.sums: Dict[str, torch.Tensor] = {}
        self.iterations = 0

    def accumulate(self) -> bool:
        """Add this iteration's |w * grad|; returns False (and adds nothing) when no parameter has a gradient."""
        added = False
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                if p.grad is None or (self.names is not None and name not in self.names):
                    continue
                score = (p.detach() * p.grad.detach()).abs().float()
                prev = self.sums.get(name)
                if prev is None or prev.shape != score.shape:  # new, or the layer was pruned since: start again
                    self.sums[name] = score.clone()
                else:
                    prev.add_(score)
                added = True
        self.iterations += int(added)
        return added

    def scores(self) -> Dict[str, torch.Tensor]:
        """The accumulated scores, checked against the current parameter shapes."""
        if not self.sums:
            raise ConfigError("importance='taylor' has no gradients accumulated yet: the pruning step came before any "
                              "training iteration; start the schedule after at least one epoch/iteration")
        params = dict(self.model.named_parameters())
        return {n: s for n, s in self.sums.items() if n in params and params[n].shape == s.shape}

    def reset(self) -> None:
        self.sums.clear()
        self.iterations = 0

    def state_dict(self) -> Dict[str, object]:
        return {"sums": {k: v.clone() for k, v in self.sums.items()}, "iterations": self.iterations}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.sums = {k: v.clone() for k, v in dict(state.get("sums", {})).items()}
        self.iterations = int(state.get("iterations", 0))


def gradients_from_scores(model: nn.Module, scores: Dict[str, torch.Tensor]) -> None:
    """Set ``p.grad`` so that ``|p * p.grad|`` equals the given scores (for torch-pruning's Taylor criterion).

    Where a weight is exactly zero its score cannot be expressed this way and counts as zero.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            score = scores.get(name)
            if score is None or score.shape != p.shape:
                p.grad = torch.zeros_like(p)
                continue
            w = p.detach()
            safe = torch.where(w == 0, torch.ones_like(w), w)
            p.grad = torch.where(w == 0, torch.zeros_like(w), score.to(w) / safe)
