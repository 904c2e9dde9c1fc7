"""Reliability diagrams and precision diagnostics as matplotlib figures (the ``plot`` extra).

Every function draws into ``ax`` when given, otherwise into a new ``matplotlib.figure.Figure``
that is not registered with pyplot (so it works headless, on any backend, and leaks no
global state), and returns the ``Axes`` it drew into; ``path=`` also saves the figure
(PNG by extension). The numbers come from :mod:`precal.metrics`, so a plot shows exactly
what the metrics compute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .metrics import expected_calibration_error, reliability_curve, swap_analysis
from .metrics.diagnostics import SwapAnalysis

__all__ = ["reliability_diagram", "precision_split_diagram", "swap_histogram"]


def _new_axes(ax: Any, nrows: int = 1, height_ratios: tuple[int, ...] | None = None, figsize=(5.0, 5.0)):
    if ax is not None:
        return ax if nrows == 1 else None
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("precal.plotting needs matplotlib: pip install 'precal[plot]'") from exc
    fig = Figure(figsize=figsize, layout="constrained")
    if nrows == 1:
        return fig.subplots()
    return fig.subplots(nrows, 1, sharex=True, gridspec_kw={"height_ratios": height_ratios})


def _save(ax: Any, path: str | Path | None) -> None:
    if path is not None:
        ax.figure.savefig(path, dpi=120)


def _draw_reliability(ax: Any, y_true: Any, y_prob: Any, n_bins: int, label: str | None, color: Any) -> Any:
    curve = reliability_curve(y_true, y_prob, n_bins=n_bins)
    ece = expected_calibration_error(y_true, y_prob, n_bins=n_bins)
    centers = (curve.bin_edges[:-1] + curve.bin_edges[1:]) / 2
    width = np.diff(curve.bin_edges)
    full = curve.counts > 0
    text = f"{label + ': ' if label else ''}ECE {ece:.3f}"
    ax.bar(centers[full], curve.accuracy[full], width=width[full], alpha=0.35, edgecolor=color, color=color,
           label=text)
    ax.plot(curve.mean_confidence[full], curve.accuracy[full], "o-", color=color, ms=3)
    return curve


def _finish_reliability(ax: Any) -> None:
    ax.plot([0, 1], [0, 1], "--", color="0.4", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize="small")


def reliability_diagram(
    y_true: Any,
    y_prob: Any,
    *,
    n_bins: int = 15,
    ax: Any = None,
    label: str | None = None,
    show_histogram: bool = True,
    path: str | Path | None = None,
) -> Any:
    """Reliability diagram of the top-label confidence, with the confidence histogram below.

    Bars: accuracy per equal-width confidence bin (the bins of
    :func:`~precal.metrics.expected_calibration_error`, whose value is in the legend);
    dots: the bins' mean confidence against accuracy; dashed: the diagonal. Below, the
    number of samples per bin (log scale), which shows where the ECE weight lies.

    Parameters
    ----------
    y_true, y_prob, n_bins
        As in :func:`~precal.metrics.expected_calibration_error`.
    ax : matplotlib Axes, optional
        Draw the diagram into it (no histogram panel then).
    label : str, optional
        Legend label (e.g. the precision).
    show_histogram : bool, default=True
        Add the histogram panel (only when ``ax`` is None).
    path : str or Path, optional
        Also save the figure there.

    Returns
    -------
    matplotlib.axes.Axes
        The diagram's axes (``ax.figure`` is the figure).
    """
    if ax is None and show_histogram:
        ax, hist_ax = _new_axes(None, 2, (3, 1))
    else:
        ax, hist_ax = _new_axes(ax), None
    curve = _draw_reliability(ax, y_true, y_prob, n_bins, label, "C0")
    _finish_reliability(ax)
    if hist_ax is not None:
        hist_ax.bar((curve.bin_edges[:-1] + curve.bin_edges[1:]) / 2, curve.counts, width=np.diff(curve.bin_edges),
                    color="C0", alpha=0.6)
        hist_ax.set_yscale("log")
        hist_ax.set_ylabel("samples")
        hist_ax.set_xlabel("confidence")
    else:
        ax.set_xlabel("confidence")
    ax.set_title("Reliability diagram")
    _save(ax, path)
    return ax


def precision_split_diagram(
    y_true: Any,
    p_ref: Any,
    p_low: Any,
    *,
    names: tuple[str, str] = ("reference", "low precision"),
    n_bins: int = 15,
    ax: Any = None,
    path: str | Path | None = None,
) -> Any:
    """The "precision split": one model's reliability at two precisions, overlaid.

    Both reliability curves (with their ECE) on one set of axes, and below them the two
    confidence histograms, which show mass moving, e.g. towards exactly 1.0 in bfloat16.

    Returns
    -------
    matplotlib.axes.Axes
        The reliability axes.
    """
    if ax is None:
        ax, hist_ax = _new_axes(None, 2, (3, 1))
    else:
        hist_ax = None
    curves = [
        _draw_reliability(ax, y_true, p, n_bins, name, color) for p, name, color in zip((p_ref, p_low), names, ("C0", "C3"))
    ]
    _finish_reliability(ax)
    ax.set_title("Precision split: " + " vs ".join(names))
    if hist_ax is not None:
        for curve, name, color in zip(curves, names, ("C0", "C3")):
            hist_ax.step(curve.bin_edges, np.append(curve.counts, curve.counts[-1]), where="post", color=color,
                         label=name)
        hist_ax.set_yscale("log")
        hist_ax.set_ylabel("samples")
        hist_ax.set_xlabel("confidence")
    else:
        ax.set_xlabel("confidence")
    _save(ax, path)
    return ax


def swap_histogram(
    swaps: SwapAnalysis | tuple[Any, Any, Any],
    *,
    n_bins: int = 10,
    ax: Any = None,
    label: str | None = None,
    path: str | Path | None = None,
) -> Any:
    """Swapped predictions histogrammed over reference confidence (seed 001, Figure 2).

    Parameters
    ----------
    swaps : SwapAnalysis or (y_true, p_ref, p_low)
        A :func:`~precal.metrics.swap_analysis` result, or its inputs.
    n_bins : int, default=10
        Used when ``swaps`` are the inputs.
    ax, label, path
        As in :func:`reliability_diagram`. Call it again with the same ``ax`` to overlay
        several precisions.

    Returns
    -------
    matplotlib.axes.Axes
    """
    if not isinstance(swaps, SwapAnalysis):
        y_true, p_ref, p_low = swaps
        swaps = swap_analysis(y_true, p_ref, p_low, n_bins=n_bins)
    ax = _new_axes(ax, figsize=(5.0, 3.5))
    text = (f"{label + ': ' if label else ''}{100 * swaps.share_swapped:.1f}% swapped, "
            f"error {100 * swaps.error_change:+.2f} pts")
    ax.stairs(swaps.counts, swaps.bin_edges, label=text)
    ax.set_xlim(0, 1)
    ax.set_xlabel("reference confidence")
    ax.set_ylabel("swapped predictions")
    ax.legend(fontsize="small")
    _save(ax, path)
    return ax
