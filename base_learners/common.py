"""What every base learner shares: the interface, ImageNet normalisation, padding.

Interface (docs/design.md §2): `forward(rgb [B,3,H,W] in [0,1]) -> {"depth": [B,1,H,W] metres at
the input resolution, ...auxiliaries}`; `loss(outputs, batch) -> {named terms..., "total"}`;
`selectable_layers() -> {name: module}` in forward order, for selectivity hooks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def valid_mask(depth: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
    """Boolean mask of valid ground truth: min_depth < depth < max_depth."""
    return (depth > min_depth) & (depth < max_depth)


def clamp_depth(depth: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
    """Depth [B,1,H,W] metres clipped to [min_depth, max_depth], the range the metrics score in
    (a depth of 0 or less would mean "no depth" in a saved PNG). The gradient passes straight
    through, as if unclipped, so that a pixel outside the range still learns its way back (the
    value is exactly the clipped one: x - x is 0)."""
    return depth.clamp(min_depth, max_depth).detach() + (depth - depth.detach())


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Replicate-pad H and W at the bottom/right up to a multiple; returns (padded, (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)


class DepthLearner(nn.Module):
    """Base class: holds the depth range, normalises RGB, and defines the interface."""

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0):
        super().__init__()
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.register_buffer("rgb_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("rgb_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, rgb: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> ImageNet-normalised."""
        return (rgb - self.rgb_mean) / self.rgb_std

    def valid(self, depth: torch.Tensor) -> torch.Tensor:
        return valid_mask(depth, self.min_depth, self.max_depth)

    def clamp_depth(self, depth: torch.Tensor) -> torch.Tensor:
        """The depth a learner outputs: `clamp_depth` to its range."""
        return clamp_depth(depth, self.min_depth, self.max_depth)
