"""Publication figures: one style, fixed sizes, PNG + PDF written atomically.

Figures are built on `matplotlib.figure.Figure` with an Agg canvas: no pyplot, no display and no
global figure registry, so the module works headless and figures are freed like any object.

Sizes are fixed in inches by formulas in each docstring (all multiples of 1/8 inch); with
`save_figure` at FIGURE_DPI = 200 the PNG is exactly (200 * width) x (200 * height) pixels.
Constrained layout arranges the contents inside that fixed canvas (never bbox_inches='tight',
which would change the size).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
from cycler import cycler
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from vididi.utils import VididiError, atomic_path

FIGURE_DPI = 200

# Okabe & Ito (2008) colour-blind-safe palette; yellow and black last (weak on white / reserved).
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
_MARKERS = ["o", "s", "^", "D", "v", "P"]  # disambiguate classes once colours repeat

STYLE: dict = {
    "font.family": "DejaVu Sans",  # ships with matplotlib: identical output on every machine
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "figure.titlesize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "lines.linewidth": 1.2,
    "axes.prop_cycle": cycler(color=PALETTE),
    "figure.dpi": FIGURE_DPI,
    "savefig.dpi": FIGURE_DPI,
    "savefig.bbox": "standard",
    "pdf.fonttype": 42,  # embed TrueType so text stays text in the PDF (journals ask for it)
    "ps.fonttype": 42,
}

CELL = 0.75  # inches per frame thumbnail
FRAMEWORK_LABELS = {"simclr": "SimCLR", "byol": "BYOL", "vicreg": "VICReg"}
VARIANT_LABELS = {"base": "baseline", "vididi": "ViDiDi"}
_VARIANT_ORDER = ["base", "vididi"]
_VARIANT_LINESTYLES = {"base": "--", "vididi": "-"}
_OTHER_LINESTYLES = [":", "-."]


@contextlib.contextmanager
def use_style() -> Iterator[None]:
    """Apply the project's figure style (STYLE) inside the block; restores the caller's rcParams."""
    with mpl.rc_context(STYLE):
        yield


def save_figure(fig: Figure, path_without_suffix: str | os.PathLike) -> list[Path]:
    """Write `fig` as <path>.png (FIGURE_DPI) and <path>.pdf, each atomically; return both paths.

    The PDF carries no creation date, so re-running a stage on the same inputs gives the same file.
    """
    base = Path(path_without_suffix)
    if base.suffix.lower() in (".png", ".pdf"):
        raise VididiError(f"save_figure takes a path without suffix, got {base}")
    metadata = {"png": {}, "pdf": {"CreationDate": None}}
    written = []
    with use_style():
        for fmt in ("png", "pdf"):
            out = base.with_name(f"{base.name}.{fmt}")
            # The temporary name has no suffix, so the format must be explicit.
            with atomic_path(out) as tmp:
                fig.savefig(tmp, format=fmt, dpi=FIGURE_DPI, metadata=metadata[fmt])
            written.append(out)
    return written


# ----------------------------------------------------------------------------------------------
# helpers


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _numpy(x, name: str) -> np.ndarray:
    """Array from numpy or torch input (torch is not imported here)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise VididiError(f"{name} contains NaN or infinite values")
    return arr


def _check_unit_range(x: np.ndarray, name: str) -> None:
    if x.min() < -1e-6 or x.max() > 1 + 1e-6:
        raise VididiError(f"{name} must hold values in [0, 1], got [{x.min():.3g}, {x.max():.3g}]")


def _frame_indices(n_frames: int, frames_to_show: int) -> np.ndarray:
    """Up to `frames_to_show` time steps spread evenly over the clip, first and last included."""
    if frames_to_show < 1:
        raise VididiError(f"frames_to_show must be >= 1, got {frames_to_show}")
    return np.unique(np.linspace(0, n_frames - 1, min(frames_to_show, n_frames)).round().astype(int))


def _greyscale(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of (N, 3, T, H, W) clips -> (N, T, H, W)."""
    return np.einsum("nc...,c->n...", rgb, np.array([0.299, 0.587, 0.114]))


def _bare(ax) -> None:
    """An image cell: no ticks, no frame."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _label(key: str, table: Mapping[str, str]) -> str:
    return table.get(key, key)


def _ordered_variants(variants: Iterable[str]) -> list[str]:
    present = set(variants)
    return [v for v in _VARIANT_ORDER if v in present] + sorted(present - set(_VARIANT_ORDER))


def _ordered_frameworks(frameworks: Iterable[str]) -> list[str]:
    present = list(dict.fromkeys(frameworks))
    known = [f for f in FRAMEWORK_LABELS if f in present]
    return known + [f for f in present if f not in FRAMEWORK_LABELS]


def _temporal_derivatives(clips: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orders 0, 1, 2 of (N, C, T+2, H, W) clips by forward differences (docs/method.md), each T frames."""
    t = clips.shape[2] - 2
    d0 = clips[:, :, :t]
    d1 = clips[:, :, 1 : t + 1] - clips[:, :, :t]
    d2 = clips[:, :, 2:] - 2 * clips[:, :, 1 : t + 1] + clips[:, :, :t]
    return d0, d1, d2


# ----------------------------------------------------------------------------------------------
# figures


def derivative_views_figure(
    clips, names: Sequence[str], frames_to_show: int = 8, vlim: float | None = None
) -> Figure:
    """Frames and their 1st / 2nd temporal derivatives for a few videos.

    `clips`: float (N, 3, T+2, H, W) in [0, 1]. Per video three rows -- frames (RGB), D1, D2 (channel
    mean, unscaled intensity differences) -- and one column per shown time step (up to
    `frames_to_show`, evenly spaced). Both derivative rows share one diverging map 'RdBu_r' with
    symmetric limits +-vlim (default: the 99.5th percentile of |D| over the shown derivative frames,
    so a few extreme pixels do not wash out the rest) and one colour bar.
    Size: width = 0.75 * columns + 1.0 in, height = 0.75 * 3N + 0.5 in.
    """
    x = _numpy(clips, "clips")
    if x.ndim != 5 or x.shape[1] != 3 or x.shape[2] < 3:
        raise VididiError(f"clips must have shape (N, 3, T+2, H, W) with T >= 1, got {x.shape}")
    if len(names) != x.shape[0]:
        raise VididiError(f"got {len(names)} names for {x.shape[0]} clips")
    _check_unit_range(x, "clips")
    d0, d1, d2 = _temporal_derivatives(x)
    idx = _frame_indices(d0.shape[2], frames_to_show)
    derivs = [d1.mean(axis=1)[:, idx], d2.mean(axis=1)[:, idx]]  # (N, cols, H, W) each
    if vlim is None:
        vlim = float(np.percentile(np.abs(np.stack(derivs)), 99.5))
    if vlim <= 0:
        vlim = 1e-3  # static clip: all derivatives are zero; any positive range shows that as white
    norm = Normalize(-vlim, vlim)

    n, cols = x.shape[0], len(idx)
    row_labels = ["frames", "1st derivative", "2nd derivative"]
    with use_style():
        fig = _new_figure(CELL * cols + 1.0, CELL * 3 * n + 0.5)
        grid = fig.add_gridspec(3 * n, cols + 1, width_ratios=[1] * cols + [0.08])
        image = None
        for v in range(n):
            for r in range(3):
                for c, t in enumerate(idx):
                    ax = fig.add_subplot(grid[3 * v + r, c])
                    _bare(ax)
                    if r == 0:
                        ax.imshow(np.clip(d0[v, :, t].transpose(1, 2, 0), 0, 1), interpolation="nearest")
                    else:
                        image = ax.imshow(derivs[r - 1][v, c], cmap="RdBu_r", norm=norm, interpolation="nearest")
                    if c == 0:
                        ax.set_ylabel(row_labels[r], fontsize=7)
                        if r == 0:
                            ax.set_title(names[v], loc="left", fontsize=8, fontweight="bold")
                    if v == n - 1 and r == 2:
                        ax.set_xlabel(f"t = {t}", fontsize=7)
        bar = fig.colorbar(image, cax=fig.add_subplot(grid[:, cols]))
        bar.set_label("temporal difference (channel mean)")
    return fig


def tsne_figure(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray, float | None]],
    class_names: Mapping[int, str] | Sequence[str],
    point_size: float = 10.0,
) -> Figure:
    """t-SNE panels side by side (e.g. baseline VICReg | ViDiDi-VIC), one colour per class in all panels.

    Each panel is (title, xy (N, 2), labels (N,), silhouette or None); the silhouette is printed
    under the title. `class_names[label]` names each class in the shared legend (right).
    Size: width = 3.0 * panels + 1.5 in, height = 3.25 in.
    """
    if not panels:
        raise VididiError("tsne_figure needs at least one panel")
    checked = []
    for title, xy, labels, score in panels:
        xy = _numpy(xy, f"xy of panel {title!r}")
        labels = np.asarray(labels)
        if xy.ndim != 2 or xy.shape[1] != 2 or labels.shape != (xy.shape[0],):
            raise VididiError(f"panel {title!r}: xy must be (N, 2) and labels (N,), got {xy.shape} and {labels.shape}")
        checked.append((title, xy, labels, score))
    classes = sorted({int(c) for _, _, labels, _ in checked for c in labels})
    missing = [c for c in classes if not _has_name(class_names, c)]
    if missing:
        raise VididiError(f"class_names has no entry for classes {missing}")
    style = {
        c: dict(color=PALETTE[i % len(PALETTE)], marker=_MARKERS[(i // len(PALETTE)) % len(_MARKERS)])
        for i, c in enumerate(classes)
    }

    with use_style():
        fig = _new_figure(3.0 * len(checked) + 1.5, 3.25)
        axes = fig.subplots(1, len(checked), squeeze=False)[0]
        for ax, (title, xy, labels, score) in zip(axes, checked):
            for c in classes:
                sel = labels == c
                ax.scatter(xy[sel, 0], xy[sel, 1], s=point_size, alpha=0.8, linewidths=0, **style[c])
            ax.set_title(title if score is None else f"{title}\nsilhouette = {score:.3f}")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel("t-SNE 1")
            ax.set_ylabel("t-SNE 2")
            ax.set_aspect("equal", adjustable="datalim")
        handles = [
            Line2D([], [], linestyle="none", markersize=5, label=str(class_names[c]), **style[c]) for c in classes
        ]
        fig.legend(handles=handles, loc="outside right center", title="class")
    return fig


def _has_name(class_names, c: int) -> bool:
    if isinstance(class_names, Mapping):
        return c in class_names
    return 0 <= c < len(class_names)


def attention_figure(
    frames,
    cams_by_model: Mapping[str, object],
    frames_to_show: int = 8,
    names: Sequence[str] | None = None,
    cmap: str = "inferno",
    alpha: float = 0.5,
) -> Figure:
    """Spatiotemporal attention: per video, rows = original frames | one overlay row per model.

    `frames`: (N, 3, T, H, W) in [0, 1]; `cams_by_model`: name -> (N, T, H, W) non-negative maps at
    the frames' resolution (grad_cam(..., upsample=True)), drawn in insertion order (put the
    baseline first). Each map is shown relative to its own maximum over the clip, in `cmap` with
    opacity `alpha` over the greyscale frame; one colour bar. Columns: up to `frames_to_show` evenly
    spaced time steps. `names` titles each video block.
    Size: width = 0.75 * columns + 1.0 in, height = 0.75 * N * (1 + models) + 0.5 in.
    """
    x = _numpy(frames, "frames")
    if x.ndim != 5 or x.shape[1] != 3:
        raise VididiError(f"frames must have shape (N, 3, T, H, W), got {x.shape}")
    _check_unit_range(x, "frames")
    if not cams_by_model:
        raise VididiError("cams_by_model is empty")
    n, _, t, h, w = x.shape
    cams = {}
    for model, cam in cams_by_model.items():
        cam = _numpy(cam, f"cams of {model!r}")
        if cam.shape != (n, t, h, w):
            raise VididiError(
                f"cams of {model!r} must have shape {(n, t, h, w)} (upsampled to the frames), got {cam.shape}"
            )
        if cam.min() < 0:
            raise VididiError(f"cams of {model!r} must be non-negative")
        peak = cam.reshape(n, -1).max(axis=1)
        cams[model] = cam / np.where(peak > 0, peak, 1.0)[:, None, None, None]
    if names is not None and len(names) != n:
        raise VididiError(f"got {len(names)} names for {n} videos")
    idx = _frame_indices(t, frames_to_show)
    grey = _greyscale(x)  # (N, T, H, W)
    rows_per_video = 1 + len(cams)
    cols = len(idx)

    with use_style():
        fig = _new_figure(CELL * cols + 1.0, CELL * n * rows_per_video + 0.5)
        grid = fig.add_gridspec(n * rows_per_video, cols + 1, width_ratios=[1] * cols + [0.08])
        overlay = None
        for v in range(n):
            for r, model in enumerate([None, *cams]):
                for c, ti in enumerate(idx):
                    ax = fig.add_subplot(grid[v * rows_per_video + r, c])
                    _bare(ax)
                    if model is None:
                        ax.imshow(np.clip(x[v, :, ti].transpose(1, 2, 0), 0, 1), interpolation="nearest")
                    else:
                        ax.imshow(grey[v, ti], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                        overlay = ax.imshow(
                            cams[model][v, ti], cmap=cmap, vmin=0, vmax=1, alpha=alpha, interpolation="bilinear"
                        )
                    if c == 0:
                        ax.set_ylabel("frames" if model is None else model, fontsize=7)
                        if r == 0 and names is not None:
                            ax.set_title(names[v], loc="left", fontsize=8, fontweight="bold")
                    if v == n - 1 and r == rows_per_video - 1:
                        ax.set_xlabel(f"t = {ti}", fontsize=7)
        bar = fig.colorbar(overlay, cax=fig.add_subplot(grid[:, cols]))
        bar.solids.set_alpha(1.0)  # the bar shows the map, not the blended overlay
        bar.set_label("relative attention")
    return fig


def curves_figure(
    logs: Mapping[tuple[str, str], Mapping[str, object]],
    terms: Sequence[str] | None = None,
    smooth_window: int = 1,
    log_y: bool = False,
    monitor: Mapping[tuple[str, str], tuple[object, object]] | None = None,
) -> Figure:
    """Training loss and its terms: one panel per framework, baseline dashed, ViDiDi solid.

    `logs`: (framework, variant) -> {"step": (S,), "loss": (S,), <term>: (S,), ...}; variant "base"
    or "vididi" (others get dotted / dash-dot lines). `terms` selects the curves (default: every key
    except "step"); each term has one colour in every panel ("loss" is black). `smooth_window` > 1
    plots the trailing moving average over that many logged points (the first window-1 are dropped).
    `monitor`: (framework, variant) -> (steps, R@1 as fractions) of the online kNN monitor, drawn
    unsmoothed with markers in a second row of panels (in %); absent or empty: one row.
    Size: width = 3.0 * frameworks + 1.5 in, height = 2.5 in per row.
    """
    if not logs:
        raise VididiError("curves_figure needs at least one run log")
    if smooth_window < 1:
        raise VididiError(f"smooth_window must be >= 1, got {smooth_window}")
    for key in logs:
        if not (isinstance(key, tuple) and len(key) == 2):
            raise VididiError(f"logs keys must be (framework, variant) tuples, got {key!r}")
    monitor = {key: value for key, value in (monitor or {}).items() if key in logs}
    all_terms = terms if terms is not None else sorted({k for log in logs.values() for k in log if k != "step"})
    all_terms = ["loss"] * ("loss" in all_terms) + [k for k in all_terms if k != "loss"]
    colours = dict(zip([k for k in all_terms if k != "loss"], PALETTE[:-1] * len(all_terms)))
    colours["loss"] = "#000000"
    frameworks = _ordered_frameworks(f for f, _ in logs)
    variants = _ordered_variants(v for _, v in logs)
    others = iter(_OTHER_LINESTYLES * len(variants))
    linestyles = {v: _VARIANT_LINESTYLES.get(v) or next(others) for v in variants}

    with use_style():
        rows = 2 if monitor else 1
        fig = _new_figure(3.0 * len(frameworks) + 1.5, 2.5 * rows)
        grid = fig.subplots(rows, len(frameworks), squeeze=False)
        axes = grid[0]
        drawn: set[str] = set()
        for ax, framework in zip(axes, frameworks):
            for variant in variants:
                log = logs.get((framework, variant))
                if log is None:
                    continue
                if "step" not in log:
                    raise VididiError(f"log of {framework}/{variant} has no 'step'")
                step = _numpy(log["step"], f"{framework}/{variant} step")
                for term in all_terms:
                    if term not in log:
                        continue  # e.g. BYOL has no VICReg terms; the legend lists what is drawn
                    values = _numpy(log[term], f"{framework}/{variant} {term}")
                    if values.shape != step.shape or step.ndim != 1:
                        raise VididiError(
                            f"{framework}/{variant}: '{term}' has shape {values.shape}, 'step' has {step.shape}"
                        )
                    xs, ys = _moving_average(step, values, smooth_window)
                    ax.plot(xs, ys, color=colours[term], linestyle=linestyles[variant])
                    drawn.add(term)
            ax.set_title(_label(framework, FRAMEWORK_LABELS))
            ax.set_xlabel("step")
            if log_y:
                ax.set_yscale("log")
        axes[0].set_ylabel("loss")
        if monitor:
            for ax, framework in zip(grid[1], frameworks):
                for variant in variants:
                    if (framework, variant) not in monitor:
                        continue
                    steps, r1 = (_numpy(v, f"{framework}/{variant} monitor") for v in monitor[framework, variant])
                    if steps.shape != r1.shape or steps.ndim != 1:
                        raise VididiError(f"{framework}/{variant}: monitor steps {steps.shape} and R@1 {r1.shape} differ")
                    ax.plot(steps, 100 * r1, color="0.2", linestyle=linestyles[variant], marker="o", markersize=3)
                ax.set_xlabel("step")
                ax.set_ylim(0, 100)
            grid[1][0].set_ylabel("kNN monitor R@1 (%)")
        handles = [Line2D([], [], color=colours[k], label=k) for k in all_terms if k in drawn]
        handles += [
            Line2D([], [], color="0.35", linestyle=linestyles[v], label=_label(v, VARIANT_LABELS)) for v in variants
        ]
        fig.legend(handles=handles, loc="outside right center")
    return fig


def _moving_average(step: np.ndarray, values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Trailing mean of `values` over `window` points, aligned with the last step of each window."""
    if window == 1 or len(values) < window:
        return step, values
    kernel = np.ones(window) / window
    return step[window - 1 :], np.convolve(values, kernel, mode="valid")


def bars_figure(
    rows: Iterable[Mapping[str, object]],
    metrics: Sequence[str],
    metric_labels: Mapping[str, str] | None = None,
    annotate: bool = True,
) -> Figure:
    """Grouped bars: baseline vs ViDiDi per framework, one panel per metric.

    `rows`: one mapping per run with "framework", "variant" and the metric values (e.g. the
    summary table). Runs with the same (framework, variant) -- several seeds -- are averaged; the
    error bar is their sample standard deviation (ddof=1), drawn only when there are >= 2 values.
    A group where no run has a metric shows "n/a"; a group where only some runs have it is an error
    (a failed seed must not silently shrink the average). `annotate` writes each mean above its bar.
    Size: width = metrics * max(2, 0.75 * frameworks + 0.75) in (room for the titles), height = 2.75 in.
    """
    rows = list(rows)
    if not rows:
        raise VididiError("bars_figure needs at least one row")
    if not metrics:
        raise VididiError("bars_figure needs at least one metric")
    for i, row in enumerate(rows):
        if "framework" not in row or "variant" not in row:
            raise VididiError(f"row {i} lacks 'framework' or 'variant': {dict(row)}")
    frameworks = _ordered_frameworks(str(r["framework"]) for r in rows)
    variants = _ordered_variants(str(r["variant"]) for r in rows)
    colours = {v: c for v, c in zip(variants, ["#999999", PALETTE[0], *PALETTE[1:]])}
    labels = metric_labels or {}
    width = 0.8 / len(variants)

    with use_style():
        fig = _new_figure(len(metrics) * max(2.0, 0.75 * len(frameworks) + 0.75), 2.75)
        axes = fig.subplots(1, len(metrics), squeeze=False)[0]
        for ax, metric in zip(axes, metrics):
            top = 0.0
            for j, variant in enumerate(variants):
                for i, framework in enumerate(frameworks):
                    group = [r for r in rows if str(r["framework"]) == framework and str(r["variant"]) == variant]
                    if not group:
                        continue
                    values = [_metric_value(r, metric) for r in group]
                    present = [v for v in values if v is not None]
                    xpos = i + (j - (len(variants) - 1) / 2) * width
                    if not present:
                        ax.text(xpos, 0, "n/a", ha="center", va="bottom", fontsize=6, rotation=90)
                        continue
                    if len(present) < len(values):
                        raise VididiError(
                            f"{framework}/{variant}: {len(values) - len(present)} of {len(values)} runs lack '{metric}'"
                        )
                    mean = float(np.mean(present))
                    std = float(np.std(present, ddof=1)) if len(present) > 1 else 0.0
                    ax.bar(
                        xpos, mean, width, color=colours[variant],
                        yerr=std if len(present) > 1 else None, capsize=2, error_kw={"linewidth": 0.8},
                    )
                    if annotate:
                        ax.text(xpos, mean + std, f" {mean:.3g}", ha="center", va="bottom", fontsize=6, rotation=90)
                    top = max(top, mean + std)
            ax.set_xticks(range(len(frameworks)), [_label(f, FRAMEWORK_LABELS) for f in frameworks])
            ax.set_xlim(-0.6, len(frameworks) - 0.4)
            ax.set_ylim(0, top * (1.3 if annotate else 1.1) if top > 0 else 1.0)
            ax.set_title(labels.get(metric, metric))
        handles = [Patch(color=colours[v], label=_label(v, VARIANT_LABELS)) for v in variants]
        fig.legend(handles=handles, loc="outside upper center", ncols=len(variants))
    return fig


def _metric_value(row: Mapping[str, object], metric: str) -> float | None:
    """The row's value of `metric`, or None when it was not measured (absent, None or NaN)."""
    value = row.get(metric)
    if value is None:
        return None
    value = float(value)
    return None if np.isnan(value) else value


def label_efficiency_figure(panels: Mapping[str, Mapping[str, Sequence[tuple[float, float, float]]]],
                            chance: float | None = None) -> Figure:  # fmt: skip
    """Top-1 accuracy (%) against the share of labelled training videos, one panel per protocol.

    `panels`: protocol title (e.g. "Linear probe") -> line label -> [(fraction, mean %, sd %), ...];
    every line keeps its colour and marker in every panel; the x axis is logarithmic (fractions such as
    0.01, 0.1, 1); error bars (the sd over seeds) are drawn where sd > 0. `chance` (%) adds a dotted
    horizontal line. Size: width = 2.75 * panels + 1.5 in, height = 2.5 in.
    """
    if not panels or not any(panels.values()):
        raise VididiError("label_efficiency_figure needs at least one line")
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    colours = {label: PALETTE[i % (len(PALETTE) - 1)] for i, label in enumerate(labels)}
    markers = {label: _MARKERS[i % len(_MARKERS)] for i, label in enumerate(labels)}
    with use_style():
        fig = _new_figure(2.75 * len(panels) + 1.5, 2.5)
        axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
        for ax, (title, lines) in zip(axes, panels.items()):
            fractions = sorted({f for points in lines.values() for f, _, _ in points})
            for label, points in lines.items():
                points = sorted(points)
                if any(not 0 < f <= 1 for f, _, _ in points):
                    raise VididiError(f"{title}/{label}: label fractions must be in (0, 1]")
                xs, ys, sds = (np.array(v, dtype=float) for v in zip(*points))
                ax.errorbar(xs, ys, yerr=np.where(sds > 0, sds, np.nan), color=colours[label], marker=markers[label],
                            markersize=3.5, capsize=2, elinewidth=0.8, label=label)  # fmt: skip
            if chance is not None:
                ax.axhline(chance, color="0.5", linestyle=":", linewidth=0.8)
            ax.set_xscale("log")
            ax.set_xticks(fractions, [f"{100 * f:g}%" for f in fractions])
            ax.minorticks_off()
            ax.set_xlabel("labelled training videos")
            ax.set_title(title)
        axes[0].set_ylabel("top-1 accuracy (%)")
        handles = [Line2D([], [], color=colours[k], marker=markers[k], markersize=3.5, label=k) for k in labels]
        if chance is not None:
            handles.append(Line2D([], [], color="0.5", linestyle=":", label="chance"))
        fig.legend(handles=handles, loc="outside right center")
    return fig
