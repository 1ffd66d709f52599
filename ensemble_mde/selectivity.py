"""Neuron depth selectivity (You et al., ICCV 2021, "Towards interpretable deep networks
for monocular depth estimation"), for any learner's `selectable_layers()`.

Facts from the paper and its code (youzunzhi/InterpretableMDE, utils/utils.py, train.py,
dissect.py); our own implementation:

- Depth bins: a layer with K channels uses N_b = min(K, 64) bins with spacing-increasing
  thresholds [0, t_0, t_1, ..., t_{N_b-1}], t_i = exp(ln(beta+1-alpha)·i/(N_b-1)) - (1-alpha),
  so t_0 = alpha and t_{N_b-1} = beta: that is [0, alpha, t_1..t_{N_b-2}, beta], N_b+1
  thresholds. Bin d holds GT in (thr_d, thr_{d+1}]; bin 0 is (0, alpha]. GT <= 0 (no
  depth) and GT > beta are in no bin (index -1). NYU: alpha 0.75, beta 10 m.
- Response R[k, d] of unit (channel) k to bin d: the feature map, upsampled bilinearly to
  the GT size, averaged over the pixels whose GT lies in bin d.
- Selectivity s_k = (R_a - mean_{d != a} R_d) / (R_a + mean_{d != a} R_d).
  Dissection (over a whole dataset): R = |mean response|, a = the unit's strongest bin.
  Regulariser (per batch): R = mean of |features|, a = the unit's fixed bin
  d_k = floor(k·N_b/K); the loss adds alpha · sum over layers of mean_k s_k (alpha < 0
  rewards selectivity; -0.1 by default).
- Bins absent from the data (no pixel) have no response. Unlike the reference code, which
  counts them as response 0 in the mean over the other bins, we average over the *present*
  other bins only; a unit whose bin a is absent, or that has no present other bin, gets
  s = 0 (in the regulariser it still counts in the mean over units, as in the paper).
- A learner that pads its input to a multiple of `input_multiple` pixels computes its maps
  over the padded frame; the part of each map that covers the padding is left out.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F

from ensemble_mde.errors import ModelError

MAX_BINS = 64
NYU_ALPHA = 0.75  # metres: upper edge of the first bin
NYU_BETA = 10.0   # metres: upper edge of the last bin
_EPS = 1e-12


def bins_for_channels(channels: int, max_bins: int = MAX_BINS) -> int:
    """N_b = min(K_l, max_bins)."""
    return min(int(channels), int(max_bins))


def depth_bin_thresholds(n_bins: int, alpha: float = NYU_ALPHA, beta: float = NYU_BETA) -> torch.Tensor:
    """Bin edges in metres, float64 [n_bins+1]: [0, alpha, t_1 .. t_{n_bins-2}, beta]."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if n_bins == 1:
        return torch.tensor([0.0, beta], dtype=torch.float64)
    i = torch.arange(n_bins, dtype=torch.float64)
    t = torch.exp(math.log(beta + 1 - alpha) * i / (n_bins - 1)) - (1 - alpha)
    t[0], t[-1] = alpha, beta  # exact ends (the formula gives them up to rounding)
    return torch.cat([torch.zeros(1, dtype=torch.float64), t])


def depth_bin_index(gt: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Bin of each GT pixel (long, same shape): d for thr_d < gt <= thr_{d+1}; -1 for
    gt <= 0 (no depth), gt > the last threshold, or NaN."""
    edges = thresholds.to(device=gt.device, dtype=torch.float64)
    index = torch.bucketize(gt.double(), edges) - 1  # right=False: edges[i-1] < x <= edges[i] -> i
    n_bins = len(edges) - 1
    return torch.where((index >= 0) & (index < n_bins), index, torch.full_like(index, -1))


def main_tensor(output) -> torch.Tensor:
    """The tensor a hooked module produced: itself; the first element of a tuple/list; the
    first tensor value of a dict (insertion order)."""
    if isinstance(output, torch.Tensor):
        return output
    values = list(output.values()) if isinstance(output, Mapping) else list(output)
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise ModelError(f"hooked layer produced no tensor (got {type(output).__name__})")


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    """The learner itself, looking through DistributedDataParallel's `.module`."""
    return model if hasattr(model, "selectable_layers") else getattr(model, "module", model)


def selectable_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """model.selectable_layers() of the learner (see `_inner`)."""
    inner = _inner(model)
    if not hasattr(inner, "selectable_layers"):
        raise ModelError(f"{type(inner).__name__} has no selectable_layers()")
    return inner.selectable_layers()


def resolve_layers(model: torch.nn.Module, layer_names: Iterable[str]) -> dict[str, torch.nn.Module]:
    """{name: module} for the requested names; an unknown name is a ModelError naming the closest."""
    layers = selectable_layers(model)
    out = {}
    for name in layer_names:
        if name not in layers:
            close = difflib.get_close_matches(name, list(layers), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; available: {', '.join(layers)}"
            raise ModelError(f"unknown selectivity layer {name!r}{hint}", name)
        out[name] = layers[name]
    return out


class LayerOutputs(dict):
    """{layer: output tensor [B,K,h,w]} of the latest forward pass, plus `extent`: the
    fraction (rows, cols) of every map that covers the input image. A learner that pads its
    input to a multiple of `input_multiple` pixels (bottom/right) computes its maps over the
    padded frame; the responses leave that padding out (see `bin_responses`)."""

    extent: tuple[float, float] = (1.0, 1.0)


def input_extent(model: torch.nn.Module, height: int, width: int) -> tuple[float, float]:
    """(rows, cols) fraction of the padded frame that a height x width input fills, for a
    learner that pads to a multiple of its `input_multiple` attribute (1: no padding)."""
    multiple = int(getattr(_inner(model), "input_multiple", 1))
    return height / (-(-height // multiple) * multiple), width / (-(-width // multiple) * multiple)


class LayerHooks:
    """Context manager: forward hooks on named selectable layers. After each forward,
    `outputs[name]` holds that layer's latest output tensor (see `main_tensor`), still part
    of the autograd graph so a regulariser on it trains the layer; `outputs.extent` says how
    much of each map covers the input (see `LayerOutputs`)."""

    def __init__(self, model: torch.nn.Module, layer_names: Iterable[str]):
        self.model = model
        self.layers = resolve_layers(model, layer_names)
        self.outputs = LayerOutputs()
        self._handles: list = []

    def _hook(self, name: str):
        def store(module, inputs, output):
            self.outputs[name] = main_tensor(output)
        return store

    def _record_input(self, module, inputs) -> None:
        if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].dim() >= 2:
            self.outputs.extent = input_extent(self.model, *inputs[0].shape[-2:])

    def __enter__(self) -> "LayerHooks":
        self._handles = [_inner(self.model).register_forward_pre_hook(self._record_input)]
        self._handles += [m.register_forward_hook(self._hook(n)) for n, m in self.layers.items()]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.outputs = LayerOutputs()


def bin_responses(features: torch.Tensor, bins: torch.Tensor, n_bins: int,
                  extent: tuple[float, float] = (1.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bin sums of upsampled features.

    features [B,K,h,w]; bins [B,1,H,W] long (-1 = no bin). Each image's features are
    upsampled bilinearly to H x W and summed over the pixels of each bin (index_add, one
    image at a time: memory K·H·W). extent (rows, cols): the fraction of the map that covers
    the image (the rest covers the learner's bottom/right padding): the map is then
    upsampled to H/rows x W/cols and cropped to H x W. Returns (sums [K,n_bins] in the
    features' float dtype (at least float32), counts [n_bins] float). Differentiable
    w.r.t. features.
    """
    b, k = features.shape[:2]
    size = tuple(bins.shape[-2:])
    padded = (round(size[0] / extent[0]), round(size[1] / extent[1]))
    dtype = torch.promote_types(features.dtype, torch.float32)
    sums = features.new_zeros(k, n_bins + 1, dtype=dtype)  # column n_bins collects "no bin"
    counts = torch.zeros(n_bins + 1, dtype=dtype, device=features.device)
    for i in range(b):
        f = F.interpolate(features[i:i + 1].to(dtype), size=padded, mode="bilinear", align_corners=False)
        f = f[..., :size[0], :size[1]]
        idx = bins[i].reshape(-1).to(features.device)
        idx = torch.where(idx < 0, torch.full_like(idx, n_bins), idx)
        sums = sums.index_add(1, idx, f.reshape(k, -1))
        counts = counts + torch.bincount(idx, minlength=n_bins + 1).to(dtype)
    return sums[:, :n_bins], counts[:n_bins]


def selectivity_index(responses: torch.Tensor, assigned: torch.Tensor | None = None,
                      present: torch.Tensor | None = None) -> torch.Tensor:
    """Selectivity [K] of each unit from mean responses R [K,N_b].

    assigned: [K] long bin per unit (regulariser), or None for each unit's strongest
    present bin (dissection). present: [N_b] bool, bins that had pixels (default all).
    s = (R_a - m) / (R_a + m), m = mean of R over the present bins other than a; s = 0 for
    a unit whose bin a is absent or that has no other present bin.
    """
    k, n_bins = responses.shape
    if present is None:
        present = torch.ones(n_bins, dtype=torch.bool, device=responses.device)
    present = present.to(responses.device)
    if assigned is None:
        assigned = strongest_bins(responses.detach(), present)
    assigned = assigned.to(responses.device)
    units = torch.arange(k, device=responses.device)
    r_a = responses[units, assigned]
    others = present.expand(k, n_bins).clone()
    others[units, assigned] = False
    n_others = others.sum(dim=1)
    mean_others = responses.masked_fill(~others, 0).sum(dim=1) / n_others.clamp(min=1)
    s = (r_a - mean_others) / (r_a + mean_others + _EPS)
    defined = present[assigned] & (n_others > 0)
    return torch.where(defined, s, torch.zeros_like(s))


def strongest_bins(responses: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """[K] long: each unit's largest response among the present bins."""
    return responses.masked_fill(~present.to(responses.device), float("-inf")).argmax(dim=1)


def fixed_bins(channels: int, n_bins: int, device=None) -> torch.Tensor:
    """d_k = floor(k·N_b/K) for k = 0..K-1 (long [K])."""
    return torch.arange(channels, device=device) * n_bins // channels


def _bins_by_count(gt: torch.Tensor, n_bins_needed: Iterable[int], alpha: float, beta: float) -> dict:
    return {n: depth_bin_index(gt, depth_bin_thresholds(n, alpha, beta)) for n in set(n_bins_needed)}


def selectivity_regularizer(
    features_by_layer: Mapping[str, torch.Tensor],
    gt: torch.Tensor,
    alpha: float = -0.1,
    *,
    bin_alpha: float = NYU_ALPHA,
    bin_beta: float = NYU_BETA,
    max_bins: int = MAX_BINS,
    extent: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss term alpha · Σ_layers mean_k s_k on this batch.

    features_by_layer: {layer: [B,K,h,w]} (e.g. LayerHooks.outputs); gt [B,1,H,W] metres.
    extent: the part of the maps that covers the image (default: `features_by_layer.extent`
    when it is a LayerOutputs, else all of it). Responses are means of |features|; unit k's
    bin is fixed, d_k = floor(k·N_b/K). Returns (term, {layer: mean selectivity}), both in
    the autograd graph.
    """
    extent = extent or getattr(features_by_layer, "extent", (1.0, 1.0))
    n_bins = {name: bins_for_channels(f.shape[1], max_bins) for name, f in features_by_layer.items()}
    bins = _bins_by_count(gt, n_bins.values(), bin_alpha, bin_beta)
    per_layer = {}
    for name, features in features_by_layer.items():
        nb = n_bins[name]
        sums, counts = bin_responses(features.abs(), bins[nb], nb, extent)
        responses = sums / counts.clamp(min=1)
        assigned = fixed_bins(features.shape[1], nb, device=features.device)
        per_layer[name] = selectivity_index(responses, assigned, present=counts > 0).mean()
    if not per_layer:
        return gt.new_zeros(()), per_layer
    return alpha * torch.stack(list(per_layer.values())).sum(), per_layer


class SelectivityDissection:
    """Streaming dissection over a dataset: running per-bin sums [K,N_b] (float64) and
    counts [N_b] per layer, so memory does not grow with the dataset.

        dissect = SelectivityDissection()
        with LayerHooks(model, layers) as hooks, torch.no_grad():
            for batch in loader:
                model(batch["rgb"]); dissect.update(hooks.outputs, batch["depth"])
        selectivity = dissect.result()   # {layer: [K]}
    """

    def __init__(self, alpha: float = NYU_ALPHA, beta: float = NYU_BETA, max_bins: int = MAX_BINS):
        self.alpha, self.beta, self.max_bins = float(alpha), float(beta), int(max_bins)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, features_by_layer: Mapping[str, torch.Tensor], gt: torch.Tensor,
               extent: tuple[float, float] | None = None) -> None:
        """Add one batch: features {layer: [B,K,h,w]}, gt [B,1,H,W] metres; extent as in
        `selectivity_regularizer`."""
        extent = extent or getattr(features_by_layer, "extent", (1.0, 1.0))
        n_bins = {name: bins_for_channels(f.shape[1], self.max_bins) for name, f in features_by_layer.items()}
        bins = _bins_by_count(gt, n_bins.values(), self.alpha, self.beta)
        for name, features in features_by_layer.items():
            nb = n_bins[name]
            sums, counts = bin_responses(features.detach().float(), bins[nb], nb, extent)
            if name not in self.sums:
                self.sums[name] = torch.zeros_like(sums, dtype=torch.float64)
                self.counts[name] = torch.zeros_like(counts, dtype=torch.float64)
            self.sums[name] += sums.double()
            self.counts[name] += counts.double()

    def mean_responses(self) -> dict[str, torch.Tensor]:
        """{layer: R [K,N_b]} mean response per bin (0 for bins never seen)."""
        return {name: s / self.counts[name].clamp(min=1) for name, s in self.sums.items()}

    def present_bins(self) -> dict[str, torch.Tensor]:
        """{layer: [N_b] bool} bins that had at least one GT pixel."""
        return {name: c > 0 for name, c in self.counts.items()}

    def result(self) -> dict[str, torch.Tensor]:
        """{layer: per-unit selectivity [K] (float64)}, a = each unit's strongest bin of |R|."""
        present = self.present_bins()
        return {name: selectivity_index(r.abs(), None, present[name]) for name, r in self.mean_responses().items()}

    def preferred_bins(self) -> dict[str, torch.Tensor]:
        """{layer: [K] long} each unit's strongest present bin of |R|."""
        present = self.present_bins()
        return {name: strongest_bins(r.abs(), present[name]) for name, r in self.mean_responses().items()}


def _scale_channels(output, mask: torch.Tensor):
    """`output` with its main tensor's channels (dim 1) multiplied by mask [K]."""
    if isinstance(output, torch.Tensor):
        if output.shape[1] != mask.numel():
            raise ModelError(f"layer has {output.shape[1]} channels but the unit order names {mask.numel()} units")
        return output * mask.to(output).view(1, -1, *([1] * (output.dim() - 2)))
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return type(output)([_scale_channels(output[0], mask), *output[1:]])
    raise ModelError(f"cannot ablate units of a layer that outputs {type(output).__name__}")


class ZeroUnits:
    """Context manager: a forward hook that zeroes the given output channels of one layer."""

    def __init__(self, model: torch.nn.Module, layer: str, units: Iterable[int], channels: int):
        self.module = resolve_layers(model, [layer])[layer]
        self.mask = torch.ones(channels)
        self.mask[torch.as_tensor(list(units), dtype=torch.long)] = 0.0
        self._handle = None

    def __enter__(self) -> "ZeroUnits":
        self._handle = self.module.register_forward_hook(lambda m, i, out: _scale_channels(out, self.mask))
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def ablation_curve(model: torch.nn.Module, dataset, layer: str, unit_order, ks: Iterable[int], *,
                   random_repeats: int = 1, seed: int = 0, device: str | torch.device = "cpu",
                   progress=None, **eval_kwargs) -> dict:
    """RMSE (metres) on `dataset` after zeroing the k most selective units of `layer`,
    against k random units, for each k in `ks`.

    unit_order: all K units of the layer, most selective first (e.g.
    `torch.argsort(selectivity, descending=True)`). Random curves average `random_repeats`
    seeded permutations. The model should already be on `device`; eval_kwargs go to
    `evaluation.evaluate_model` (input_size, eigen_crop, min_depth, max_depth, batch_size ...).
    Each distinct set of zeroed units is scored once (k = 0 and k = K are shared by both
    curves); progress: optional callable(done, total) after each scoring.
    Returns {"layer", "k": [...], "top_rmse": [...], "random_rmse": [...]}.
    """
    from ensemble_mde.evaluation import evaluate_model

    order = [int(u) for u in unit_order]
    channels = len(order)
    gen = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(channels, generator=gen).tolist() for _ in range(random_repeats)]
    ks = [int(k) for k in ks]
    unit_sets = {frozenset(units[:k]) for k in ks for units in (order, *perms)}
    scores: dict[frozenset, float] = {}
    for units in sorted(unit_sets, key=len):
        with ZeroUnits(model, layer, units, channels):
            acc = evaluate_model(model, dataset, device=torch.device(device), **eval_kwargs)
        scores[units] = float(acc.compute()["rmse"])
        if progress is not None:
            progress(len(scores), len(unit_sets))
    top = [scores[frozenset(order[:k])] for k in ks]
    rand = [sum(scores[frozenset(p[:k])] for p in perms) / len(perms) for k in ks]
    return {"layer": layer, "k": ks, "top_rmse": top, "random_rmse": rand}


def dissect_dataset(model: torch.nn.Module, dataset, layer_names: Iterable[str], *,
                    device: str | torch.device = "cpu", input_size: tuple[int, int] | None = None,
                    batch_size: int = 4, workers: int = 0, progress=None, **dissection_kwargs) -> SelectivityDissection:
    """Stream every sample of `dataset` through `model` and accumulate the dissection of
    `layer_names` (memory independent of the dataset size).

    RGB is resized to `input_size` as in evaluation (None: each frame at its own size, one
    at a time); GT stays at its own resolution. progress: optional callable(n_done).
    dissection_kwargs go to SelectivityDissection (alpha, beta, max_bins).
    """
    from ensemble_mde.evaluation import resize_rgb

    dissection = SelectivityDissection(**dissection_kwargs)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size if input_size else 1, shuffle=False,
                                         num_workers=workers, collate_fn=list)
    device = torch.device(device)
    model.eval()
    with LayerHooks(model, layer_names) as hooks, torch.inference_mode():
        for samples in loader:
            model(torch.cat([resize_rgb(s["rgb"][None], input_size) for s in samples]).to(device))
            for i, sample in enumerate(samples):
                dissection.update({name: f[i:i + 1] for name, f in hooks.outputs.items()},
                                  sample["depth"][None].to(device), hooks.outputs.extent)
            if progress is not None:
                progress(len(samples))
    return dissection


def layer_statistics(dissection: SelectivityDissection, threshold: float = 0.5) -> list[dict]:
    """One row per layer, in the dissection's order: units K, bins N_b, bins_seen (bins with
    GT pixels), mean / std (population) / median selectivity, and frac_above (share of units
    with s > threshold)."""
    present = dissection.present_bins()
    rows = []
    for name, s in dissection.result().items():
        rows.append({"layer": name, "units": int(s.numel()), "bins": int(present[name].numel()),
                     "bins_seen": int(present[name].sum()), "mean": float(s.mean()),
                     "std": float(s.std(unbiased=False)), "median": float(s.median()),
                     "frac_above": float((s > threshold).double().mean())})
    return rows


def _save_figure(fig, path: Path) -> None:
    """PNG written atomically (temp file, then rename)."""
    from ensemble_mde.io import atomic_write_with

    atomic_write_with(Path(path), lambda f: fig.savefig(f, format="png", dpi=100))


def save_selectivity_histograms(per_unit: Mapping[str, torch.Tensor], path: Path, title: str = "") -> None:
    """A grid of histograms of unit selectivity in [0, 1], one panel per layer."""
    from ensemble_mde.visualize import pyplot

    plt = pyplot()
    names = list(per_unit)
    cols = min(4, max(1, len(names)))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        s = per_unit[name].double().cpu().numpy()
        ax.hist(s, bins=20, range=(0.0, 1.0), color="tab:blue")
        ax.axvline(float(s.mean()), color="tab:red", linewidth=1)
        ax.set_title(f"{name} ({s.size} units, mean {s.mean():.2f})", fontsize=8)
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=7)
    fig.supxlabel("depth selectivity", fontsize=9)
    fig.supylabel("units", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def save_ablation_plot(curve: Mapping, path: Path, title: str = "") -> None:
    """RMSE (m) against the number of zeroed units: most selective first vs random."""
    from ensemble_mde.visualize import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    ax.plot(curve["k"], curve["top_rmse"], "o-", label="most selective units zeroed")
    ax.plot(curve["k"], curve["random_rmse"], "s--", label="random units zeroed")
    ax.set_xlabel(f"units zeroed in {curve['layer']}")
    ax.set_ylabel("RMSE (m)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
