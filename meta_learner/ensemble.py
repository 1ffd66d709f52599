"""The stacked ensemble: K base learners and the weighting network; depth = sum_k W_k * D_k
(or, with the relaxed head, the network's own depth).

Modes (docs/design.md §7):
- "freeze": bases fixed in eval mode (no gradients); only the meta-learner trains. Base
  depths usually come from the prediction cache (`forward(rgb, base_depths=...)`).
- "finetune": bases start from their checkpoints and train with the meta-learner, at a
  lower learning rate (`param_groups(lr, base_lr_factor)`).
- "simultaneous": bases and meta train together from the start; the loss adds each
  base's own loss (`base_<name>`) to the ensemble's SILog.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from base_learners.common import clamp_depth, valid_mask
from ensemble_mde.errors import ModelError
from ensemble_mde.evaluation import resize_rgb
from ensemble_mde.losses import silog_loss

if TYPE_CHECKING:  # the weighting network (timm) is built by its callers
    from meta_learner.weighting import WeightingNetwork

MODES = ("freeze", "finetune", "simultaneous")


def blend(weights: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """Weighted sum over learners: weights [B,K,H,W] (or broadcastable, e.g. [1,K,1,1]),
    depths [B,K,H,W] metres -> depth [B,1,H,W] = sum_k W_k * D_k."""
    if weights.shape[1] != depths.shape[1]:
        raise ModelError(f"blend: {weights.shape[1]} weights for {depths.shape[1]} depth maps")
    return (weights * depths).sum(dim=1, keepdim=True)


def base_input_size(size, frame: tuple[int, int], grid) -> tuple[int, int] | None:
    """The size a base sees an input of `frame` [H, W] at: its own input size `size` (for
    frames of the ensemble's `grid` [H, W]) scaled as `frame` is to the grid, so that a
    training crop is scaled as its frame would be, not stretched to a whole frame."""
    if size is None or grid is None or tuple(frame) == tuple(grid):
        return None if size is None else tuple(size)
    return (max(1, round(frame[0] * size[0] / grid[0])), max(1, round(frame[1] * size[1] / grid[1])))


def run_bases(bases: nn.ModuleList, names: list[str], rgb: torch.Tensor, input_sizes: list | None = None,
              grid: tuple[int, int] | None = None) -> tuple[torch.Tensor, list[dict]]:
    """(base depths [B,K,H,W] metres on rgb's grid, each base's output dict) for rgb
    [B,3,H,W]. Base k sees rgb resized to input_sizes[k] ([h, w], the size it was trained at,
    for frames of `grid`; None: rgb as it is; see `base_input_size`) and must return depth
    at that size, which is resampled bilinearly to H x W (its output dict keeps its own size)."""
    frame = tuple(rgb.shape[-2:])
    depths, outputs = [], []
    for name, base, size in zip(names, bases, input_sizes or [None] * len(bases)):
        x = resize_rgb(rgb, base_input_size(size, frame, grid))
        out = base(x)
        depth = out["depth"]
        if tuple(depth.shape[-2:]) != tuple(x.shape[-2:]) or depth.shape[1] != 1:
            raise ModelError(f"base learner {name!r} returned depth {tuple(depth.shape)} for input "
                             f"{tuple(x.shape)}; expected [B,1,H,W] at the input resolution", name)
        if tuple(depth.shape[-2:]) != frame:
            depth = F.interpolate(depth, size=frame, mode="bilinear", align_corners=False)
        depths.append(depth)
        outputs.append(out)
    return torch.cat(depths, dim=1), outputs


class MeanOfMembers(nn.Module):
    """Several trained models of one learner as one base: forward(rgb) -> {"depth": the mean
    of their depths [B,1,H,W]} (a CV set at test time, --oof-test folds)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, rgb: torch.Tensor) -> dict:
        return {"depth": torch.stack([m(rgb)["depth"] for m in self.members]).mean(dim=0)}


class StackedEnsemble(nn.Module):
    """forward(rgb [B,3,H,W] in [0,1], base_depths [B,K,H,W] | None) ->
    {"depth": [B,1,H,W] metres in [min_depth, max_depth] (`clamp_depth`), "weights": [B,K,H,W]
    (softmax head only), "base_depths": [B,K,H,W]} (+ "base_outputs": each base's output dict,
    when the bases ran). input_sizes: each base's own input size [h, w] (None: the ensemble's)
    for frames of `grid_size` (the ensemble's input size), see `run_bases`."""

    def __init__(self, bases: list[nn.Module], meta: WeightingNetwork, names: list[str], mode: str = "freeze",
                 min_depth: float = 1e-3, max_depth: float = 10.0, input_sizes: list | None = None,
                 grid_size: tuple[int, int] | list | None = None):
        super().__init__()
        names = [str(n) for n in names]
        if len(bases) != len(names) or len(set(names)) != len(names):
            raise ModelError(f"ensemble needs one unique name per base learner, got {names} for {len(bases)} bases",
                             "meta.bases")
        if input_sizes is not None and len(input_sizes) != len(bases):
            raise ModelError(f"{len(input_sizes)} input sizes for {len(bases)} base learners", "meta.bases")
        if meta.num_learners != len(bases):
            raise ModelError(f"meta-learner outputs {meta.num_learners} weights for {len(bases)} base learners",
                             "meta.bases")
        self.bases = nn.ModuleList(bases)
        self.meta = meta
        self.names = names
        self.input_sizes = [tuple(s) if s else None for s in (input_sizes or [None] * len(bases))]
        self.grid_size = tuple(grid_size) if grid_size else None
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.mode = "freeze"
        self.set_mode(mode)

    def set_mode(self, mode: str) -> "StackedEnsemble":
        """Freeze (bases eval, no gradients) or train the bases (finetune / simultaneous)."""
        if mode not in MODES:
            raise ModelError(f"mode must be one of {', '.join(MODES)}, got {mode!r}", "meta.mode")
        self.mode = mode
        self.bases.requires_grad_(mode != "freeze")
        self.train(self.training)
        return self

    def train(self, mode: bool = True) -> "StackedEnsemble":
        """As nn.Module.train, except that frozen bases always stay in eval mode."""
        super().train(mode)
        if self.mode == "freeze":
            self.bases.eval()
        return self

    def run_bases(self, rgb: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
        """(base depths [B,K,H,W], each base's output dict); no graph for frozen bases."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.mode != "freeze"):
            return run_bases(self.bases, self.names, rgb, self.input_sizes, self.grid_size)

    def forward(self, rgb: torch.Tensor, base_depths: torch.Tensor | None = None) -> dict:
        base_outputs = None
        if base_depths is None:
            base_depths, base_outputs = self.run_bases(rgb)
        meta = self.meta(rgb, base_depths)
        if "weights" in meta:
            out = {"depth": blend(meta["weights"], base_depths), "weights": meta["weights"], "base_depths": base_depths}
        else:  # the relaxed head: depth directly, no weights, in (0, inf) as the network says
            out = {"depth": meta["depth"], "base_depths": base_depths}
        out["depth"] = clamp_depth(out["depth"], self.min_depth, self.max_depth)  # as a learner's depth is
        if base_outputs is not None:
            out["base_outputs"] = base_outputs
        return out

    def loss(self, outputs: dict, batch: dict, base_outputs: list[dict] | None = None) -> dict:
        """{"silog": ensemble SILog, ("base_<name>": each base's own total, simultaneous
        mode), "total"}. base_outputs defaults to outputs["base_outputs"]."""
        gt = batch["depth"]
        terms = {"silog": silog_loss(outputs["depth"], gt, valid_mask(gt, self.min_depth, self.max_depth))}
        if self.mode == "simultaneous":
            base_outputs = base_outputs if base_outputs is not None else outputs.get("base_outputs")
            if base_outputs is None:
                raise ModelError("simultaneous mode trains the bases, so it needs their outputs; "
                                 "do not feed cached base depths", "meta.mode")
            for name, base, out in zip(self.names, self.bases, base_outputs):
                terms[f"base_{name}"] = base.loss(out, batch)["total"]
        terms["total"] = sum(terms.values())
        return terms

    def param_groups(self, lr: float, base_lr_factor: float = 0.1) -> list[dict]:
        """Optimiser groups: the bases at lr * base_lr_factor (unless frozen), then the meta at lr
        (last, so a log of param_groups[-1]["lr"] shows the meta's rate)."""
        groups = []
        if self.mode != "freeze":
            groups.append({"params": [p for p in self.bases.parameters() if p.requires_grad],
                           "lr": lr * float(base_lr_factor), "name": "bases"})
        groups.append({"params": [p for p in self.meta.parameters() if p.requires_grad], "lr": lr, "name": "meta"})
        return groups

    def selectable_layers(self) -> "OrderedDict[str, nn.Module]":
        """The weighting network's stages (`WeightingNetwork.selectable_layers`)."""
        return self.meta.selectable_layers()
