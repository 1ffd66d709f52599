"""Evaluation: run a model at its input size, upsample to the GT resolution, score with
the NYU protocol (ensemble_mde.metrics). Shared by validation, `evaluate` and `compare`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ensemble_mde.metrics import MetricAccumulator, flip_tta


def model_input_size(cfg: dict) -> tuple[int, int] | None:
    """[H, W] the model was trained to see: data.size, else the frame size recorded at training."""
    size = cfg["data"].get("size") or cfg["run"].get("input_size")
    return tuple(size) if size else None


def resize_rgb(rgb: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """[B,3,H,W] -> [B,3,*size] bilinear, antialiased when shrinking (no-op when size is None
    or already equal). The one RGB resize of the toolkit: the dataset's frames, evaluation,
    prediction and each base inside an ensemble, so a model sees the same pixels everywhere."""
    if size is None or tuple(rgb.shape[-2:]) == tuple(size):
        return rgb
    return F.interpolate(rgb, size=tuple(size), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)


def predict_depth(model: torch.nn.Module, rgb: torch.Tensor, *, input_size=None, flip: bool = False,
                  base_depths: torch.Tensor | None = None) -> torch.Tensor:
    """Depth [B,1,h,w] in metres at the model's input size (rgb [B,3,H,W] in [0,1]).
    base_depths [B,K,h,w]: a stacked ensemble's cached base predictions for this very input
    (so neither a resize nor flip TTA, which would need the bases to see another image)."""
    rgb = resize_rgb(rgb, input_size)
    if base_depths is not None:
        if flip or tuple(base_depths.shape[-2:]) != tuple(rgb.shape[-2:]):
            raise ValueError(f"cached base depths {tuple(base_depths.shape)} fit only the unflipped "
                             f"{tuple(rgb.shape[-2:])} input they were computed on")
        return model(rgb, base_depths=base_depths)["depth"]

    def run(x):
        return model(x)["depth"]

    return flip_tta(run, rgb) if flip else run(rgb)


def _collate_eval(samples: list[dict]) -> dict:
    """Batch RGB (same size after resizing) but keep GT maps as a list: GT sizes may differ.
    Cached base depths (freeze-mode validation) come along as a list too."""
    batch = {
        "rgb": [s["rgb"] for s in samples],
        "depth": [s["depth"] for s in samples],
        "name": [s["name"] for s in samples],
    }
    if "base_depths" in samples[0]:
        batch["base_depths"] = [s["base_depths"] for s in samples]
    return batch


@torch.inference_mode()
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
    """Score `model` on every sample of `dataset`; returns the per-image accumulator. Samples
    with `base_depths` (a freeze-mode prediction cache) feed them to the stacked ensemble.

    progress: optional callable(n_done) for a progress display.
    """
    model.eval()
    acc = MetricAccumulator(min_depth=min_depth, max_depth=max_depth, eigen_crop=eigen_crop)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size if input_size else 1, shuffle=False,
        num_workers=workers, collate_fn=_collate_eval,
    )
    for batch in loader:
        rgb = torch.cat([resize_rgb(x[None], input_size) for x in batch["rgb"]]).to(device)
        cached = torch.stack(batch["base_depths"]).to(device) if "base_depths" in batch else None
        pred = predict_depth(model, rgb, flip=flip, base_depths=cached).float().cpu()
        for p, gt, name in zip(pred, batch["depth"], batch["name"]):
            acc.update(p, gt, name=name)
        if progress is not None:
            progress(len(batch["name"]))
    return acc
