"""The ``precal evaluate`` report: cross-validated calibrators, metrics with bootstrap
intervals, precision diagnostics, and their text, Markdown, HTML and JSON renderings.

:func:`evaluate` does the work on arrays; :func:`format_text` is what the command prints,
:func:`write_report` writes ``report.html`` (self-contained: figures embedded as base64
PNG), ``report.md`` (same tables, figures as PNG files beside it), ``results.json``
(:meth:`Evaluation.to_dict`) and ``calibrators.json`` (each calibrator fitted on all rows,
as :meth:`~precal.calibration.BaseLogitCalibrator.to_dict` data).

Every calibrated row is scored **out of fold**: the rows are split into ``cv`` stratified
folds and each fold's probabilities come from a calibrator fitted on the other folds, so a
calibrator is never scored on the rows it was fitted on (as
``sklearn.model_selection.cross_val_predict``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__
from ._numerics import softmax

if TYPE_CHECKING:
    from .metrics.diagnostics import SwapAnalysis

# scikit-learn, torch, the calibrators, the emulator and the metrics are imported where they
# are used: the ``precal`` command imports this module to check its arguments, and must not
# pay seconds of imports for a usage error.

__all__ = [
    "CALIBRATORS",
    "METRICS",
    "AVAILABLE_METRICS",
    "INTERVALS",
    "Evaluation",
    "make_calibrator",
    "evaluate",
    "format_text",
    "to_markdown",
    "to_html",
    "render_figures",
    "require_matplotlib",
    "write_report",
    "jsonable",
    "printable",
    "markdown_text",
    "format_table",
    "auto_choice_text",
    "check_metrics",
]


def _ts(precision: str, random_state: int) -> Any:
    from .calibration import TemperatureScaling

    return TemperatureScaling()


def _pacs(precision: str, random_state: int) -> Any:
    from .calibration import PACSCalibrator

    return PACSCalibrator(precision=precision)


def _dirichlet(precision: str, random_state: int) -> Any:
    from .calibration import DirichletCalibrator

    return DirichletCalibrator()


def _fuzzy(precision: str, random_state: int) -> Any:
    from .calibration import FuzzyDirichletCalibrator

    return FuzzyDirichletCalibrator(random_state=random_state)


def _ets(precision: str, random_state: int) -> Any:
    from .calibration import EnsembleTemperatureScaling

    return EnsembleTemperatureScaling()


def _toplabel(precision: str, random_state: int) -> Any:
    from .calibration import TopLabelCalibrator

    return TopLabelCalibrator()


def _sms(precision: str, random_state: int) -> Any:
    from .calibration import StructuredMatrixScaling

    return StructuredMatrixScaling()


def _auto(precision: str, random_state: int) -> Any:
    from .calibration import AutoCalibrator

    return AutoCalibrator(random_state=random_state)


#: Short name -> (display name, builder(precision, random_state)).
CALIBRATORS: dict[str, tuple[str, Callable[[str, int], Any]]] = {
    "ts": ("temperature scaling", _ts),
    "pacs": ("PACS", _pacs),
    "dirichlet": ("Dirichlet", _dirichlet),
    "fuzzy": ("fuzzy Dirichlet", _fuzzy),
    "ets": ("ensemble temperature scaling", _ets),
    "toplabel": ("top-label", _toplabel),
    "sms": ("structured matrix scaling", _sms),
    "auto": ("auto", _auto),
}

#: Metrics of the default table, in column order.
METRICS = ("accuracy", "ece", "ace", "mce", "nll", "brier")
#: Every metric :func:`evaluate` can report (``metrics=``; ``precal evaluate --metrics``): the
#: default ones, the debiased ECE of Kumar, Liang & Ma (2019,
#: :func:`~precal.metrics.debiased_calibration_error`) and the smooth ECE of Błasiok & Nakkiran
#: (2023, :func:`~precal.metrics.smooth_calibration_error`).
AVAILABLE_METRICS = (*METRICS, "debiased_ece", "smooth_ece")
#: Shares, shown in percent.
_PERCENT = ("accuracy", "ece", "ace", "mce", "debiased_ece", "smooth_ece")
_HEADERS = {"accuracy": "accuracy %", "ece": "ECE %", "ace": "ACE %", "mce": "MCE %", "nll": "NLL", "brier": "Brier",
            "debiased_ece": "debiased ECE %", "smooth_ece": "smooth ECE %"}
_NAMES = {"accuracy": "accuracy", "ece": "ECE", "ace": "ACE", "mce": "MCE", "nll": "NLL", "brier": "Brier",
          "debiased_ece": "debiased ECE", "smooth_ece": "smooth ECE"}
#: Metrics that take ``n_bins`` (the debiased ECE: equal-mass bins, as Kumar et al.).
_BINNED = ("ece", "ace", "mce", "debiased_ece")

#: Bootstrap interval of each metric: ``"percentile"`` and ``"bias_corrected"`` are the
#: ``method`` of :func:`precal.metrics.calibration_error_ci`; ``"centred"`` is the percentile
#: interval moved so that its median is the estimate itself.
#:
#: * The binned plug-in metrics are biased upward, and so is the smooth ECE (a kernel average of
#:   residual noise: on 1 000 calibrated samples of 10 classes it read 0.023 and its percentile
#:   interval [0.027, 0.054] lay above it): bias-corrected estimate and interval.
#: * Accuracy, NLL and Brier are sample means (unbiased): the plain value and percentile interval.
#: * The debiased ECE is already (nearly) unbiased, but its resamples are not centred on it: a
#:   resample is drawn from the sample, whose own calibration error is the *plug-in* one, so the
#:   resamples' debiased ECE centres on the plug-in value and the percentile interval can lie
#:   above the estimate (2.03 [2.22, 10.14] on 600 samples). Correcting the estimate again would
#:   remove the bias twice (a calibrated model's estimate then falls below 0), so the estimate is
#:   kept and the interval is shifted by the bootstrap's bias ``b = median - estimate``:
#:   ``[q_lo - b, q_hi - b]``, which contains the estimate (its median).
INTERVALS = {"accuracy": "percentile", "ece": "bias_corrected", "ace": "bias_corrected", "mce": "bias_corrected",
             "nll": "percentile", "brier": "percentile", "debiased_ece": "centred",
             "smooth_ece": "bias_corrected"}


def _interval_note(metrics: Sequence[str]) -> str:
    """Which metrics show a bias-corrected estimate and interval, which the plain ones."""
    corrected = [_NAMES[m] for m in metrics if INTERVALS[m] == "bias_corrected"]
    plain = [_NAMES[m] for m in metrics if INTERVALS[m] == "percentile"]
    centred = [_NAMES[m] for m in metrics if INTERVALS[m] == "centred"]
    parts = []
    if corrected:
        binned = "smooth_ece" not in metrics
        parts.append(f"{_join(corrected)} show the bootstrap bias-corrected estimate and its interval (the "
                     f"{'binned ' if binned else ''}plug-in is biased upward)")
    if plain:
        parts.append(f"{_join(plain)} the plain value and percentile interval")
    if centred:
        parts.append(f"{_join(centred)} its own (already debiased) value and the percentile interval centred on it "
                     f"(the resamples centre on the plug-in value)")
    note = "; ".join(parts) + "."
    if "smooth_ece" in metrics:
        note += (" The smooth ECE's resamples use the kernel bandwidth chosen on all rows (shown in the JSON): "
                 "the automatic choice costs a root search per call.")
    return note[0].upper() + note[1:]


def _interval_kinds(metrics: Sequence[str], join: Callable[[list[str]], str], others: bool = False) -> str:
    """``"bias-corrected for ECE/ACE/MCE, percentile for accuracy/NLL/Brier"`` for the metrics shown
    (``others``: "percentile for the others" instead of naming them)."""
    kinds = (("bias_corrected", "bias-corrected"), ("centred", "centred on the estimate"),
             ("percentile", "percentile"))
    parts = []
    for key, word in kinds:
        names = [_NAMES[m] for m in metrics if INTERVALS[m] == key]
        if names:
            parts.append(f"{word} for " + ("the others" if others and key == "percentile" else join(names)))
    return ", ".join(parts)


def _percent_note(metrics: Sequence[str]) -> str:
    percent = [_NAMES[m] for m in metrics if m in _PERCENT]
    return f"{_join(percent)} in percent. " if percent else ""


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def check_metrics(metrics: Sequence[str]) -> list[str]:
    """The metric names in order, duplicates dropped; ValueError for an unknown name or none."""
    if isinstance(metrics, str):
        raise TypeError(f"metrics must be a sequence of names, got the string {metrics!r}; e.g. ['ece', 'nll'].")
    names = list(dict.fromkeys(metrics))
    unknown = [m for m in names if not isinstance(m, str) or m not in AVAILABLE_METRICS]
    if unknown:
        raise ValueError(f"Unknown metric(s) {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(AVAILABLE_METRICS)}.")
    if not names:
        raise ValueError(f"metrics must name at least one of {', '.join(AVAILABLE_METRICS)}.")
    return names
AS_GIVEN = "as given"


def make_calibrator(name: str, *, precision: str = "fp32", random_state: int = 0) -> Any:
    """A fresh calibrator by short name: ``ts``, ``pacs``, ``dirichlet``, ``fuzzy``, ``ets``
    (:class:`~precal.calibration.EnsembleTemperatureScaling`), ``toplabel``
    (:class:`~precal.calibration.TopLabelCalibrator`, defaults), ``sms``
    (:class:`~precal.calibration.StructuredMatrixScaling`) or ``auto``
    (:class:`~precal.calibration.AutoCalibrator`, default candidates).

    ``precision`` is PACS's format; ``random_state`` seeds FuzzyDirichlet's noise copies and
    AutoCalibrator's folds.

    Examples
    --------
    >>> from precal.report import make_calibrator
    >>> make_calibrator("pacs", precision="fp8_e4m3")
    PACSCalibrator(precision='fp8_e4m3')
    """
    if name not in CALIBRATORS:
        raise ValueError(f"Unknown calibrator {name!r}; choose from {', '.join(CALIBRATORS)}.")
    return CALIBRATORS[name][1](precision, random_state)


def _accuracy(y_true: Any, y_prob: Any, *, labels: Any = None) -> float:
    """Share of rows whose highest probability is the true class (a metric for :func:`calibration_error_ci`)."""
    return float(np.mean(np.asarray(y_prob).argmax(axis=1) == np.asarray(y_true)))


def _estimator(metric: str) -> Callable[..., float]:
    """The function behind a metric of :data:`AVAILABLE_METRICS`."""
    from . import metrics

    if metric == "accuracy":
        return _accuracy
    return {"ece": metrics.expected_calibration_error, "ace": metrics.adaptive_calibration_error,
            "mce": metrics.maximum_calibration_error, "nll": metrics.negative_log_likelihood,
            "brier": metrics.brier_score, "debiased_ece": metrics.debiased_calibration_error,
            "smooth_ece": metrics.smooth_calibration_error}[metric]


@dataclass
class Evaluation:
    """What :func:`evaluate` found; :meth:`to_dict` is its JSON form.

    Attributes
    ----------
    inputs : dict
        Where the data came from and its shape.
    settings : dict
        Calibrators (with parameters), precision, folds, seed, bootstrap settings.
    rows : list of dict
        One per method: ``method``, ``calibrator`` (short name or None), ``logits``
        (``"as given"`` or the precision) and ``metrics``: ``{name: {"estimate", "low",
        "high", "plugin"}}`` for each metric of ``settings["metrics"]``. ``plugin`` is the
        metric on all rows; ``estimate`` is the point estimate of the interval
        (:data:`INTERVALS`): bias-corrected for ECE, ACE, MCE and smooth ECE, the plug-in
        for the others, and the plug-in for all without bootstrap (``low``/``high`` None).
        The smooth ECE also has ``bandwidth``, the kernel width chosen on all rows.
    diagnostics : list of dict or None
        With a precision: ``{"name", "value", "description"}`` rows comparing the given
        logits with the rounded ones.
    confidence_shift : list of dict or None
        Per bin of reference confidence: ``bin``, ``count``, ``mean_shift``.
    fitted : dict
        Per calibrator: scalar fitted parameters per fold (``per_fold``) and fit time; for
        ``auto`` the candidate chosen in each fold (``chosen_per_fold``, and ``chosen_full``
        with ``fit_full``) instead of parameters.
    calibrators : dict
        Per calibrator: ``to_dict()`` of one fitted on all rows (only with ``fit_full``).
    """

    inputs: dict[str, Any]
    settings: dict[str, Any]
    rows: list[dict[str, Any]]
    diagnostics: list[dict[str, Any]] | None
    confidence_shift: list[dict[str, Any]] | None
    fitted: dict[str, Any]
    calibrators: dict[str, Any] = field(default_factory=dict)
    labels: np.ndarray | None = field(default=None, repr=False)
    probabilities: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    reference_probabilities: np.ndarray | None = field(default=None, repr=False)
    swaps: SwapAnalysis | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (no per-sample arrays); NaN becomes None."""
        return jsonable({
            "precal_version": __version__,
            "inputs": self.inputs,
            "settings": self.settings,
            "rows": self.rows,
            "diagnostics": self.diagnostics,
            "confidence_shift": self.confidence_shift,
            "fitted": self.fitted,
        })


def jsonable(value: Any) -> Any:
    """``value`` as strict JSON data: numpy scalars and arrays become Python numbers and
    lists, NaN and inf become None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def printable(text: Any) -> str:
    r"""``text`` with control characters (newlines, terminal escapes) shown as escapes, so a
    file name cannot break a line of a table or steer a terminal.

    Examples
    --------
    >>> from precal.report import printable
    >>> print(printable("a\nb\x1b[2J.npz"))
    a\nb\x1b[2J.npz
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


#: Characters of user text that Markdown (or HTML inside it) could read as markup.
_MD_SPECIAL = frozenset("\\`*_{}[]()<>#!|~&$")


def markdown_text(text: Any) -> str:
    r"""User text (file names, keys) as literal Markdown: control characters escaped, and every
    character that Markdown or HTML would read as markup backslash-escaped (CommonMark lets
    any ASCII punctuation be escaped), so a name like ``<img src=x onerror=...>.npz`` or
    ``[x](javascript:...)`` shows as written.

    Examples
    --------
    >>> from precal.report import markdown_text
    >>> print(markdown_text("<b>logits</b>_1.npz"))
    \<b\>logits\</b\>\_1.npz
    """
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in printable(text))


def _row_label(row: dict[str, Any]) -> str:
    return f"{row['method']} ({row['logits']})"


def _precision_diagnostics(
    y: np.ndarray, z_ref: np.ndarray, z_low: np.ndarray, precision: str, p_ref: np.ndarray, p_low: np.ndarray,
    n_bins: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], SwapAnalysis]:
    from .emulate import FloatFormat, format_info, softmax_in_format
    from .metrics import (
        confidence_shift,
        gradient_underflow,
        jensen_shannon,
        precision_split,
        saturation_report,
        swap_analysis,
        underflow_margin,
    )

    split = precision_split(p_ref, p_low)
    swaps = swap_analysis(y, p_ref, p_low)
    shift = confidence_shift(y, p_ref, p_low, n_bins=10)
    js = jensen_shannon(p_ref, p_low)
    rows = [
        ("share swapped", swaps.share_swapped, "share of samples whose predicted class changed"),
        ("right -> wrong", swaps.n_right_to_wrong, "swapped samples that were right and became wrong"),
        ("wrong -> right", swaps.n_wrong_to_right, "swapped samples that were wrong and became right"),
        ("error change", swaps.error_change, "error rate at the precision minus error rate as given"),
        ("swap ratio", swaps.ratio, "error change / share swapped, in [-1, 1]"),
        ("mean confidence gap", split.mean_gap, "mean of top confidence at the precision minus as given"),
        ("mean |confidence gap|", split.mean_abs_gap, "mean absolute top-confidence gap"),
        ("max |confidence gap|", split.max_abs_gap, "largest absolute top-confidence gap"),
        (f"share |gap| > {split.threshold:g}", split.share_above_threshold, "share of samples whose gap exceeds it"),
        ("mean true-class shift", shift.mean_shift, "mean change of the true-class probability"),
        ("mean JS divergence", float(js.mean()), "mean Jensen-Shannon divergence (nats) between the two"),
    ]
    fmt = format_info(precision)
    if isinstance(fmt, FloatFormat):
        import torch

        sm = softmax_in_format(torch.from_numpy(np.ascontiguousarray(z_ref, dtype=np.float32)), fmt.name)
        sat = saturation_report(sm)
        under = gradient_underflow(z_ref, y, fmt.name)
        rows += [
            (f"softmax in {fmt.name}: share at 1.0", sat.share_saturated,
             f"share of top confidences that are exactly 1.0 when the softmax itself runs in {fmt.name}"),
            (f"softmax in {fmt.name}: exact zeros", sat.n_exact_zeros, "probabilities that are exactly 0"),
            (f"softmax in {fmt.name}: zero gradient", under.share_true_class_zero,
             "share of samples whose true-class cross-entropy gradient is exactly 0"),
            (f"underflow margin ({fmt.name})", underflow_margin(fmt.name, z_ref.shape[1]),
             "logit margin beyond which the true-class probability rounds to 1.0"),
        ]
    diag = [{"name": n, "value": v, "description": d} for n, v, d in rows]
    last = len(shift.counts) - 1
    bins = [
        {"bin": f"[{lo:.1f}, {hi:.1f}{']' if b == last else ')'}", "count": int(c), "mean_shift": float(m)}
        for b, (lo, hi, c, m) in enumerate(zip(shift.bin_edges[:-1], shift.bin_edges[1:], shift.counts,
                                                shift.bin_mean_shift))
    ]
    return diag, bins, swaps


def _scalar_state(est: Any) -> dict[str, float]:
    """The fitted scalars of ``est``: its persisted state, plus PACS's ε (derived from its
    precision) and ETS's three weights (``weights_[0]`` TS, ``[1]`` raw softmax, ``[2]`` uniform)."""
    state = est.to_dict()["state"]
    out = {k: v for k, v in state.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    epsilon = getattr(est, "epsilon_", None)
    if isinstance(epsilon, float):
        out["epsilon_"] = epsilon
    if type(est).__name__ == "EnsembleTemperatureScaling":
        out.update({f"weights_[{i}]": float(w) for i, w in enumerate(est.weights_)})
    return out


def _fold_choice(est: Any) -> str | None:
    """The candidate an :class:`~precal.calibration.AutoCalibrator` chose, else None."""
    name = getattr(est, "best_name_", None)
    return name if isinstance(name, str) else None


def evaluate(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    calibrators: Sequence[str] = ("ts", "pacs", "dirichlet"),
    metrics: Sequence[str] = METRICS,
    precision: str | None = None,
    cv: int = 5,
    n_bootstrap: int = 200,
    confidence_level: float = 0.95,
    n_bins: int = 15,
    random_state: int = 0,
    fit_full: bool = False,
    progress: bool = False,
    inputs: dict[str, Any] | None = None,
) -> Evaluation:
    """Score the uncalibrated logits and each calibrator, out of fold, with bootstrap intervals.

    Parameters
    ----------
    logits : ndarray of shape (n_samples, n_classes)
    labels : ndarray of int, shape (n_samples,)
        Column index of each sample's class.
    calibrators : sequence of str
        Short names from :data:`CALIBRATORS`.
    metrics : sequence of str, default=METRICS
        Names from :data:`AVAILABLE_METRICS`, the table's columns in this order: the default
        accuracy, ECE, ACE, MCE, NLL and Brier, and ``"debiased_ece"`` (Kumar et al.'s
        debiased L2 calibration error, ``n_bins`` equal-mass bins) and ``"smooth_ece"``
        (Błasiok & Nakkiran's smooth ECE; its bootstrap resamples keep the bandwidth chosen
        on all rows, since choosing it costs a root search per call).
    precision : str, optional
        Evaluate as if the logits came out of a model deployed at this format: the logits
        are rounded with :func:`precal.emulate.round_logits` before calibration, PACS gets
        ``precision``, and the precision diagnostics compare the given logits with the
        rounded ones. Without it the logits are used as given and PACS's ``ε`` is fp32's.
    cv : int, default=5
        Stratified folds (shuffled, seeded by ``random_state``).
    n_bootstrap : int, default=200
        Bootstrap resamples per metric (:func:`precal.metrics.calibration_error_ci`; the
        same resamples for every row, so differences between rows are paired); 0 skips
        the intervals.
    confidence_level : float, default=0.95
    n_bins : int, default=15
        Bins of ECE, ACE, MCE and the debiased ECE.
    random_state : int, default=0
        Seeds the folds, FuzzyDirichlet and the bootstrap.
    fit_full : bool, default=False
        Also fit each calibrator on all rows and keep its ``to_dict()`` in
        :attr:`Evaluation.calibrators` (what to deploy).
    progress : bool, default=False
        tqdm bars on stderr (shown only when it is a terminal).
    inputs : dict, optional
        Description of the data's source, copied into the result.

    Returns
    -------
    Evaluation
    """
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold
    from tqdm.auto import tqdm

    from .emulate import format_info, round_logits

    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 2:
        raise ValueError(f"cv must be an integer >= 2, got {cv!r}.")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be an integer >= 0, got {n_bootstrap!r}.")
    if logits.shape[0] < cv:
        raise ValueError(f"cv={cv} folds need at least {cv} samples, got {logits.shape[0]}.")
    metric_names = check_metrics(metrics)
    names = list(dict.fromkeys(calibrators))
    for name in names:
        make_calibrator(name)  # unknown names fail before any work
    if precision is not None:
        precision = format_info(precision).name  # canonical name; unknown formats raise here
    pacs_precision = precision or "fp32"
    z_ref = logits.astype(np.float64)
    p_ref = softmax(z_ref)
    if precision is not None:
        z = round_logits(np.ascontiguousarray(logits, dtype=np.float32), precision).astype(np.float64)
        if not np.isfinite(z).all():
            raise ValueError(f"Rounding the logits to {precision} overflows: the largest |logit| is "
                             f"{np.abs(logits).max():g}, beyond the format's range.")
    else:
        z = z_ref
    p_uncal = softmax(z)
    tag = precision or AS_GIVEN

    rows: list[dict[str, Any]] = [{"method": "uncalibrated", "calibrator": None, "logits": AS_GIVEN}]
    probs: dict[str, np.ndarray] = {}
    probs[_row_label(rows[0])] = p_ref
    if precision is not None:
        rows.append({"method": "uncalibrated", "calibrator": None, "logits": precision})
        probs[_row_label(rows[-1])] = p_uncal

    folds = list(StratifiedKFold(n_splits=cv, shuffle=True, random_state=random_state).split(z, labels))
    fitted: dict[str, Any] = {}
    full: dict[str, Any] = {}
    total_fits = len(names) * (cv + int(fit_full))
    with tqdm(total=total_fits, desc="precal evaluate: fitting", unit="fit", leave=False,
              disable=None if progress else True) as bar:
        for name in names:
            display = CALIBRATORS[name][0]
            base = make_calibrator(name, precision=pacs_precision, random_state=random_state)
            out = np.empty_like(p_uncal)
            per_fold: dict[str, list[float]] = {}
            chosen: list[str] = []
            start = time.perf_counter()
            for train, test in folds:
                bar.set_postfix_str(name)
                est = clone(base).fit(z[train], labels[train])
                out[test] = est.predict_proba(z[test])
                choice = _fold_choice(est)
                if choice is not None:  # AutoCalibrator: which method each fold's fit picked
                    chosen.append(choice)
                else:
                    for key, value in _scalar_state(est).items():
                        per_fold.setdefault(key, []).append(value)
                bar.update(1)
            fitted[name] = {"params": base.get_params(), "per_fold": per_fold,
                            "fit_seconds": time.perf_counter() - start}
            if chosen:
                fitted[name]["chosen_per_fold"] = chosen
            if fit_full:
                full_est = clone(base).fit(z, labels)
                full[name] = full_est.to_dict()
                if _fold_choice(full_est) is not None:
                    fitted[name]["chosen_full"] = _fold_choice(full_est)
                bar.update(1)
            rows.append({"method": display, "calibrator": name, "logits": tag})
            probs[_row_label(rows[-1])] = out

    with tqdm(total=len(rows) * len(metric_names), desc="precal evaluate: bootstrap", unit="metric", leave=False,
              disable=None if progress else True) as bar:
        for row in rows:
            p = probs[_row_label(row)]
            scores: dict[str, Any] = {}
            for metric in metric_names:
                scores[metric] = _score(metric, labels, p, n_bins, n_bootstrap, confidence_level, random_state)
                bar.update(1)
            row["metrics"] = scores

    diagnostics = bins = swaps = None
    if precision is not None:
        diagnostics, bins, swaps = _precision_diagnostics(labels, z_ref, z, precision, p_ref, p_uncal, n_bins)

    counts = np.bincount(labels, minlength=logits.shape[1])
    info = dict(inputs or {})
    info.update({
        "n_samples": int(logits.shape[0]),
        "n_classes": int(logits.shape[1]),
        "logits_dtype": str(logits.dtype),
        "class_counts_min_max": [int(counts.min()), int(counts.max())],
        "max_abs_logit": float(np.abs(z_ref).max()),
        "mean_logit_norm": float(np.linalg.norm(z_ref, axis=1).mean()),
    })
    settings = {
        "calibrators": {name: CALIBRATORS[name][0] for name in names},
        "metrics": metric_names,
        "precision": precision,
        "pacs_precision": pacs_precision,
        "cv": int(cv),
        "seed": int(random_state),
        "n_bootstrap": int(n_bootstrap),
        "confidence_level": float(confidence_level),
        "intervals": {m: INTERVALS[m] for m in metric_names} if n_bootstrap else None,
        "n_bins": int(n_bins),
    }
    return Evaluation(info, settings, rows, diagnostics, bins, fitted, full, labels, probs, p_ref, swaps)


def _score(metric: str, labels: np.ndarray, p: np.ndarray, n_bins: int, n_bootstrap: int, confidence_level: float,
           random_state: int) -> dict[str, Any]:
    """``{"estimate", "low", "high", "plugin"}`` of one metric on one row's probabilities."""
    from .metrics import calibration_error_ci

    params: dict[str, Any] = {"n_bins": n_bins} if metric in _BINNED else {}
    extra: dict[str, Any] = {}
    if metric == "smooth_ece":
        # the bandwidth chosen on all rows, then kept: the resamples measure the estimate's noise at it
        _, bandwidth = _estimator(metric)(labels, p, return_bandwidth=True)
        params = extra = {"bandwidth": float(bandwidth)}
    if not n_bootstrap:
        value = _estimator(metric)(labels, p, **params)
        return {"estimate": value, "low": None, "high": None, "plugin": value, **extra}
    named = metric in ("ece", "ace", "mce", "nll", "brier")
    fn: Any = metric if named else _estimator(metric)
    centred = INTERVALS[metric] == "centred"
    ci = calibration_error_ci(labels, p, metric=fn, n_bootstrap=n_bootstrap, confidence_level=confidence_level,
                              random_state=random_state, method="bias_corrected" if centred else INTERVALS[metric],
                              **params)
    estimate, low, high = ci.estimate, ci.low, ci.high
    if centred:  # undo one of the two shifts by b: estimate θ̂, interval [q_lo - b, q_hi - b] (a callable: no clip)
        b = ci.plugin - ci.estimate
        estimate, low, high = ci.plugin, low + b, high + b
    if not named and metric != "accuracy":  # a calibration error lies in [0, 1]; clipping keeps the order
        estimate, low, high = (min(max(v, 0.0), 1.0) for v in (estimate, low, high))
    return {"estimate": estimate, "low": low, "high": high, "plugin": ci.plugin, **extra}


# ------------------------------------------------------------------------- rendering
def _cell(metric: str, values: dict[str, Any], digits: int | None = None) -> str:
    scale = 100.0 if metric in _PERCENT else 1.0
    d = digits if digits is not None else (2 if metric in _PERCENT else 4)
    text = f"{scale * values['estimate']:.{d}f}"
    if values.get("low") is not None:
        text += f" [{scale * values['low']:.{d}f}, {scale * values['high']:.{d}f}]"
    return text


def metric_table(ev: Evaluation) -> list[dict[str, str]]:
    """The metric table as rows of formatted strings (percent for accuracy/ECE/ACE/MCE)."""
    with_logits = ev.settings["precision"] is not None  # else every row is "as given"
    return [
        {"method": row["method"], **({"logits": row["logits"]} if with_logits else {}),
         **{_HEADERS[m]: _cell(m, row["metrics"][m]) for m in ev.settings.get("metrics", METRICS)}}
        for row in ev.rows
    ]


def diagnostics_table(ev: Evaluation) -> list[dict[str, Any]]:
    """The precision diagnostics as rows ``{"diagnostic", "value"}`` (empty without a precision)."""
    out = []
    for d in ev.diagnostics or []:
        v = d["value"]
        out.append({"diagnostic": d["name"], "value": v if isinstance(v, int) else f"{v:.4g}"})
    return out


def _summary_lines(ev: Evaluation, text: Callable[[Any], str] = printable) -> list[str]:
    """The summary; ``text`` renders user text (the file name and key) for the output format."""
    s, i = ev.settings, ev.inputs
    src = text(i.get("logits", "logits"))
    if i.get("logits_key"):
        src += f" [{text(i['logits_key'])}]"
    lines = [
        f"precal evaluate: {src}: {i['n_samples']} samples, {i['n_classes']} classes.",
        f"Calibrators scored out of fold ({s['cv']}-fold stratified cross-validation, seed {s['seed']}); "
        + (f"{100 * s['confidence_level']:g}% bootstrap intervals from {s['n_bootstrap']} resamples in brackets."
           if s["n_bootstrap"] else "no bootstrap intervals; plug-in estimates."),
    ]
    if s["n_bootstrap"]:
        lines.append(_interval_note(s.get("metrics", METRICS)))
    if s["precision"]:
        lines.append(f"Logits rounded to {s['precision']} (as a model deployed at {s['precision']} would emit them); "
                     f"PACS precision {s['pacs_precision']}.")
    return lines


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows of equal keys as an aligned plain-text table; numbers right-aligned, 4 decimals."""
    if not rows:
        return ""
    keys = list(rows[0])
    numeric = [all(isinstance(r[k], (int, float)) for r in rows) for k in keys]
    cells = [[f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(keys), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def format_text(ev: Evaluation) -> str:
    """What ``precal evaluate`` prints: a summary, the metric table and the diagnostics."""
    parts = [*_summary_lines(ev), "", format_table(metric_table(ev))]
    choices = [f"{CALIBRATORS[name][0]} chose {auto_choice_text(info['chosen_per_fold'])}."
               for name, info in ev.fitted.items() if info.get("chosen_per_fold")]
    if choices:  # an AutoCalibrator's pick in each fold (the report adds the pick on all rows)
        parts += ["", *choices]
    if ev.diagnostics:
        parts += ["", f"Precision diagnostics: logits as given vs rounded to {ev.settings['precision']}", "",
                  format_table(diagnostics_table(ev))]
    return "\n".join(parts)


def _md_cell(value: Any) -> str:
    return printable(value).replace("|", "\\|")


def _md_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(map(_md_cell, keys)) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(_md_cell(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def _describe(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return " .. ".join(_describe(v) for v in value)
    return str(value)


def _inputs_rows(ev: Evaluation, text: Callable[[Any], str] = printable) -> list[dict[str, Any]]:
    """Inputs and settings; ``text`` renders the inputs' entries (file names, keys: user text)."""
    rows = [{"item": text(str(k).replace("_", " ")), "value": text(_describe(v))}
            for k, v in ev.inputs.items() if v is not None]
    s = ev.settings
    rows += [
        {"item": "calibrators", "value": ", ".join(s["calibrators"].values())},
        {"item": "precision", "value": s["precision"] or "none (logits as given)"},
        {"item": "PACS precision", "value": s["pacs_precision"]},
        {"item": "cross-validation", "value": f"{s['cv']} stratified folds, seed {s['seed']}"},
        {"item": "bootstrap", "value": f"{s['n_bootstrap']} resamples, {100 * s['confidence_level']:g}% intervals: "
                                       + _interval_kinds(s.get("metrics", METRICS), "/".join)
                                       if s["n_bootstrap"] else "none"},
        {"item": "bins (ECE/ACE/MCE)", "value": s["n_bins"]},
    ]
    return rows


def _fitted_rows(ev: Evaluation) -> list[dict[str, Any]]:
    rows = []
    for name, info in ev.fitted.items():
        params = ", ".join(f"{k} {np.mean(v):.4g} (folds {min(v):.4g}..{max(v):.4g})"
                           for k, v in info["per_fold"].items() if k != "n_iter_")
        if info.get("chosen_per_fold"):
            params = "chose " + auto_choice_text(info["chosen_per_fold"], info.get("chosen_full"))
        rows.append({"calibrator": CALIBRATORS[name][0], "fitted parameters (mean over folds)": params or "-",
                     "fit time s (all folds)": f"{info['fit_seconds']:.2f}"})
    return rows


def auto_choice_text(chosen: Sequence[str], full: str | None = None) -> str:
    """What an AutoCalibrator picked: ``"temperature 3/5 folds, ets 2/5"`` (most often first),
    plus ``"; on all rows: ets"`` when the fit on all rows is known."""
    counts: dict[str, int] = {}
    for name in chosen:
        counts[name] = counts.get(name, 0) + 1
    order = sorted(counts, key=lambda n: (-counts[n], n))
    text = ", ".join(f"{n} {counts[n]}/{len(chosen)}" + (" folds" if i == 0 else "") for i, n in enumerate(order))
    return text + (f"; on all rows: {full}" if full else "")


_FIGURE_TITLES = {
    "reliability": "Reliability diagrams (out-of-fold probabilities)",
    "precision_split": "Precision split: the uncalibrated model as given and at the precision",
    "swaps": "Swapped predictions over confidence as given",
}


def require_matplotlib() -> None:
    """Raise ImportError with the install command when matplotlib (the ``plot`` extra) is
    missing; found without importing it."""
    import importlib.util

    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ImportError("the report needs matplotlib: pip install 'precal[plot]'")


def render_figures(ev: Evaluation) -> dict[str, bytes]:
    """PNG bytes of the report's figures: reliability diagrams, and with a precision the
    precision-split diagram and the swap histogram."""
    require_matplotlib()
    from matplotlib.figure import Figure

    from .plotting import precision_split_diagram, reliability_diagram, swap_histogram

    def png(fig: Any) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        return buf.getvalue()

    out: dict[str, bytes] = {}
    labels = list(ev.probabilities)
    ncols = min(3, len(labels))
    nrows = -(-len(labels) // ncols)
    fig = Figure(figsize=(4.0 * ncols, 4.0 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, label in zip(axes, labels):
        reliability_diagram(ev.labels, ev.probabilities[label], ax=ax, n_bins=ev.settings["n_bins"])
        ax.set_title(label, fontsize="medium")
    for ax in axes[len(labels):]:
        ax.set_visible(False)
    out["reliability"] = png(fig)
    if ev.settings["precision"] is not None and ev.swaps is not None:
        low = ev.probabilities[f"uncalibrated ({ev.settings['precision']})"]
        ax = precision_split_diagram(ev.labels, ev.reference_probabilities, low,
                                     names=(AS_GIVEN, ev.settings["precision"]), n_bins=ev.settings["n_bins"])
        out["precision_split"] = png(ax.figure)
        ax = swap_histogram(ev.swaps, label=ev.settings["precision"])
        out["swaps"] = png(ax.figure)
    return out


def to_markdown(ev: Evaluation, figure_files: dict[str, str] | None = None) -> str:
    """The report as Markdown; ``figure_files`` maps figure names to PNG paths to link."""
    parts = ["# precal evaluate report", "", *_summary_lines(ev, markdown_text), "", "## Inputs and settings", "",
             _md_table(_inputs_rows(ev, markdown_text)), "", "## Calibration metrics", "",
             "Calibrated rows are out-of-fold predictions; brackets hold the bootstrap interval.", "",
             _md_table(metric_table(ev))]
    if ev.diagnostics:
        parts += ["", f"## Precision diagnostics: as given vs {ev.settings['precision']}", "",
                  _md_table([{"diagnostic": d["name"], "value": r["value"], "meaning": d["description"]}
                             for d, r in zip(ev.diagnostics, diagnostics_table(ev))]),
                  "", "True-class confidence shift by bin of confidence as given:", "",
                  _md_table([{"bin": b["bin"], "samples": b["count"],
                              "mean shift": "-" if not math.isfinite(b["mean_shift"]) else f"{b['mean_shift']:.4g}"}
                             for b in ev.confidence_shift or []])]
    parts += ["", "## Fitted calibrators", "", _md_table(_fitted_rows(ev))]
    for name, path in (figure_files or {}).items():
        parts += ["", f"## {_FIGURE_TITLES.get(name, name)}", "", f"![{name}]({path})"]
    parts += ["", _footer()]
    return "\n".join(parts) + "\n"


def _footer() -> str:
    import torch

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"precal {__version__}, numpy {np.__version__}, torch {torch.__version__}, "
            f"Python {platform.python_version()}; written {stamp}.")


def _html_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    head = "".join(f"<th>{html.escape(printable(k))}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(printable(r[k]))}</td>" for k in keys) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;
font-variant-numeric:tabular-nums}th{background:#f3f3f3}img{max-width:100%}p.note{color:#555}"""


def to_html(ev: Evaluation, figures: dict[str, bytes] | None = None) -> str:
    """The report as one self-contained HTML page (figures as base64 PNG data URIs)."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        "<title>precal evaluate report</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>precal evaluate report</h1>", *(f"<p>{esc(line)}</p>" for line in _summary_lines(ev)),
        "<h2>Inputs and settings</h2>", _html_table(_inputs_rows(ev)),
        "<h2>Calibration metrics</h2>",
        "<p class='note'>Calibrated rows are out-of-fold predictions: each sample is scored by a calibrator "
        "fitted on the other folds. Brackets hold the bootstrap interval ("
        + esc(_interval_kinds(ev.settings.get("metrics", METRICS), _join, others=True)) + "); "
        + esc(_percent_note(ev.settings.get("metrics", METRICS)))
        + "Lower is better for every column but accuracy.</p>",
        _html_table(metric_table(ev)),
    ]
    if ev.diagnostics:
        parts += [
            f"<h2>Precision diagnostics: as given vs {esc(str(ev.settings['precision']))}</h2>",
            _html_table([{"diagnostic": d["name"], "value": r["value"], "meaning": d["description"]}
                         for d, r in zip(ev.diagnostics, diagnostics_table(ev))]),
            "<p>True-class confidence shift by bin of confidence as given:</p>",
            _html_table([{"bin": b["bin"], "samples": b["count"],
                          "mean shift": "-" if not math.isfinite(b["mean_shift"]) else f"{b['mean_shift']:.4g}"}
                         for b in ev.confidence_shift or []]),
        ]
    parts += ["<h2>Fitted calibrators</h2>", _html_table(_fitted_rows(ev))]
    for name, data in (figures or {}).items():
        encoded = base64.b64encode(data).decode("ascii")
        parts += [f"<h2>{esc(_FIGURE_TITLES.get(name, name))}</h2>",
                  f"<img alt='{esc(name)}' src='data:image/png;base64,{encoded}'>"]
    parts += [f"<p class='note'>{esc(_footer())}</p>", "</body></html>"]
    return "\n".join(parts) + "\n"


def write_report(ev: Evaluation, directory: str | Path) -> list[Path]:
    """Write ``report.html``, ``report.md``, ``results.json``, the figures as PNG and, when
    the evaluation kept them, ``calibrators.json``; returns the paths written.

    Each file is written atomically (:func:`precal.io.write_file_atomic`: a temporary file
    renamed onto the name), so a symbolic link planted at one of these names is replaced,
    never followed. Files of an earlier report in ``directory`` are replaced.
    """
    from .io import write_file_atomic

    figures = render_figures(ev)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    files = {name: f"{name}.png" for name in figures}
    contents: list[tuple[str, bytes]] = [(files[name], data) for name, data in figures.items()]
    contents += [("report.html", to_html(ev, figures).encode("utf-8")),
                 ("report.md", to_markdown(ev, files).encode("utf-8")),
                 ("results.json", (json.dumps(ev.to_dict(), indent=2) + "\n").encode("utf-8"))]
    if ev.calibrators:
        contents.append(("calibrators.json", (json.dumps(ev.calibrators, indent=2) + "\n").encode("utf-8")))
    return [write_file_atomic(out / name, data) for name, data in contents]
