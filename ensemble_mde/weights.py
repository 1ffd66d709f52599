"""Import official pretrained weights into a normal run folder (`config.yaml` + `best.pt`),
so that `loading.load_run`, `evaluate`, `compare` and the meta-learner use them like any run.

Supported: the METER releases (lorenzopapa5/METER, `build_model_best_nyu_xxs`,
`build_model_best_kitti_xxs` ...): plain state_dicts whose keys match `base_learners.meter`
exactly. How a release differs from our module (unit, input size, ImageNet normalisation,
the data's protocol) is `base_learners.meter.OFFICIAL_RELEASES`, by the dataset it was
trained on: the import scales the output layer to metres, sets the model arguments, records
the input size, which evaluation then resizes inputs to, and for KITTI adds the KITTI layer
(configs/data/kitti.yaml: 80 m, Garg crop).
"""

from __future__ import annotations

from pathlib import Path

import torch

from base_learners import meter
from ensemble_mde import config as config_mod
from ensemble_mde import runs
from ensemble_mde.errors import CheckpointError, ConfigError
from ensemble_mde.io import load_checkpoint
from ensemble_mde.loading import build_learner

# learner -> dataset -> how its official release differs from our learner (the facts live beside the model)
OFFICIAL_RELEASES = {f"meter_{variant}": meter.OFFICIAL_RELEASES for variant in meter.VARIANTS}
NESTED_KEYS = ("model", "state_dict")
DEFAULT_DATASET = "nyu"  # a file whose name names no dataset: what every import was before KITTI's


def official_release(learner: str, file: Path, dataset: str | None = None) -> tuple[str, dict]:
    """(dataset, release facts) of the official weights `file` for `learner`: `dataset` when
    given, else the one the file's name names (`build_model_best_kitti_xxs` -> kitti), else nyu."""
    if learner not in OFFICIAL_RELEASES:
        raise CheckpointError(
            f"no official-weight import for learner {learner!r}; supported: {', '.join(OFFICIAL_RELEASES)}", learner)
    releases = OFFICIAL_RELEASES[learner]
    if dataset is None:
        named = [name for name in releases if name in Path(file).name.lower()]
        dataset = named[0] if len(named) == 1 else DEFAULT_DATASET
    if dataset not in releases:
        raise ConfigError(f"no official {learner} release for dataset {dataset!r}; one of {', '.join(releases)}",
                          "--dataset")
    return dataset, releases[dataset]


def official_state_dict(file: Path) -> dict[str, torch.Tensor]:
    """The state_dict in `file` (weights_only load): plain, or nested under "model"/"state_dict"."""
    ckpt = load_checkpoint(file)
    for key in NESTED_KEYS:
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError("not a state_dict (a mapping of parameter names to tensors)", file)
    return ckpt


def import_official_weights(learner: str, file: Path, out_dir: Path, force: bool = False,
                            dataset: str | None = None) -> Path:
    """Convert the official weights `file` for `learner`, trained on `dataset` (default: as
    `official_release` reads the file's name), into the run folder `out_dir` (config.yaml +
    best.pt); returns the path of best.pt. A folder that holds a run is refused, or with
    `force` emptied of it first (no last.pt or summary.json of the old run is left beside the
    imported weights)."""
    file, out_dir = Path(file), Path(out_dir)
    _, release = official_release(learner, file, dataset)
    cfg = config_mod.load_config(["defaults", f"base/{learner}"] + ([release["layer"]] if release["layer"] else []))
    cfg["run"].update(name=out_dir.name, runs_dir=str(out_dir.parent))
    runs.with_record(cfg, {"input_size": list(release["input_size"])})
    cfg["model"].update(release["model"])
    cfg["data"]["path"] = None  # trained on no data of ours: evaluating it needs --data, compare takes the others'
    model = build_learner(cfg, init_weights=False)
    runs.load_state(model, official_state_dict(file), file, learner)  # one-line error naming the bad keys
    own = model.state_dict()
    with torch.no_grad():
        for key, factor in release["to_metres"].items():
            own[key].mul_(factor)
    with runs.RunFolder(out_dir).training(force=force, resumable=False) as folder:
        folder.write_config(cfg)
        folder.save(runs.checkpoint_payload(model, cfg, epoch=0, step=0, metrics={}, source=str(file)), "best")
    return folder.best
