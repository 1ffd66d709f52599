"""compare: ranking marks, oracle exclusion, grouping by seed, every output format and the
paired bootstrap, on per-image metric arrays built here (no model runs)."""

import csv
import io
import json
import re

import numpy as np
import pytest

from ensemble_mde.compare import Comparison, accuracy_table, render, rich_table, significance_table
from ensemble_mde.compare.stats import paired_bootstrap
from ensemble_mde.compare.variants import RunResult, config_identity, group_by_seed
from ensemble_mde.metrics import METRIC_KEYS

N = 4  # images


def result(name, kind, rmse, d1, *, seed=0, group=None, upper_bound=False, order=(0,), params=1_000_000):
    """A run whose per-image metrics are constant: rmse and d1 as given, the other errors = rmse / 10."""
    per_image = {k: np.full(N, rmse / 10) for k in METRIC_KEYS}
    per_image["rmse"] = np.full(N, float(rmse))
    for k in ("d1", "d2", "d3"):
        per_image[k] = np.full(N, float(d1))
    return RunResult(name, kind, f"runs/{name}_{seed}", seed, group or name, per_image, upper_bound=upper_bound,
                     order=order, cost={"params": params})


def comparison(results, **info):
    return Comparison(group_by_seed(results), [f"img{i}" for i in range(N)], {"split": "test", **info})


@pytest.fixture
def table():
    results = [
        result("adabins", "base", 0.50, 0.80, order=(0,)),
        result("bts", "base", 0.40, 0.70, order=(1,)),
        result("Baseline (mean)", "baseline", 0.45, 0.75, order=(0,)),
        result("Oracle", "baseline", 0.10, 0.99, upper_bound=True, order=(3,)),
        result("SG rgb+d freeze", "meta", 0.30, 0.85, order=(2, 0)),
    ]
    return accuracy_table(comparison(results))


def row(table, name):
    return next(r for r in table.rows if r["name"] == name)


def test_rows_in_study_order_and_marks_are_direction_aware(table):
    assert [r["name"] for r in table.rows] == ["adabins", "bts", "Baseline (mean)", "Oracle", "SG rgb+d freeze"]
    # RMSE (lower is better): SG 0.30 first, bts 0.40 second.
    assert row(table, "SG rgb+d freeze")["rank"]["rmse"] == 1
    assert row(table, "bts")["rank"]["rmse"] == 2
    assert "rmse" not in row(table, "adabins").get("rank", {})
    # d1 (higher is better): SG 0.85 first, adabins 0.80 second.
    assert row(table, "SG rgb+d freeze")["rank"]["d1"] == 1
    assert row(table, "adabins")["rank"]["d1"] == 2
    assert "d1" not in row(table, "bts").get("rank", {})


def test_oracle_is_marked_but_never_ranked(table):
    oracle = row(table, "Oracle")
    assert oracle["upper_bound"] and not oracle.get("rank")
    assert any(note.startswith("† Upper bounds that look at the ground truth") for note in table.notes)


def test_ties_at_the_displayed_precision_share_a_mark():
    results = [result("a", "base", 0.3001, 0.5), result("b", "base", 0.2999, 0.5, order=(1,)),
               result("c", "base", 0.4, 0.5, order=(2,))]
    t = accuracy_table(comparison(results))
    assert [row(t, n)["rank"]["rmse"] for n in ("a", "b", "c")] == [1, 1, 2]


def test_seeds_group_into_mean_and_sample_std():
    results = [result("bts", "base", rmse, 0.7, seed=seed, group="bts-config")
               for seed, rmse in ((0, 0.40), (1, 0.44), (2, 0.42))]
    results.append(result("adabins", "base", 0.5, 0.8, group="adabins-config", order=(1,)))
    c = comparison(results)
    assert [v.name for v in c.variants] == ["bts", "adabins"]
    bts = c.variants[0]
    assert bts.seeds == [0, 1, 2]
    mean, std = bts.mean_std("rmse")
    assert mean == pytest.approx(0.42)
    assert std == pytest.approx(0.02)  # sample std of 0.40, 0.44, 0.42
    assert c.variants[1].mean_std("rmse")[1] is None
    md = render(accuracy_table(c), "md")
    assert "0.420 ± 0.020" in md
    assert "3 seeds" in md


def test_config_identity_ignores_seed_and_name_only():
    cfg = {"run": {"seed": 0, "name": "a", "runs_dir": "runs", "device": "auto"}, "model": {"name": "bts"},
           "train": {"lr": 1e-3}, "data": {"path": "/d", "workers": 2}}
    other = json.loads(json.dumps(cfg))
    other["run"].update(seed=3, name="b", device="cpu")
    assert config_identity(cfg) == config_identity(other)
    other["train"]["lr"] = 2e-3
    assert config_identity(cfg) != config_identity(other)


def test_markdown_marks_and_arrows(table):
    md = render(table, "md")
    assert "| Variant | #Params | δ<1.25 ↑ |" in md and "RMSE ↓" in md
    sg = next(line for line in md.splitlines() if line.startswith("| SG rgb+d freeze"))
    assert "**0.300**" in sg and "**0.850**" in sg
    bts = next(line for line in md.splitlines() if line.startswith("| bts"))
    assert "<u>0.400</u>" in bts
    oracle = next(line for line in md.splitlines() if "Oracle" in line)
    assert "*Oracle†*" in oracle and "**" not in oracle.replace("*Oracle†*", "") and "<u>" not in oracle


def test_latex_marks_escapes_and_rules():
    results = [result("meter_xxs", "base", 0.5, 0.8), result("bts", "base", 0.4, 0.7, order=(1,)),
               result("SG rgb+d freeze", "meta", 0.3, 0.85)]
    tex = render(accuracy_table(comparison(results)), "latex")
    assert r"\begin{tabular}{l" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"meter\_xxs" in tex and r"\#Params" in tex and r"$\delta<1.25$ $\uparrow$" in tex
    sg = next(line for line in tex.splitlines() if line.startswith("SG rgb+d freeze"))
    assert r"\textbf{0.300}" in sg
    assert r"\underline{0.400}" in next(line for line in tex.splitlines() if line.startswith("bts"))
    assert tex.count(r"\midrule") == 2  # below the header, then between bases and stacking


def test_csv_has_full_precision_values_and_rank_columns(table):
    rows = list(csv.DictReader(io.StringIO(render(table, "csv"))))
    assert [r["variant"] for r in rows] == [r["name"] for r in table.rows]
    sg = next(r for r in rows if r["variant"] == "SG rgb+d freeze")
    assert float(sg["rmse"]) == pytest.approx(0.30) and sg["rmse_rank"] == "1" and sg["d1_rank"] == "1"
    oracle = next(r for r in rows if r["variant"] == "Oracle")
    assert oracle["upper_bound"] == "1" and oracle["rmse_rank"] == ""
    assert int(sg["params"]) == 1_000_000


def test_json_round_trips_values_and_ranks(table):
    data = json.loads(render(table, "json"))
    columns = {c["key"]: c["better"] for c in data["columns"]}
    assert columns["d1"] == "higher" and columns["rmse"] == "lower" and columns["params"] is None
    sg = next(r for r in data["rows"] if r["name"] == "SG rgb+d freeze")
    assert sg["values"]["rmse"] == pytest.approx(0.30) and sg["rank"] == {k: 1 for k in sg["rank"]}
    assert next(r for r in data["rows"] if r["name"] == "Oracle")["rank"] == {}


def test_rich_table_styles_first_bold_second_underlined(table):
    from rich.console import Console

    console = Console(file=io.StringIO(), width=250, force_terminal=True, color_system="standard")
    console.print(rich_table(table))
    text = console.file.getvalue()
    assert re.search(r"\x1b\[1m *0\.300", text)        # bold (the padding of right-justified cells is styled too)
    assert re.search(r"\x1b\[4m *0\.400", text)        # underline
    plain = render(table, "table")
    assert "SG rgb+d freeze" in plain and "\x1b[" not in plain


def test_piped_table_keeps_every_digit(table, capsys, monkeypatch):
    # Under pytest stdout is not a terminal, as in `ensemble compare > table.txt` or a CI log:
    # rich alone would assume 80 columns and cut the numbers to ellipses.
    from ensemble_mde.progress import output_console

    monkeypatch.delenv("COLUMNS", raising=False)
    output_console().print(rich_table(table))
    text = capsys.readouterr().out
    assert "…" not in text
    assert "0.300" in text and "SG rgb+d freeze" in text


def test_unknown_format_is_one_clear_error(table):
    from ensemble_mde.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown format"):
        render(table, "html")


def test_bootstrap_interval_contains_a_constructed_true_difference():
    rng = np.random.default_rng(1)
    reference = rng.uniform(0.3, 0.6, size=200)
    noise = rng.normal(0, 0.05, size=200)
    values = reference - 0.05 + (noise - noise.mean())      # mean difference exactly -0.05
    out = paired_bootstrap({"rmse": values}, {"rmse": reference}, resamples=2000, seed=0)["rmse"]
    assert out["diff"] == pytest.approx(-0.05)
    assert out["lo"] < -0.05 < out["hi"]
    assert out["hi"] - out["lo"] < 0.03                     # 2 x 1.96 x 0.05 / sqrt(200) = 0.014
    assert out["p"] == 0.0                                  # no resample reaches zero: p < 1/2000


def test_bootstrap_p_value_is_large_without_a_difference():
    reference = np.linspace(0.2, 0.8, 100)
    values = reference + np.tile([0.1, -0.1], 50)           # differences average exactly zero
    out = paired_bootstrap({"rmse": values}, {"rmse": reference}, resamples=2000, seed=0)["rmse"]
    assert out["diff"] == pytest.approx(0.0, abs=1e-12)
    assert out["lo"] < 0 < out["hi"]
    assert out["p"] > 0.5


def test_bootstrap_column_against_the_mean_baseline():
    results = [result("bts", "base", 0.40, 0.7), result("Baseline (mean)", "baseline", 0.45, 0.75),
               result("SG rgb+d freeze", "meta", 0.30, 0.85)]
    results[1].run = "mean:runs/bts"
    c = comparison(results)
    c.reference = "Baseline (mean)"
    c.run_bootstrap(500, seed=0)
    t = accuracy_table(c)
    assert row(t, "Baseline (mean)")["text"]["delta"] == "reference"
    assert row(t, "SG rgb+d freeze")["text"]["delta"] == "-0.150 [-0.150, -0.150], p<0.002"
    assert "Δ RMSE vs Baseline" in render(t, "md")
    assert "delta" not in [col.key for col in accuracy_table(c, delta_metric=None).columns]
    sig = significance_table(c)
    assert [r["name"] for r in sig.rows] == ["bts", "SG rgb+d freeze"]     # the reference has no row
    assert row(sig, "bts")["text"]["rmse_delta"] == "-0.050 [-0.050, -0.050]"
    assert row(sig, "bts")["values"]["d1_delta"] == pytest.approx(-0.05)
