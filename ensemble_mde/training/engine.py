"""The training loop shared by every base learner and the meta-learner.

Read `train` top to bottom: processes and data order, optimiser and one-cycle schedule,
resume, the epoch loop (`train_one_epoch`: forward, agree across ranks, backward, clip,
step, log, mid-epoch checkpoint; then validation, best/last checkpoints). The clever parts
are the named functions above it.

Faults. A non-finite loss or gradient norm stops the run with a TrainingError naming the
step (or the batch is skipped, up to train.skip_bad_batches in the run); weights,
optimiser and BatchNorm statistics stay those of the last good step, and last.pt holds
them. SIGINT/SIGTERM let the current step finish, write last.pt and raise
TrainingInterrupted: the CLI prints how to resume and exits with 128 + the signal (130,
143), the shell's code for "stopped by that signal", so schedulers and `&&` chains see
an unfinished run. A run that fails before its first checkpoint leaves no files behind.

Files and messages count epochs from 1 (metrics.jsonl, summary.json's best_epoch, best.pt's
epoch); TrainState, inside last.pt, keeps 0-based indices.

Several processes (torchrun, `ensemble_mde.distributed`): DistributedDataParallel;
train.batch_size is the global batch, split evenly over the ranks; every rank draws the
same seeded order and takes its slice of each global batch; validation is sharded and
the per-image scores gathered; rank 0 alone prints and writes files.
"""

from __future__ import annotations

import math
import os
import random
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ensemble_mde import distributed, runs
from ensemble_mde.data import loader_workers
from ensemble_mde.evaluation import evaluate_model
from ensemble_mde.runs import model_input_size
from ensemble_mde.errors import ConfigError, EnsembleError
from ensemble_mde.metrics import HIGHER_IS_BETTER
from ensemble_mde.progress import training_progress



class TrainingError(EnsembleError):
    """Training cannot go on (a non-finite loss or gradient); last.pt holds the last good step."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped training at a consistent point after writing last.pt.
    `exit_code` = 128 + the signal number, as if the signal had ended the process."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


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


FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def adamw(params, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW over `params` (tensors or param-group dicts), with PyTorch's fused kernel where
    the parameters live on CPU or CUDA: one pass over all tensors instead of a Python loop
    per tensor (several times faster for the meta-learner's 4.2M parameters on CPU; figures
    in benchmarks/NOTES.md). The same update, to float rounding."""
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.device.type in FUSED_ADAMW_DEVICES and p.is_floating_point() for p in tensors)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused or None)


class EpochSampler(torch.utils.data.Sampler):
    """A permutation of the dataset drawn from (seed, epoch), so the order is the same in
    a resumed run; `start` skips the samples an interrupted epoch already consumed.

    With several ranks, the order is cut into global batches of `batch_size` and rank r
    takes slice r of each (batch_size / world_size samples): together the ranks see
    exactly the batches one process would."""

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0, *, rank: int = 0, world_size: int = 1,
                 batch_size: int = 1):
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size

    def order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()[self.start:]
        per_rank = self.batch_size // self.world_size
        return [i for p, i in enumerate(order) if (p % self.batch_size) // per_rank == self.rank]

    def __iter__(self):
        return iter(self.order())

    def __len__(self) -> int:
        return len(self.order())


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


def steps_per_epoch(n_samples: int, batch_size: int, max_steps: int = 0) -> int:
    """Optimiser steps in one epoch over `n_samples` (whole batches only; at most max_steps
    when > 0). A ConfigError when the split holds less than one batch."""
    steps = n_samples // batch_size
    if max_steps:
        steps = min(steps, int(max_steps))
    if steps < 1:
        raise ConfigError(f"train split has {n_samples} sample{'' if n_samples == 1 else 's'}, "
                          f"fewer than one batch of {batch_size}",
                          "train.batch_size")
    return steps


class StopRequest:
    """While active (main thread only), SIGINT and SIGTERM record `signum` instead of
    ending the process; the loop stops at its next consistent point."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = 0
        self._previous: dict = {}

    def _record(self, signum, frame) -> None:
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._record) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def own_process_group(worker_id: int) -> None:
    """DataLoader workers leave the trainer's process group, so Ctrl-C and torchrun's
    SIGTERM to the group reach the trainer alone, which stops cleanly and then shuts the
    workers down (a worker dying of the signal would abort the step with a RuntimeError)."""
    if hasattr(os, "setpgrp"):
        os.setpgrp()


def step_consensus(terms: dict, signalled: bool, device: torch.device) -> tuple[dict, bool]:
    """(mean of each loss term over the ranks, whether any rank was signalled to stop):
    one all-reduce per step, so every rank takes the same branch. A non-finite term on
    any rank makes its mean non-finite."""
    local = torch.stack([t.detach().float() for t in terms.values()]).double().cpu().tolist()
    summed = distributed.sum_over_ranks(local + [float(signalled)], device)
    n = distributed.world_size()
    return {k: v / n for k, v in zip(terms, summed)}, summed[-1] > 0


def snapshot_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    """Copies of the buffers (BatchNorm running statistics) before a forward pass."""
    return [b.detach().clone() for b in model.buffers()]


def restore_buffers(model: torch.nn.Module, snapshot: list[torch.Tensor]) -> None:
    """Undo what a discarded forward pass (bad batch, stop) did to the buffers."""
    with torch.no_grad():
        for buffer, saved in zip(model.buffers(), snapshot):
            buffer.copy_(saved)


def validate(model: torch.nn.Module, val_set, cfg: dict, device: torch.device, eigen_crop: bool) -> dict:
    """NYU metrics on the validation split. With several ranks each scores its shard and
    the per-image scores are gathered, so every image counts exactly once."""
    shard = val_set
    if distributed.world_size() > 1:
        shard = torch.utils.data.Subset(val_set, distributed.shard_indices(len(val_set)))
    acc = evaluate_model(model, shard, device=device, input_size=model_input_size(cfg),
                         batch_size=int(cfg["train"]["val_batch_size"]), eigen_crop=eigen_crop,
                         min_depth=cfg["data"]["min_depth"], max_depth=cfg["data"]["max_depth"])
    acc.per_image = distributed.gather_lists(acc.per_image)
    return acc.compute()


@dataclass
class TrainState:
    epoch: int = 0            # epoch in progress (or next to start)
    batch_in_epoch: int = 0   # batches already consumed in that epoch (steps + skipped bad batches)
    step: int = 0             # global optimiser steps
    best_value: float | None = None
    best_epoch: int = -1
    train_seconds: float = 0.0
    bad_batches: int = 0      # batches skipped for a non-finite loss or gradient
    last_val: dict = field(default_factory=dict)  # validation metrics of the last finished epoch


def interrupted(signum: int, state: TrainState, last_path: Path) -> TrainingInterrupted:
    """The exception that ends a run stopped by a signal (to this rank or another one)."""
    name = signal.Signals(signum).name if signum else "a signal to another rank"
    return TrainingInterrupted(
        f"stopped by {name} after step {state.step} (batch {state.batch_in_epoch} of epoch {state.epoch + 1}); "
        f"saved {last_path}; run the same command with --resume to continue", signum or signal.SIGTERM)


@dataclass
class Loop:
    """What one run's steps share: the model (`net`: through DDP with several ranks), the
    optimiser and schedule, the state, the run folder (written by rank 0) and the settings."""
    model: torch.nn.Module
    net: torch.nn.Module
    cfg: dict
    folder: runs.RunFolder
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    state: TrainState
    device: torch.device
    epoch_steps: int
    extra_loss: object = None

    def save_last(self) -> None:
        if distributed.is_main():
            self.folder.save(runs.checkpoint_payload(
                self.model, self.cfg, kind=self.cfg.get("kind", "base"), optimizer=self.optimizer.state_dict(),
                scheduler=self.schedule.state_dict(), state=asdict(self.state), rng=rng_state()), "last")
        distributed.barrier()  # no rank leaves before the file is in place

    def log(self, entry: dict) -> None:
        if distributed.is_main():
            self.folder.log(entry)


def epoch_loader(loop: Loop, train_set) -> torch.utils.data.DataLoader:
    """The batches of the epoch in progress: a seeded permutation (the same in a resumed run,
    from the batch it stopped at), each global batch split evenly over the ranks."""
    cfg, state, world = loop.cfg, loop.state, distributed.world_size()
    seed, batch_size = int(cfg["run"]["seed"]), int(cfg["train"]["batch_size"])
    train_set.set_epoch(state.epoch)
    return torch.utils.data.DataLoader(
        train_set, batch_size=batch_size // world, drop_last=True,
        sampler=EpochSampler(len(train_set), seed, state.epoch, start=state.batch_in_epoch * batch_size,
                             rank=distributed.rank(), world_size=world, batch_size=batch_size),
        num_workers=loader_workers(cfg["data"], loop.device.type), pin_memory=loop.device.type == "cuda",
        generator=torch.Generator().manual_seed(seed + state.epoch),  # keeps the global RNG untouched
        worker_init_fn=own_process_group,
    )


def train_one_epoch(loop: Loop, loader, stop: "StopRequest", bar, task, say) -> None:
    """The steps of one epoch (from where it stopped): forward, agree across ranks, backward,
    clip, step, log, mid-epoch checkpoint. A non-finite loss or gradient skips the batch (up
    to train.skip_bad_batches in the run) or stops the run with last.pt at the last good step."""
    tc, state, model = loop.cfg["train"], loop.state, loop.model
    autocast = (lambda: torch.autocast(loop.device.type, dtype=torch.bfloat16)) if tc["amp"] == "bf16" \
        else nullcontext
    max_bad = int(tc.get("skip_bad_batches", 0))  # .get: configs of runs started before the key existed
    clip = float(tc["grad_clip"]) or math.inf
    epoch = state.epoch
    loop.net.train()
    started = time.perf_counter()
    for batch in loader:
        if state.batch_in_epoch >= loop.epoch_steps:
            break
        batch = move_batch(batch, loop.device)
        buffers = snapshot_buffers(model)
        with autocast():
            outputs = forward_batch(loop.net, batch)
            terms = model.loss(outputs, batch)
            if loop.extra_loss is not None:
                extra = loop.extra_loss(model, outputs, batch)
                terms = {**terms, **extra, "total": terms["total"] + sum(extra.values())}
        loss = terms["total"]

        # Every rank learns the mean loss and whether any rank was signalled.
        mean_terms, stopping = step_consensus(terms, bool(stop.signum), loop.device)
        if stopping:
            restore_buffers(model, buffers)  # this forward never happened
            state.train_seconds += time.perf_counter() - started
            loop.save_last()
            raise interrupted(stop.signum, state, loop.folder.last)
        problem = None if math.isfinite(mean_terms["total"]) else f"loss is {mean_terms['total']}"
        loop.optimizer.zero_grad(set_to_none=True)
        if problem is None:
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
            problem = None if math.isfinite(grad_norm) else f"gradient norm is {grad_norm}"
        if problem is not None:  # skip the batch, or stop with the last good step saved
            restore_buffers(model, buffers)
            loop.optimizer.zero_grad(set_to_none=True)
            where = f"step {state.step + 1} (epoch {epoch + 1}, batch {state.batch_in_epoch + 1})"
            if state.bad_batches >= max_bad:
                state.train_seconds += time.perf_counter() - started
                loop.save_last()
                skipped = f" after skipping {max_bad} (train.skip_bad_batches)" if max_bad else ""
                raise TrainingError(
                    f"{problem} at {where}{skipped}; stopped, {loop.folder.last} holds the last good step "
                    f"{state.step}: check that batch's data, lower train.lr, or let a new run skip "
                    f"such batches (--set train.skip_bad_batches=N)")
            state.bad_batches += 1
            state.batch_in_epoch += 1
            say(f"skipped a bad batch: {problem} at {where} ({state.bad_batches} of at most {max_bad})")
            loop.log({"type": "skip", "epoch": epoch + 1, "step": state.step, "batch": state.batch_in_epoch,
                      "reason": problem})
            continue
        loop.optimizer.step()
        loop.schedule.step()
        state.step += 1
        state.batch_in_epoch += 1

        lr = loop.optimizer.param_groups[-1]["lr"]
        bar.update(task, advance=1, loss=mean_terms["total"], lr=lr, description=f"epoch {epoch + 1}/{tc['epochs']}")
        if state.step % int(tc["log_every"]) == 0 or state.batch_in_epoch == loop.epoch_steps:
            loop.log({"type": "train", "epoch": epoch + 1, "step": state.step, "lr": lr, **mean_terms})
        if tc["checkpoint_every"] and state.step % int(tc["checkpoint_every"]) == 0:
            state.train_seconds += time.perf_counter() - started
            started = time.perf_counter()
            loop.save_last()
    state.train_seconds += time.perf_counter() - started


def train(model: torch.nn.Module, cfg: dict, train_set, val_set, run_dir: Path, *, device: torch.device,
          eigen_crop: bool = False, resume: bool = False, progress: bool = True,
          param_groups=None, extra_loss=None) -> dict:
    """Train `model` with the `train:` section of `cfg`; writes the run folder.

    param_groups: optimiser groups (e.g. bases at a lower lr); default all trainable params.
    extra_loss: optional callable(model, outputs, batch) -> dict of extra named terms added
    to the total (e.g. the selectivity regulariser). Returns the summary dict.
    Under torchrun call `distributed.init` first and pass the device it returns.
    Raises TrainingError (non-finite loss) and TrainingInterrupted (SIGINT/SIGTERM).
    """
    tc = cfg["train"]
    folder = runs.RunFolder(run_dir)
    main, world = distributed.is_main(), distributed.world_size()
    seed_everything(int(cfg["run"]["seed"]))
    # channels_last weights (conv outputs follow them): faster convolutions on CPU and CUDA
    # (benchmarks/NOTES.md). .get: older run configs.
    model.to(device, memory_format=torch.channels_last if tc.get("channels_last", False) else torch.preserve_format)
    if tc.get("sync_bn", False):
        model = distributed.convert_sync_batchnorm(model, device)

    # Data: a seeded permutation per epoch, global batches split evenly over the ranks.
    batch_size = int(tc["batch_size"])
    if batch_size % world:
        raise ConfigError(f"train.batch_size {batch_size} is the global batch; it must split evenly over "
                          f"{world} processes", "train.batch_size")
    epoch_steps = steps_per_epoch(len(train_set), batch_size, tc["max_steps_per_epoch"])
    total_steps = epoch_steps * int(tc["epochs"])

    # Optimiser and one-cycle schedule (per step).
    groups = param_groups if param_groups is not None else [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(groups, lr=float(tc["lr"]), weight_decay=float(tc["weight_decay"]))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: one_cycle_lr(
        s, total_steps, 1.0, tc["warmup_fraction"], tc["div_factor"], tc["final_div_factor"]))
    state = TrainState()

    # Resume: weights, optimiser, schedule, state and RNG of last.pt; the log cut back to it.
    if resume and folder.last.is_file():
        ckpt = runs.read_checkpoint(folder.last)
        runs.load_state(model, ckpt["model"], folder.last, cfg["model"]["name"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["scheduler"])
        state = TrainState(**ckpt["state"])
        set_rng_state(ckpt["rng"])
        if main:
            folder.truncate_log_after(state.step)
    elif main and folder.metrics_file.exists():
        folder.metrics_file.unlink()
    if main:
        folder.write_config(cfg)
    if state.epoch >= int(tc["epochs"]) and folder.summary_file.is_file():
        return folder.summary()  # resumed a finished run
    # DDP averages gradients over the ranks in backward; `model` stays the plain module
    # (checkpoints, loss, validation), `net` is what the training forward goes through.
    net = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    loop = Loop(model, net, cfg, folder, optimizer, schedule, state, device, epoch_steps, extra_loss)
    best_metric = tc["best_metric"]

    try:
        with StopRequest() as stop, training_progress(enabled=progress and main) as bar:
            say = bar.console.print if main else (lambda *args: None)
            task = bar.add_task("train", total=total_steps, completed=state.step, loss=float("nan"), lr=0.0)
            while state.epoch < int(tc["epochs"]):
                train_one_epoch(loop, epoch_loader(loop, train_set), stop, bar, task, say)

                # Validation on the scene-held-out split, then best/last checkpoints.
                epoch = state.epoch
                metrics = validate(model, val_set, cfg, device, eigen_crop)
                improved = is_better(best_metric, metrics[best_metric], state.best_value)
                if improved:
                    state.best_value, state.best_epoch = metrics[best_metric], epoch
                loop.log({"type": "val", "epoch": epoch + 1, "step": state.step, **metrics, "best": improved})
                say(f"epoch {epoch + 1}: " + "  ".join(f"{k} {metrics[k]:.4f}" for k in ("rmse", "abs_rel", "d1"))
                    + ("  (best)" if improved else ""))
                state.epoch += 1
                state.batch_in_epoch = 0
                state.last_val = metrics
                if improved and main:
                    folder.save(runs.checkpoint_payload(model, cfg, kind=cfg.get("kind", "base"), epoch=epoch + 1,
                                                        step=state.step, metrics=metrics), "best")
                loop.save_last()
                if state.epoch < int(tc["epochs"]) and distributed.sum_over_ranks([bool(stop.signum)], device)[0]:
                    raise interrupted(stop.signum, state, folder.last)
    except BaseException:
        if main:
            folder.discard_unstarted()
        raise
    summary = {"epochs": state.epoch, "steps": state.step, "best_metric": best_metric,
               "best_value": state.best_value, "best_epoch": state.best_epoch + 1, "last_val": state.last_val,
               "train_seconds": round(state.train_seconds, 3), "bad_batches_skipped": state.bad_batches,
               "world_size": world}
    if main:
        folder.write_summary(summary)
    distributed.barrier()
    return summary
