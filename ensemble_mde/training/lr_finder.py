"""LR range test (Smith 2017, as in fastai's lr_find): ramp the learning rate
exponentially, track an exponentially smoothed loss, stop on divergence, and suggest
the learning rate where the smoothed loss falls fastest (steepest negative slope in
log-lr)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch


def lr_range_test(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, object], torch.Tensor],
    batches: Iterator,
    optimizer: torch.optim.Optimizer,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    steps: int = 200,
    smoothing: float = 0.98,
    diverge_factor: float = 4.0,
    on_step: Callable[[int, float, float], None] | None = None,
) -> dict:
    """Returns {lrs, losses, smoothed, suggestion, diverged}. `batches` must yield at least
    `steps` batches; `loss_fn(model, batch)` returns the scalar loss."""
    gamma = (end_lr / start_lr) ** (1.0 / max(1, steps - 1))
    lrs, losses, smoothed = [], [], []
    avg, best, diverged = 0.0, math.inf, False
    model.train()
    for i, batch in zip(range(steps), batches):
        lr = start_lr * gamma**i
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        avg = smoothing * avg + (1 - smoothing) * value
        debiased = avg / (1 - smoothing ** (i + 1))
        lrs.append(lr)
        losses.append(value)
        smoothed.append(debiased)
        if on_step is not None:
            on_step(i, lr, debiased)
        best = min(best, debiased)
        if not math.isfinite(debiased) or (i > 10 and debiased > diverge_factor * best):
            diverged = True
            break
    return {"lrs": lrs, "losses": losses, "smoothed": smoothed, "diverged": diverged,
            "suggestion": steepest_descent_lr(lrs, smoothed, smoothing)}


def steepest_descent_lr(lrs: list[float], smoothed: list[float], smoothing: float = 0.98) -> float:
    """LR at the steepest fall of the smoothed loss against log10(lr): the most negative
    least-squares slope over a centred window of a fifth of the curve (at least 5 steps;
    minibatch noise makes shorter windows pick chance dips).
    The search starts once the EMA averages about 1 / (1 - smoothing) steps (at most a
    quarter of the curve; before that it follows single minibatches) and ends at the
    smoothed minimum (past it the loss only rises toward divergence)."""
    n = len(lrs)
    if n < 5:
        return lrs[0] if lrs else float("nan")
    loss = np.asarray(smoothed, dtype=np.float64)
    loss = np.where(np.isfinite(loss), loss, np.nanmax(np.where(np.isfinite(loss), loss, -np.inf)))
    x = np.log10(np.asarray(lrs, dtype=np.float64))
    half = max(2, n // 10)
    first = max(half, min(int(round(1.0 / (1.0 - smoothing))), n // 4))
    last = max(first + 1, min(int(np.argmin(loss)), n - half))
    slopes = [np.polyfit(x[c - half:c + half + 1], loss[c - half:c + half + 1], 1)[0] for c in range(first, last)]
    return float(lrs[first + int(np.argmin(slopes))])


def plot_lr_curve(result: dict, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result["lrs"], result["losses"], color="0.75", lw=0.8, label="loss")
    ax.plot(result["lrs"], result["smoothed"], color="C0", label="smoothed")
    ax.axvline(result["suggestion"], color="C3", ls="--", label=f"suggestion {result['suggestion']:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    finite = [v for v in result["smoothed"] if math.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) * 0.9, min(max(finite), 3 * min(finite)) * 1.1)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def find_lr_for_config(cfg: dict, *, plot_path: Path, progress: bool = True) -> dict:
    """Run the range test on the learner and training data `cfg` describes."""
    from ensemble_mde.data import build_dataset, loader_workers
    from ensemble_mde.loading import build_learner
    from ensemble_mde.device import resolve_device
    from ensemble_mde.training.engine import adamw, move_batch, seed_everything, steps_per_epoch
    from ensemble_mde.progress import task_progress

    lf = cfg["lr_find"]
    device = resolve_device(cfg["run"]["device"])
    seed_everything(int(cfg["run"]["seed"]))
    model = build_learner(cfg).to(device)
    train_set = build_dataset(cfg, "train")
    steps_per_epoch(len(train_set), int(cfg["train"]["batch_size"]))  # the ramp needs whole batches
    optimizer = adamw(model.parameters(), lr=lf["start_lr"], weight_decay=cfg["train"]["weight_decay"])

    def batches():
        epoch = 0
        while True:
            train_set.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(train_set, batch_size=int(cfg["train"]["batch_size"]),
                                                 shuffle=True, drop_last=True,
                                                 num_workers=loader_workers(cfg["data"], device.type))
            for batch in loader:
                yield move_batch(batch, device)
            epoch += 1

    def loss_fn(m, batch):
        return m.loss(m(batch["rgb"]), batch)["total"]

    with task_progress(progress) as bar:
        task = bar.add_task("lr-find", total=int(lf["steps"]))
        result = lr_range_test(model, loss_fn, batches(), optimizer, start_lr=lf["start_lr"], end_lr=lf["end_lr"],
                               steps=int(lf["steps"]), smoothing=lf["smoothing"],
                               diverge_factor=lf["diverge_factor"],
                               on_step=lambda i, lr, loss: bar.update(task, completed=i + 1))
    plot_lr_curve(result, plot_path, title=f"lr-find {cfg['model']['name']}")
    return result
