"""train-meta end to end at tiny size: freeze with the cache, the run folder describes the
whole ensemble, evaluate/predict accept it, a changed base is refused."""

import json

import pytest
import torch

from conftest import run_cli
from ensemble_mde import runs

TINY = ["--epochs", "1", "--batch-size", "4", "--device", "cpu", "--no-progress",
        "--set", "data.workers=0", "--set", "train.max_steps_per_epoch=2"]
META_TINY = [*TINY, "--set", "meta.pretrained=false"]   # the NYU default fetches ImageNet weights


@pytest.fixture(scope="module")
def bases(synth_root, tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("runs")
    for name in ("bts", "meter_xxs"):
        weights = ["--set", "model.pretrained=false"] if name == "bts" else []
        run_cli("train-base", name, "--data", synth_root, "--out", runs_dir / name, *TINY,
                "--set", "data.size=null", *weights, check=True)
    return runs_dir


def test_freeze_meta_run_is_self_describing(bases, synth_root, tmp_path):
    base_runs = f"{bases / 'bts'},{bases / 'meter_xxs'}"
    out = tmp_path / "meta"
    proc = run_cli("train-meta", "--inputs", "rgb+d", "--freeze", "--bases", base_runs, "--out", out,
                   "--set", f"ensemble.cache_dir={tmp_path / 'cache'}", *META_TINY, check=True)
    assert "bases: bts" in proc.stdout
    ckpt = torch.load(out / "best.pt", weights_only=True)
    resolved = ckpt["record"]["bases"]
    assert [r["name"] for r in resolved] == ["bts", "meter_xxs"] and all(len(r["sha256"]) == 64 for r in resolved)
    # frozen: the ensemble's base weights are the base checkpoints' weights, bit for bit
    base_state = torch.load(bases / "bts" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(ckpt["model"][f"bases.0.{k}"], v) for k, v in base_state.items())
    assert len(list((tmp_path / "cache").glob("preds-*.h5"))) == 2       # train and val splits

    result = run_cli("evaluate", out, "--json", check=True)
    metrics = json.loads(result.stdout)
    assert metrics["n_images"] == 4 and metrics["rmse"] > 0

    image = next((synth_root / "data" / "nyu2_test").glob("*_colors.png"))
    pred = run_cli("predict", out, image, "--out", tmp_path / "pred", check=True)
    assert (tmp_path / "pred" / f"{image.stem}_weights.png").is_file(), pred.stdout

    # a second meta run on the same bases and data reuses the cache files
    run_cli("train-meta", "--inputs", "d", "--freeze", "--bases", base_runs, "--out", tmp_path / "meta_d",
            "--set", f"ensemble.cache_dir={tmp_path / 'cache'}", *META_TINY, check=True)
    assert len(list((tmp_path / "cache").glob("preds-*.h5"))) == 2

    # a base checkpoint that changed afterwards makes the meta run refuse to load
    changed = torch.load(bases / "bts" / "best.pt", weights_only=True)
    changed["epoch"] = 99
    torch.save(changed, bases / "bts" / "best.pt")
    refused = run_cli("evaluate", out, "--json")
    assert refused.returncode == 2
    assert "changed since the meta-learner was trained" in refused.stderr and len(refused.stderr.splitlines()) == 1


def test_simultaneous_accepts_learner_names(synth_root, tmp_path):
    out = tmp_path / "sim"
    run_cli("train-meta", "--inputs", "rgb", "--simultaneous", "--bases", "bts,meter_xxs", "--data", synth_root,
            "--out", out, *META_TINY, "--set", "data.size=null", "--set", "ensemble.base_pretrained=false", check=True)
    terms = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_terms = [t for t in terms if t["type"] == "train"][-1]
    assert {"silog", "base_bts", "base_meter_xxs", "total"} <= set(train_terms)


def test_freeze_mode_never_runs_the_bases_after_filling_the_cache(bases, synth_root, tmp_path, monkeypatch):
    """docs/design.md §7: meta epochs do not re-run frozen bases, validation included. The val split
    gets its own cache, and scoring from it matches running the bases (float16 tolerance)."""
    from ensemble_mde.data import build_dataset
    from ensemble_mde.evaluation import evaluate_model
    from ensemble_mde.training import meta as training

    cfg = training.meta_config(inputs="rgb+d", mode="freeze", bases=[bases / "bts", bases / "meter_xxs"], overrides=[
        f"run.runs_dir={tmp_path}", f"ensemble.cache_dir={tmp_path / 'cache'}", "run.device=cpu", "data.workers=0",
        "train.epochs=2", "train.batch_size=4", "train.max_steps_per_epoch=2", "meta.pretrained=false"])
    calls, seen = [], {}
    real_train = training.train

    def counting_train(model, cfg, train_set, val_set, *args, **kwargs):
        for base in model.bases:
            base.register_forward_hook(lambda *_: calls.append(1))
        seen.update(model=model, cfg=cfg, val_set=val_set)
        return real_train(model, cfg, train_set, val_set, *args, **kwargs)

    monkeypatch.setattr(training, "train", counting_train)
    run_dir, summary = training.train_meta(cfg, progress=False)
    assert calls == [], "a frozen base ran during meta training or validation"
    assert len(list((tmp_path / "cache").glob("preds-*.h5"))) == 2      # train and val
    assert (run_dir / "best.pt").is_file()

    model, cached_val = seen["model"], seen["val_set"]
    plain_val = build_dataset(runs.data_view(seen["cfg"]), "val")
    assert len(cached_val) == len(plain_val) and "base_depths" in cached_val[0]
    kwargs = dict(device=torch.device("cpu"), min_depth=cfg["data"]["min_depth"], max_depth=cfg["data"]["max_depth"])
    from_cache = evaluate_model(model, cached_val, **kwargs).compute()
    recomputed = evaluate_model(model, plain_val, **kwargs).compute()
    assert len(calls) > 0                                                  # this time the bases ran
    assert abs(from_cache["rmse"] - recomputed["rmse"]) <= 1e-3 * recomputed["rmse"]
    with pytest.raises(ValueError, match="unflipped"):      # flip TTA would need the bases on the flipped image
        evaluate_model(model, cached_val, flip=True, **kwargs)


@pytest.mark.parametrize("base_inputs", ["cached", "live"])
def test_freeze_mode_leaves_the_bases_bit_identical(bases, tmp_path, base_inputs):
    """Under both protocols the frozen bases' weights and BatchNorm statistics in the meta
    run are the base checkpoints' own, bit for bit."""
    out = tmp_path / f"meta_{base_inputs}"
    run_cli("train-meta", "--inputs", "rgb+d", "--freeze", "--bases", f"{bases / 'bts'},{bases / 'meter_xxs'}",
            "--out", out, "--set", f"ensemble.cache_dir={tmp_path / 'cache'}", "--set",
            f"ensemble.base_inputs={base_inputs}", *META_TINY, check=True)
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["config"]["ensemble"]["base_inputs"] == base_inputs
    for i, name in enumerate(("bts", "meter_xxs")):
        base_state = torch.load(bases / name / "best.pt", weights_only=True)["model"]
        assert all(torch.equal(ckpt["model"][f"bases.{i}.{k}"], v) for k, v in base_state.items()), name
    assert (tmp_path / "cache").exists() == (base_inputs == "cached")   # live never fills a cache


def test_live_bases_see_the_augmented_batch_the_meta_learner_sees(bases, tmp_path, monkeypatch):
    """The study's protocol: frozen bases (eval mode, no gradients) run on each augmented
    training batch, colour jitter included, and the meta-learner gets that same batch."""
    from ensemble_mde.training import meta as training

    cfg = training.meta_config(inputs="rgb+d", mode="freeze", bases=[bases / "bts", bases / "meter_xxs"], overrides=[
        f"run.runs_dir={tmp_path}", "ensemble.base_inputs=live", "run.device=cpu", "data.workers=0",
        "train.epochs=1", "train.batch_size=4", "train.max_steps_per_epoch=2", "meta.pretrained=false",
        "augment.color=1.0", "augment.flip=1.0"])
    seen = []
    real_train = training.train

    def recording_train(model, cfg, train_set, *args, **kwargs):
        assert "base_depths" not in train_set[0] and train_set.augment_cfg is not None
        for base in model.bases:
            base.register_forward_hook(lambda m, inputs, output: seen.append(
                ("base", inputs[0].detach().clone(), m.training, torch.is_grad_enabled())))
        model.meta.register_forward_hook(lambda m, inputs, output: seen.append(
            ("meta", inputs[0].detach().clone(), m.training, torch.is_grad_enabled())))
        return real_train(model, cfg, train_set, *args, **kwargs)

    monkeypatch.setattr(training, "train", recording_train)
    training.train_meta(cfg, progress=False)
    # step 1: the two bases, then the meta-learner
    (_, rgb0, train0, grad0), (_, rgb1, _, _), (kind, meta_rgb, meta_training, meta_grad) = seen[:3]
    assert kind == "meta" and meta_training and meta_grad
    assert not train0 and not grad0                # frozen: eval mode, no graph
    assert torch.equal(rgb0, meta_rgb) and torch.equal(rgb1, meta_rgb)
