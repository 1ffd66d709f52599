"""ensemble-mde: stacked-generalization ensembles for monocular depth estimation."""

__version__ = "0.1.0"
