"""Evaluation: run a model at its input size, upsample to the GT resolution, score with
the NYU protocol (ensemble_mde.metrics). Shared by validation, `evaluate` and `compare`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from ensemble_mde.metrics import MetricAccumulator, flip_tta


def evaluation_config(run_cfg: dict, data: str | None = None, overrides=()) -> dict:
    """A copy of a run's config to evaluate it on: its data (a meta run: the data its record
    says it trained on), or the user's `data` (the format re-detected; data of another
    protocol than the run's, as KITTI for an NYU run, is scored by its own: 80 m and the Garg
    crop, not the run's 10 m), with `key=value` overrides; the GT is scored at its own
    resolution (data.size null), the model still sees its own input size
    (`loading.model_input_size` of the run's config)."""
    import copy

    from ensemble_mde import config as config_mod
    from ensemble_mde.data.protocol import PROTOCOL_LAYERS, protocol_layer, scoring_protocol
    from ensemble_mde.runs import RECORD, data_view

    trained = data_view(run_cfg)
    cfg = copy.deepcopy(trained if not data else run_cfg)
    cfg.pop(RECORD, None)
    if data:  # the listing keys a run saved before some of them existed has
        listing = {key: None for key in config_mod.LISTING_KEYS if key in cfg["data"]}
        cfg = config_mod.merge(cfg, {"data": {"path": str(data), "format": "auto", **listing}}, strict=True,
                               source="--data")
        layer = protocol_layer(cfg["data"])
        # the run's own data need not be here: its saved format names its protocol (the KITTI layer sets it)
        if layer != PROTOCOL_LAYERS.get(trained["data"].get("format")):
            cfg = config_mod.merge(cfg, {"data": scoring_protocol(layer)}, strict=True, source=f"--data {data}")
    for text in overrides:
        cfg = config_mod.merge(cfg, config_mod.parse_override(text), strict=True, source=f"--set {text}")
    cfg = config_mod.absolute_paths(cfg)
    cfg["data"]["size"] = None  # score against GT at its own resolution
    return cfg


def resize_rgb(rgb: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """[B,3,H,W] -> [B,3,*size] bilinear, antialiased when shrinking (no-op when size is None
    or already equal). The one RGB resize of the toolkit: the dataset's frames, evaluation,
    prediction and each base inside an ensemble, so a model sees the same pixels everywhere."""
    if size is None or tuple(rgb.shape[-2:]) == tuple(size):
        return rgb
    return F.interpolate(rgb, size=tuple(size), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)


@dataclass
class Prediction:
    """One sample's prediction: dataset index, name, GT [1,H,W], the RGB as the dataset gave it,
    `depth` [1,h,w] metres at the model's input size (the flip-TTA mean with flip), the model's
    output dict of the straight pass for this sample (depth, weights ...), and `mirrored` that
    of the mirrored image, not flipped back (flip only)."""
    index: int
    name: str
    gt: torch.Tensor
    rgb: torch.Tensor
    depth: torch.Tensor
    outputs: dict
    mirrored: dict | None = None


def _collate_eval(samples: list[dict]) -> dict:
    """Batch RGB (same size after resizing) but keep GT maps as a list: GT sizes may differ.
    Cached base depths (freeze-mode validation) come along as a list too."""
    batch = {key: [s[key] for s in samples] for key in ("rgb", "depth", "name")}
    batch["index"] = [s.get("index", i) for i, s in enumerate(samples)]
    if "base_depths" in samples[0]:
        batch["base_depths"] = [s["base_depths"] for s in samples]
    return batch


@torch.inference_mode()
def predictions(model: torch.nn.Module, dataset, *, device: torch.device, input_size: tuple[int, int] | None = None,
                batch_size: int = 4, flip: bool = False, workers: int = 0, cached_bases=None) -> Iterator[Prediction]:
    """The one evaluation pass: every sample of `dataset` in order, its RGB resized to
    `input_size`, through `model` (flip: averaged with the prediction of the mirrored image).

    A stacked ensemble's base depths can come from samples' own `base_depths` (a freeze-mode
    prediction cache: the unflipped input only) or from `cached_bases(indices) -> (straight
    [B,K,h,w], mirrored [B,K,h,w] | None)` (compare's stored base maps)."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size if input_size else 1, shuffle=False,
                                         num_workers=workers, collate_fn=_collate_eval)
    for batch in loader:
        rgb = torch.cat([resize_rgb(x[None], input_size) for x in batch["rgb"]]).to(device)
        bases = iter([None, None])
        if "base_depths" in batch:
            cached = torch.stack(batch["base_depths"]).to(device)
            if flip or tuple(cached.shape[-2:]) != tuple(rgb.shape[-2:]):
                raise ValueError(f"cached base depths {tuple(cached.shape)} fit only the unflipped "
                                 f"{tuple(rgb.shape[-2:])} input they were computed on")
            bases = iter([cached])
        elif cached_bases is not None:
            bases = iter(cached_bases(batch["index"]))
        outputs = []

        def forward(x):
            depths = next(bases)
            outputs.append(model(x) if depths is None else model(x, base_depths=depths))
            return outputs[-1]["depth"]

        depth = (flip_tta(forward, rgb) if flip else forward(rgb)).float().cpu()
        for j, (index, name, gt, frame) in enumerate(zip(batch["index"], batch["name"], batch["depth"], batch["rgb"])):
            own = [{k: v[j] for k, v in out.items() if torch.is_tensor(v)} for out in outputs]
            yield Prediction(index, name, gt, frame, depth[j], own[0], own[1] if flip else None)


def evaluate_model(
    model: torch.nn.Module,
    dataset,
    *,
    device: torch.device,
    input_size: tuple[int, int] | None = None,
    batch_size: int = 4,
    flip: bool = False,
    eigen_crop: bool = False,
    min_depth: float = 1e-3,
    max_depth: float = 10.0,
    workers: int = 0,
    progress=None,
) -> MetricAccumulator:
    """Score `model` on every sample of `dataset` (`predictions`); returns the per-image
    accumulator. progress: optional callable(n_done) for a progress display."""
    acc = MetricAccumulator(min_depth=min_depth, max_depth=max_depth, eigen_crop=eigen_crop)
    for p in predictions(model, dataset, device=device, input_size=input_size, batch_size=batch_size, flip=flip,
                         workers=workers):
        acc.update(p.depth, p.gt, name=p.name)
        if progress is not None:
            progress(1)
    return acc
