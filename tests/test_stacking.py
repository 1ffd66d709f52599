"""Ensemble sets (seeds, folds, holdout) and the stacking protocols (in-sample, holdout,
out-of-fold): partitions by scene, what each member trained on, the out-of-fold cache, a
killed set, and the three protocols end to end on a tiny synthetic set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ensemble_mde.data.readers import Record
from ensemble_mde.data.splits import scene_folds, split_records
from ensemble_mde.errors import CheckpointError, ConfigError
from ensemble_mde.training.sets import SetSpec, read_set, train_base_set

# METER-XXS (0.7M parameters), two optimiser steps at a large learning rate from the first step:
# about a second per member, and the members' maps differ (the fold models from the full model)
LEARNER = "meter_xxs"
TINY = ["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=4", "train.val_batch_size=4",
        "data.workers=0", "augment.crop=false", "train.lr=1e-2", "train.div_factor=1.0"]
META_TINY = ["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=4", "train.val_batch_size=4",
             "data.workers=0", "augment.crop=false"]


class ListSource:
    """A source with a train split only (validation is carved from it by scene)."""
    root = "listed"
    format = "list"

    def __init__(self, records):
        self._records = records

    def has(self, split):
        return split == "train"

    def records(self, split):
        return list(self._records) if split == "train" else []


def scenes(records):
    return {r.scene for r in records}


def test_folds_and_holdout_partition_the_training_scenes_outside_validation():
    records = [Record(f"s{i}/{j}", f"s{i}", f"s{i}/{j}.jpg", f"s{i}/{j}.png") for i in range(11) for j in range(3)]
    source = ListSource(records)
    base = {"val_fraction": 0.2, "val_seed": 0, "partition_seed": 3}
    val = scenes(split_records(source, "val", base))
    training = scenes(split_records(source, "train", base))
    assert len(val) == 2 and not val & training and val | training == scenes(records)

    held = []
    for k in range(4):
        fold = {**base, "folds": 4, "fold": k}
        rest = scenes(split_records(source, "train", fold))
        only = scenes(split_records(source, "train", {**fold, "train_on": "held_out"}))
        assert rest | only == training and not rest & only and not only & val
        assert scenes(split_records(source, "val", fold)) == val     # every member validates on the same scenes
        held.append(only)
    assert set.union(*held) == training and sum(map(len, held)) == len(training)   # disjoint, covering
    assert sorted(map(len, held)) == [2, 2, 2, 3]
    assert held == scene_folds(sorted(training), 4, 3)                 # deterministic by the seed
    assert scene_folds(sorted(training), 4, 4) != held

    part = {**base, "holdout": 0.3}
    rest = scenes(split_records(source, "train", part))
    only = scenes(split_records(source, "train", {**part, "train_on": "held_out"}))
    assert len(only) == round(0.3 * len(training)) and rest | only == training and not rest & only
    assert not (rest | only) & val

    with pytest.raises(ConfigError, match="two ways of holding scenes out"):
        split_records(source, "train", {**part, "folds": 4, "fold": 0})
    with pytest.raises(ConfigError, match="data.fold 4 needs"):
        split_records(source, "train", {**base, "folds": 4, "fold": 4})


@pytest.fixture(scope="module")
def sets(synth_root, tmp_path_factory):
    """Two METER-XXS fold sets (3 folds, seeds 0 and 1) and two holdout sets, trained while the
    scenes each member's training loader yields are recorded: {"root", "seen": {run: scenes}}."""
    import ensemble_mde.training.base as base_mod
    from ensemble_mde.data.dataset import DepthDataset

    root = tmp_path_factory.mktemp("sets")
    seen, current = {}, []
    train, getitem = base_mod.train, DepthDataset.__getitem__

    def recording_train(model, cfg, train_set, *args, **kwargs):
        current[:] = [train_set]
        seen[f"{cfg['run']['runs_dir']}/{cfg['run']['name']}"] = set()
        return train(model, cfg, train_set, *args, **kwargs)

    def recording_getitem(self, index):
        if current and self is current[0]:
            seen[next(reversed(seen))].add(self.records[index].scene)
        return getitem(self, index)

    common = dict(overrides=TINY, preset="cpu", settings=[], progress=False, say=lambda *a: None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(base_mod, "train", recording_train)
        mp.setattr(DepthDataset, "__getitem__", recording_getitem)
        from ensemble_mde.config import Setting

        data = Setting("data.path", str(synth_root), "test")
        for name, spec, seed in (("cv_a", SetSpec("folds", folds=3), 0), ("cv_b", SetSpec("folds", folds=3), 1),
                                 ("ho_a", SetSpec("holdout", holdout=0.34), 0),
                                 ("ho_b", SetSpec("holdout", holdout=0.34), 1)):
            train_base_set(LEARNER, spec, root / name, **{**common, "settings": [data, Setting("run.seed", seed, "t")]})
    return {"root": root, "seen": seen}


def test_a_fold_or_holdout_member_never_sees_its_held_out_scenes(sets):
    root = sets["root"]
    info = read_set(root / "cv_a")
    assert info["members"] == ["fold0", "fold1", "fold2", "full"]
    held = [set(info["held_out_scenes"][f"fold{k}"]) for k in range(3)]
    all_scenes = set.union(*held)
    assert len(all_scenes) == 3 and all(len(h) == 1 for h in held)
    for k in range(3):
        yielded = sets["seen"][f"{root / 'cv_a'}/fold{k}"]
        assert yielded == all_scenes - held[k]      # everything but its own fold, nothing of it
        record = json.loads((root / "cv_a" / f"fold{k}" / "record.json").read_text())
        assert set(record["held_out_scenes"]) == held[k]
    assert sets["seen"][f"{root / 'cv_a'}/full"] == all_scenes
    ho = read_set(root / "ho_a")["held_out_scenes"]["holdout"]
    assert sets["seen"][f"{root / 'ho_a'}/holdout"] == all_scenes - set(ho) and len(ho) == 1


def test_a_killed_set_trains_only_its_missing_members(synth_root, tmp_path, monkeypatch):
    import ensemble_mde.training.base as base_mod
    from ensemble_mde.config import Setting

    trained, train = [], base_mod.train

    def dies_on_seed1(model, cfg, *args, **kwargs):
        trained.append(cfg["run"]["name"])
        if cfg["run"]["name"] == "seed1" and len(trained) < 3:
            raise KeyboardInterrupt  # the set is killed while this member trains
        return train(model, cfg, *args, **kwargs)

    monkeypatch.setattr(base_mod, "train", dies_on_seed1)
    kwargs = dict(overrides=TINY, preset="cpu", settings=[Setting("data.path", str(synth_root), "test")],
                  progress=False, say=lambda *a: None)
    folder = tmp_path / "same"
    with pytest.raises(KeyboardInterrupt):
        train_base_set(LEARNER, SetSpec("seeds", seeds=[0, 1, 2]), folder, **kwargs)
    assert trained == ["seed0", "seed1"]
    first = (folder / "seed0" / "best.pt").read_bytes()
    train_base_set(LEARNER, SetSpec("seeds", seeds=[0, 1, 2]), folder, **kwargs)
    assert trained == ["seed0", "seed1", "seed1", "seed2"]          # seed0 was skipped
    assert (folder / "seed0" / "best.pt").read_bytes() == first
    assert all((folder / m / "summary.json").is_file() for m in ("seed0", "seed1", "seed2"))

    # a member that died after a checkpoint is continued only when asked
    (folder / "seed2" / "summary.json").unlink()
    with pytest.raises(CheckpointError, match="member seed2 was interrupted; pass --resume"):
        train_base_set(LEARNER, SetSpec("seeds", seeds=[0, 1, 2]), folder, **kwargs)
    train_base_set(LEARNER, SetSpec("seeds", seeds=[0, 1, 2]), folder, resume=True, **kwargs)
    assert trained[-1] == "seed2" and (folder / "seed2" / "summary.json").is_file()
    with pytest.raises(ConfigError, match="holds another set"):
        train_base_set(LEARNER, SetSpec("seeds", seeds=[0, 1]), folder, **kwargs)


def meta(sets, name, bases, stacking, extra=()):
    from ensemble_mde.training.meta import meta_config, train_meta

    root = sets["root"]
    cfg = meta_config(inputs="rgb+d", mode="freeze", bases=[root / b for b in bases], preset="cpu",
                      overrides=[*META_TINY, f"run.runs_dir={root}", f"run.name={name}",
                                 f"ensemble.stacking={stacking}", *extra])
    run_dir, _ = train_meta(cfg, progress=False, say=lambda *a: None)
    return run_dir


def test_the_out_of_fold_cache_holds_each_frames_fold_model(sets):
    from ensemble_mde import runs
    from ensemble_mde.data import build_dataset
    from ensemble_mde.loading import load_run
    from ensemble_mde.training.meta import cache_data_id
    from ensemble_mde.training.stacking import oof_cache_hashes
    from meta_learner.cache import PredictionCache

    run_dir = meta(sets, "sg_oof", ["cv_a", "cv_b"], "oof")
    cfg = runs.RunFolder(run_dir).read_config()
    bases = cfg[runs.RECORD]["bases"]
    assert [b["name"] for b in bases] == ["meter_xxs:cv_a", "meter_xxs:cv_b"]
    assert [b["set"]["member"] for b in bases] == ["full", "full"]     # validation and test: the full models
    plain = build_dataset(runs.data_view(cfg), "train", augment=False)
    cache = PredictionCache.open(sets["root"] / ".cache", oof_cache_hashes(bases), cache_data_id(cfg, plain))
    assert cache.complete and len(cache) == len(plain) == 16
    held = bases[0]["oof"]["held_out_scenes"]
    models = {(j, k): load_run(b["oof"]["members"][k]["run"])[0] for j, b in enumerate(bases) for k in range(3)}
    full = [load_run(b["run"])[0] for b in bases]
    folds_seen, differs = set(), 0
    with torch.no_grad():
        for i, record in enumerate(plain.records):
            k = next(f for f, scenes in enumerate(held) if record.scene in scenes)
            folds_seen.add(k)
            rgb = plain[i]["rgb"][None]
            cached = cache.get(i)
            for j in range(len(bases)):
                want = models[j, k](rgb)["depth"][0, 0]
                torch.testing.assert_close(cached[j], want.half().float(), rtol=2e-3, atol=1e-4)
                differs += not torch.allclose(cached[j], full[j](rgb)["depth"][0, 0], rtol=2e-3, atol=1e-4)
    assert folds_seen == {0, 1, 2}
    assert differs == 2 * len(plain)    # no training frame's map is the full model's (which saw the frame)

    # --oof-test folds: at validation and test each learner is the mean of its fold models
    from ensemble_mde.loading import load_any_run
    from meta_learner.ensemble import MeanOfMembers

    ensemble, _ = load_any_run(meta(sets, "sg_oof_folds", ["cv_a", "cv_b"], "oof", ["ensemble.oof_test=folds"]))
    assert all(isinstance(b, MeanOfMembers) and len(b.members) == 3 for b in ensemble.bases)
    rgb = plain[0]["rgb"][None]
    with torch.no_grad():
        want = torch.stack([models[0, k](rgb)["depth"] for k in range(3)]).mean(dim=0)
        torch.testing.assert_close(ensemble.bases[0](rgb)["depth"], want)


def test_three_protocols_end_to_end_and_compared(sets):
    from ensemble_mde import runs
    from ensemble_mde.compare import compare_runs, weights_table

    in_sample = meta(sets, "sg_in", ["cv_a/full", "cv_b/full"], "in-sample")
    holdout = meta(sets, "sg_ho", ["ho_a", "ho_b"], "holdout")
    oof = sets["root"] / "sg_oof" if (sets["root"] / "sg_oof" / "summary.json").is_file() else \
        meta(sets, "sg_oof", ["cv_a", "cv_b"], "oof")
    cv = meta(sets, "sg_cv", ["cv_a"], "in-sample")

    ho_cfg = runs.RunFolder(holdout).read_config()
    held = read_set(sets["root"] / "ho_a")["held_out_scenes"]["holdout"]
    assert runs.data_view(ho_cfg)["data"]["train_on"] == "held_out"
    assert ho_cfg[runs.RECORD]["held_out_scenes"] == held            # the meta-learner trained on these only
    with pytest.raises(ConfigError, match="needs every base to be a --holdout set"):
        meta(sets, "sg_bad", ["cv_a/full", "ho_a"], "holdout")
    with pytest.raises(ConfigError, match="--stacking oof needs sets made with --folds"):
        meta(sets, "sg_bad", ["ho_a", "ho_b"], "oof")

    c = compare_runs([in_sample, holdout, oof, cv], bootstrap=50, measure=False, figure_images=0)
    names = [v.name for v in c.variants]
    for label in ("SG rgb+d freeze", "SG rgb+d freeze holdout", "SG rgb+d freeze oof", "SG rgb+d freeze [cv_a]",
                  "Baseline (mean) ([cv_a])", "meter_xxs [cv_a/fold0]", "meter_xxs [ho_a/holdout]"):
        assert label in names, (label, names)
    # each ensemble is compared with the simple average of its own bases
    assert c.bootstrap["SG rgb+d freeze [cv_a]"]["reference"] == "Baseline (mean) ([cv_a])"
    assert c.bootstrap["SG rgb+d freeze holdout"]["reference"] == "Baseline (mean) (ho_a/holdout+ho_b/holdout)"
    assert c.bootstrap["SG rgb+d freeze oof"]["reference"] == c.bootstrap["SG rgb+d freeze"]["reference"]
    mean_cv = c.variant("Baseline (mean) ([cv_a])").image_values("rmse")
    sg_cv = c.variant("SG rgb+d freeze [cv_a]").image_values("rmse")
    assert c.bootstrap["SG rgb+d freeze [cv_a]"]["rmse"]["diff"] == pytest.approx(float(np.mean(sg_cv - mean_cv)))
    table = weights_table(c)
    rows = {r["name"]: r for r in table.rows}
    assert set(rows) == {"SG rgb+d freeze", "SG rgb+d freeze holdout", "SG rgb+d freeze oof",
                         "SG rgb+d freeze [cv_a]"}
    assert all(0.0 <= r["values"]["pixel_std"] < 0.5 for r in rows.values())
    cv_result = c.variant("SG rgb+d freeze [cv_a]").results[0]
    assert cv_result.weights["mean"].shape == (len(c.image_names), 3)
    np.testing.assert_allclose(cv_result.weights["mean"].sum(axis=1), 1.0, atol=1e-4)   # softmax weights


def test_experiment_files_declare_sets_and_protocols(tmp_path):
    from ensemble_mde.config import packaged_config_path
    from ensemble_mde.experiment import load_experiment, plan

    exp = load_experiment(packaged_config_path("experiments/stacking_protocols"), out=tmp_path / "study")
    labels = [step.label for step in plan(exp, say=lambda *a: None)]
    assert "train set adabins_cv (folds)" in labels and "train set bts_same (seeds)" in labels
    assert "train meta_rgbd_freeze_oof (meta rgb+d freeze oof)" in labels
    assert "train meta_rgbd_freeze_holdout (meta rgb+d freeze holdout)" in labels
    assert labels[-1] == "compare and report"
    bad = {"name": "x", "data": {"synth": {"train": 8}}, "bases": [{"name": "bts", "set": {"folds": 3, "holdout": 0.3}}]}
    with pytest.raises(ConfigError, match="give one of seeds, folds, holdout"):
        plan(load_experiment(bad, out=tmp_path / "bad"), say=lambda *a: None)
    unknown = {**bad, "bases": [{"name": "bts", "run_name": "cv", "set": {"folds": 3}}],
               "meta": [{"bases": ["cv/fold9"], "stacking": "in-sample"}]}
    with pytest.raises(ConfigError, match="names no member of a set"):
        plan(load_experiment(unknown, out=tmp_path / "bad"), say=lambda *a: None)
