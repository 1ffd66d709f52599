"""Config layering: defaults < preset < --config FILE < --set, with strict keys and types."""

import pytest

from ensemble_mde.config import load_config, merge, parse_override
from ensemble_mde.errors import ConfigError


def test_layers_merge_in_order(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("train:\n  epochs: 7\n  lr: 1.0e-3\ndata:\n  val_fraction: 0.1\n")
    cfg = load_config(["defaults"], user, ["train.lr=2e-4", "data.size=[120, 160]"])
    assert cfg["train"]["epochs"] == 7            # from the file
    assert cfg["train"]["lr"] == pytest.approx(2e-4)  # --set wins over the file
    assert cfg["data"]["val_fraction"] == pytest.approx(0.1)
    assert cfg["data"]["size"] == [120, 160]      # null default accepts a list
    assert cfg["train"]["batch_size"] == 32       # untouched default


def test_unknown_key_names_closest(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(["defaults"], overrides=["train.epoch=3"])
    assert "'train.epoch'" in str(e.value) and "'train.epochs'" in str(e.value)
    user = tmp_path / "u.yaml"
    user.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(["defaults"], user)
    assert "'trian'" in str(e.value) and "'train'" in str(e.value) and "u.yaml" in str(e.value)


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError) as e:
        load_config(["defaults"], overrides=["train.epochs=many"])
    assert "train.epochs" in str(e.value) and "int" in str(e.value)
    with pytest.raises(ConfigError):
        load_config(["defaults"], overrides=["augment.enabled=3"])  # bool expected
    cfg = load_config(["defaults"], overrides=["train.lr=1"])  # an int where a float is expected is fine
    assert isinstance(cfg["train"]["lr"], float)


def test_override_values_parse_as_yaml_scalars():
    assert parse_override("a.b=1e-3") == {"a": {"b": 1e-3}}
    assert parse_override("a=true") == {"a": True}
    assert parse_override("a=[1, 2]") == {"a": [1, 2]}
    assert parse_override("a=hello") == {"a": "hello"}
    with pytest.raises(ConfigError):
        parse_override("no_equals_sign")


def test_section_cannot_be_replaced_by_a_value():
    with pytest.raises(ConfigError) as e:
        merge({"train": {"lr": 1.0}}, {"train": 3}, strict=True, source="x")
    assert "section" in str(e.value)


def test_unknown_packaged_config_and_preset():
    with pytest.raises(ConfigError) as e:
        load_config(["defaults", "base/nonexistent"])
    assert "base/nonexistent" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(["defaults"], preset="gpu-cluster")
    assert "unknown preset" in str(e.value)
