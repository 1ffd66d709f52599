"""Freeze-mode meta epoch with the prediction cache vs recomputing the base predictions.

Both sides train the same weighting network for the same steps on the same frames (same
augmentation); "cached" reads the bases' depths from the HDF5 cache (filled beforehand, its
fill time printed apart), "recompute" runs the frozen bases in every step. The two epochs
are timed batch by batch in alternation. Prints one JSON line with both epoch times and
the ratio (target >= 5x).

    python benchmarks/bench_cache.py --bases adabins,bts,ldrn --frames 64 --size 96x128
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import base_learners
from ensemble_mde import runs
from ensemble_mde.config import parse_size
from ensemble_mde.config import load_config
from ensemble_mde.data import build_dataset
from ensemble_mde.data.synth import synthesize
from ensemble_mde.training.engine import adamw, move_batch
from ensemble_mde.io import atomic_save, file_sha256
from ensemble_mde.profiling import cpu_model
from ensemble_mde.speed import keep_freed_memory
from ensemble_mde.loading import model_kwargs
from meta_learner.cache import CachedMetaDataset, PredictionCache, data_identity
from meta_learner.ensemble import StackedEnsemble
from meta_learner.weighting import build_weighting


def paired_epoch_seconds(ensemble: StackedEnsemble, cached_set, recompute_set, batch_size: int) -> tuple[float, float]:
    """Seconds of one meta epoch (loading, forward, loss, backward, AdamW step over every
    batch) reading the cache, and of one recomputing the bases. The two epochs run batch by
    batch in alternation, so that drift on a shared machine hits both alike; one untimed
    step each first takes the first-call work (oneDNN kernel creation for the backward,
    optimiser state) off both."""
    opt = adamw(ensemble.param_groups(1e-3), lr=1e-3)   # as the training engine builds it
    ensemble.train()

    def batches(dataset):
        return iter(torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=True))

    def timed_step(batches_left, use_cache: bool) -> float:
        start = time.perf_counter()
        batch = move_batch(next(batches_left), torch.device("cpu"))
        cached = batch["base_depths"] if use_cache else None
        terms = ensemble.loss(ensemble(batch["rgb"], base_depths=cached), batch)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        return time.perf_counter() - start

    timed_step(batches(cached_set), True), timed_step(batches(recompute_set), False)
    cached, recompute = batches(cached_set), batches(recompute_set)
    cached_s = recompute_s = 0.0
    for _ in range(len(cached_set) // batch_size):
        cached_s += timed_step(cached, True)
        recompute_s += timed_step(recompute, False)
    return cached_s, recompute_s


def add_meta_overrides(parser: argparse.ArgumentParser) -> None:
    """`--set KEY=VALUE` (repeatable) into args.meta_overrides: config overrides for the
    meta-learner the benchmark builds (this script and bench.py)."""
    parser.add_argument("--set", dest="meta_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key of the meta-learner's config (configs/meta/weighting.yaml), e.g. "
                             "--set meta.encoder=mobilenetv2_100 (repeatable)")


def main(argv: list[str] | None = None) -> dict:
    keep_freed_memory()  # as the CLI does
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", default="adabins,bts,ldrn")
    parser.add_argument("--frames", type=int, default=64, help="training frames in the epoch")
    parser.add_argument("--size", type=parse_size, default=(96, 128), help="frame size HxW")
    parser.add_argument("--batch-size", type=int, default=8)
    add_meta_overrides(parser)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.bases.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench_cache_") as tmp:
        tmp = Path(tmp)
        # one val frame: the set then has its own val split and every rendered frame trains
        synthesize(tmp / "data", counts={"train": args.frames, "val": 1}, size=args.size, seed=0, progress=False)
        cfg = load_config(["defaults", "meta/weighting"],
                          overrides=[f"data.path={tmp / 'data'}", *args.meta_overrides])
        plain = build_dataset(cfg, "train", augment=False)
        torch.manual_seed(0)
        bases, hashes = [], []
        for name in names:  # checkpoint files, as trained bases would have (the cache keys on them)
            base_cfg = load_config(["defaults", f"base/{name}"])
            model = base_learners.create(name, **model_kwargs(base_cfg, init_weights=False)).eval()
            atomic_save(runs.checkpoint_payload(model, base_cfg), tmp / f"{name}.pt")
            bases.append(model)
            hashes.append(file_sha256(tmp / f"{name}.pt"))
        ensemble = StackedEnsemble(bases, build_weighting(cfg, len(bases), init_weights=False), names,
                                   mode="freeze")
        if cfg["train"]["channels_last"]:  # as the training engine does
            ensemble.to(memory_format=torch.channels_last)

        frame = tuple(plain[0]["rgb"].shape[-2:])
        cache = PredictionCache.open(tmp / "cache", hashes,
                                     data_identity(plain.root, plain.format, "train", [r.name for r in plain.records], frame))
        start = time.perf_counter()
        cache.fill(plain, bases, batch_size=args.batch_size, progress=False)
        fill_s = time.perf_counter() - start
        augment = cfg["augment"]
        cached_set = CachedMetaDataset(plain, cache, augment, seed=0)
        recompute_set = build_dataset(cfg, "train")  # the same augmentation, no cached maps

        cached_s, recompute_s = paired_epoch_seconds(ensemble, cached_set, recompute_set, args.batch_size)
    result = {"bases": names, "meta_overrides": args.meta_overrides, "frames": args.frames, "size": list(args.size),
              "batch_size": args.batch_size, "cpu": cpu_model(), "threads": torch.get_num_threads(),
              "cache_fill_s": round(fill_s, 3),
              "epoch_cached_s": round(cached_s, 3), "epoch_recompute_s": round(recompute_s, 3),
              "speedup": round(recompute_s / cached_s, 2)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
