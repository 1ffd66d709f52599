"""The training loop shared by every base learner and the meta-learner.

Read `train` top to bottom: data order, optimiser and one-cycle schedule, resume, the
epoch loop (forward, loss, backward, clip, step, log, mid-epoch checkpoint), validation,
best/last checkpoints. The clever parts are the named functions above it.
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ensemble_mde import runs
from ensemble_mde.evaluation import evaluate_model
from ensemble_mde.errors import ConfigError
from ensemble_mde.io import atomic_save, atomic_write_json
from ensemble_mde.metrics import HIGHER_IS_BETTER
from ensemble_mde.progress import training_progress


def one_cycle_lr(step: int, total_steps: int, lr: float, warmup_fraction: float = 0.3,
                 div_factor: float = 25.0, final_div_factor: float = 100.0) -> float:
    """Learning rate at `step`: linear warm-up from lr/div_factor to lr over
    warmup_fraction of the steps, then cosine annealing to lr/final_div_factor."""
    warm = max(1, round(total_steps * warmup_fraction))
    if step < warm:
        start = lr / div_factor
        return start + (lr - start) * step / warm
    end = lr / final_div_factor
    t = min(1.0, (step - warm) / max(1, total_steps - warm))
    return end + (lr - end) * 0.5 * (1.0 + math.cos(math.pi * t))


class EpochSampler(torch.utils.data.Sampler):
    """A permutation of the dataset drawn from (seed, epoch), so the order is the same in
    a resumed run; `start` skips the samples an interrupted epoch already consumed."""

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0):
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start

    def order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()[self.start:]

    def __iter__(self):
        return iter(self.order())

    def __len__(self) -> int:
        return self.n - self.start


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
            "numpy_pos": int(np.random.get_state()[2]), "python": repr(random.getstate())}


def set_rng_state(state: dict) -> None:
    import ast

    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate(ast.literal_eval(state["python"]))


def is_better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value > best if metric in HIGHER_IS_BETTER else value < best


def move_batch(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def forward_batch(model: torch.nn.Module, batch: dict) -> dict:
    """Model outputs for a training batch; cached base predictions go to the ensemble."""
    if "base_depths" in batch:
        return model(batch["rgb"], base_depths=batch["base_depths"])
    return model(batch["rgb"])


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def truncate_jsonl_after(path: Path, step: int) -> None:
    """Drop records logged after `step` (by a run that died after its last checkpoint)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep))


@dataclass
class TrainState:
    epoch: int = 0            # epoch in progress (or next to start)
    batch_in_epoch: int = 0   # optimiser steps already done in that epoch
    step: int = 0             # global optimiser steps
    best_value: float | None = None
    best_epoch: int = -1
    train_seconds: float = 0.0


def train(model: torch.nn.Module, cfg: dict, train_set, val_set, run_dir: Path, *, device: torch.device,
          eigen_crop: bool = False, resume: bool = False, progress: bool = True,
          param_groups=None, extra_loss=None) -> dict:
    """Train `model` with the `train:` section of `cfg`; writes the run folder.

    param_groups: optimiser groups (e.g. bases at a lower lr); default all trainable params.
    extra_loss: optional callable(model, outputs, batch) -> dict of extra named terms added
    to the total (e.g. the selectivity regulariser). Returns the summary dict.
    """
    tc = cfg["train"]
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed = int(cfg["run"]["seed"])
    seed_everything(seed)
    model.to(device)

    # Data: a seeded permutation per epoch, batches of the global batch size.
    batch_size = int(tc["batch_size"])
    steps_per_epoch = len(train_set) // batch_size
    if tc["max_steps_per_epoch"]:
        steps_per_epoch = min(steps_per_epoch, int(tc["max_steps_per_epoch"]))
    if steps_per_epoch < 1:
        raise ConfigError(f"train split has {len(train_set)} samples, fewer than one batch of {batch_size}",
                          "train.batch_size")
    total_steps = steps_per_epoch * int(tc["epochs"])

    # Optimiser and one-cycle schedule (per step).
    groups = param_groups if param_groups is not None else [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(groups, lr=float(tc["lr"]), weight_decay=float(tc["weight_decay"]))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: one_cycle_lr(
        s, total_steps, 1.0, tc["warmup_fraction"], tc["div_factor"], tc["final_div_factor"]))
    state = TrainState()
    log_path = run_dir / "metrics.jsonl"

    if resume and (run_dir / "last.pt").is_file():
        ckpt = runs.read_checkpoint(run_dir / "last.pt")
        runs.load_state(model, ckpt["model"], run_dir / "last.pt", cfg["model"]["name"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["scheduler"])
        state = TrainState(**ckpt["state"])
        set_rng_state(ckpt["rng"])
        truncate_jsonl_after(log_path, state.step)
    elif log_path.exists():
        log_path.unlink()
    runs.write_run_config(run_dir, cfg)

    def save_last() -> None:
        atomic_save(runs.checkpoint_payload(
            model, cfg, kind=cfg.get("kind", "base"), optimizer=optimizer.state_dict(),
            scheduler=schedule.state_dict(), state=asdict(state), rng=rng_state()), run_dir / "last.pt")

    amp = tc["amp"] == "bf16"
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else nullcontext
    best_metric = tc["best_metric"]
    if state.epoch >= int(tc["epochs"]) and (run_dir / "summary.json").is_file():
        return json.loads((run_dir / "summary.json").read_text())  # resumed a finished run

    with training_progress(enabled=progress) as bar:
        task = bar.add_task("train", total=total_steps, completed=state.step, loss=float("nan"), lr=0.0)
        while state.epoch < int(tc["epochs"]):
            epoch = state.epoch
            train_set.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(
                train_set, batch_size=batch_size, drop_last=True,
                sampler=EpochSampler(len(train_set), seed, epoch, start=state.batch_in_epoch * batch_size),
                num_workers=int(cfg["data"]["workers"]), pin_memory=device.type == "cuda",
                generator=torch.Generator().manual_seed(seed + epoch),  # keeps the global RNG untouched
            )
            model.train()
            started = time.perf_counter()
            for batch in loader:
                if state.batch_in_epoch >= steps_per_epoch:
                    break
                batch = move_batch(batch, device)
                with autocast():
                    outputs = forward_batch(model, batch)
                    terms = model.loss(outputs, batch)
                    if extra_loss is not None:
                        extra = extra_loss(model, outputs, batch)
                        terms = {**terms, **extra, "total": terms["total"] + sum(extra.values())}
                loss = terms["total"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if tc["grad_clip"]:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), float(tc["grad_clip"]))
                optimizer.step()
                schedule.step()
                state.step += 1
                state.batch_in_epoch += 1

                value = float(loss.detach())
                lr = optimizer.param_groups[-1]["lr"]
                bar.update(task, advance=1, loss=value, lr=lr, description=f"epoch {epoch + 1}/{tc['epochs']}")
                if state.step % int(tc["log_every"]) == 0 or state.batch_in_epoch == steps_per_epoch:
                    append_jsonl(log_path, {"type": "train", "epoch": epoch, "step": state.step, "lr": lr,
                                            **{k: float(v.detach()) for k, v in terms.items()}})
                if tc["checkpoint_every"] and state.step % int(tc["checkpoint_every"]) == 0:
                    state.train_seconds += time.perf_counter() - started
                    started = time.perf_counter()
                    save_last()
            state.train_seconds += time.perf_counter() - started

            # Validation on the scene-held-out split, then best/last checkpoints.
            acc = evaluate_model(model, val_set, device=device, batch_size=int(tc["val_batch_size"]),
                                 eigen_crop=eigen_crop, min_depth=cfg["data"]["min_depth"],
                                 max_depth=cfg["data"]["max_depth"])
            metrics = acc.compute()
            improved = is_better(best_metric, metrics[best_metric], state.best_value)
            if improved:
                state.best_value, state.best_epoch = metrics[best_metric], epoch
            append_jsonl(log_path, {"type": "val", "epoch": epoch, "step": state.step, **metrics, "best": improved})
            bar.console.print(f"epoch {epoch + 1}: " + "  ".join(
                f"{k} {metrics[k]:.4f}" for k in ("rmse", "abs_rel", "d1")) + ("  (best)" if improved else ""))
            state.epoch += 1
            state.batch_in_epoch = 0
            if improved:
                atomic_save(runs.checkpoint_payload(model, cfg, kind=cfg.get("kind", "base"), epoch=epoch,
                                                    step=state.step, metrics=metrics), run_dir / "best.pt")
            save_last()
    summary = {"epochs": state.epoch, "steps": state.step, "best_metric": best_metric,
               "best_value": state.best_value, "best_epoch": state.best_epoch,
               "last_val": metrics, "train_seconds": round(state.train_seconds, 3)}
    atomic_write_json(summary, run_dir / "summary.json")
    return summary
