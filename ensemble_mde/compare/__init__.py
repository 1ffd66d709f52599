"""The paper's tables from a set of run folders (`ensemble compare`, `ensemble experiment`).

Every run is evaluated ONCE on the test split: its per-image NYU metrics are kept
(ensemble_mde.metrics), the base learners' depth maps are kept on disk for the averaging
baselines (meta_learner.baselines) and fed to the freeze-mode stacked ensembles (whose
bases are those very checkpoints), and a few images' maps are kept for the figures.
Tables, baselines, the bootstrap and the figures all reuse these results.

    comparison = compare_runs(["runs/adabins", "runs/bts", "runs/meta_rgbd_freeze"], bootstrap=1000)
    print(render(accuracy_table(comparison), "md"))

Rows: base learners, baselines (mean = the paper's "Baseline", median, weighted by
validation RMSE; the selection and convex oracles = upper bounds, never ranked),
stacked-generalization variants. Runs whose configs differ only in run.seed / run.name are one row: mean ± sample
std over seeds. In each metric column the best ranked row is marked 1 (bold) and the
second 2 (underlined), compared at the displayed precision.

Modules: variants (runs, rows, seeds), stats (bootstrap), tables (the comparison and its
tables), render (text formats), evaluate (the evaluation pass and the baselines:
`compare_runs`), report (figures, report.md, the table files).
"""

from ensemble_mde.compare.evaluate import BASELINE_NAMES, compare_runs
from ensemble_mde.compare.render import print_tables, render, rich_table, table_dict
from ensemble_mde.compare.report import write_report, write_tables
from ensemble_mde.compare.tables import (Comparison, accuracy_table, compute_table, significance_table,
                                         weights_table)

__all__ = ["BASELINE_NAMES", "Comparison", "accuracy_table", "compare_runs", "compute_table", "print_tables",
           "render", "rich_table", "significance_table", "table_dict", "weights_table", "write_report",
           "write_tables"]
