"""Mergeable metric state: the sufficient statistics of the binned and proper-score metrics.

A :class:`CalibrationState` accumulates, batch by batch, everything that
:func:`~precal.metrics.expected_calibration_error`, :func:`~precal.metrics.maximum_calibration_error`,
:func:`~precal.metrics.classwise_calibration_error`, :func:`~precal.metrics.negative_log_likelihood`,
:func:`~precal.metrics.brier_score` and the accuracy need (per-bin counts and sums, loss
sums, the sample count). States of disjoint parts of the data add up to the state of their
union, so a metric over data spread across processes, GPUs or Dask chunks is one sum away:
:meth:`CalibrationState.merge`, ``+``, or a ``torch.distributed.all_reduce`` of
:meth:`CalibrationState.to_tensor`. The results equal the metric functions on the
concatenated data up to float64 summation order (tested to 1e-12).

The equal-mass bins of :func:`~precal.metrics.adaptive_calibration_error` depend on the
ranks of all confidences at once and have no such fixed-size summary; they are not here.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .._validation import check_number
from .calibration import (
    ReliabilityCurve,
    _bin_sums,
    _blocks,
    _brier_rows,
    _brier_scale,
    _check_n_bins,
    _check_scale_by_half,
    _classwise_of_sums,
    _classwise_sums,
    _nll_rows,
    _top_label,
    _uniform_bin_index,
    _validate,
)

__all__ = ["CalibrationState"]


class CalibrationState:
    """Sufficient statistics of the top-label binned metrics, the class-wise ECE, NLL and Brier score.

    Parameters
    ----------
    n_classes : int
        Number of probability columns (at least 2; binary 1-D probabilities count as 2).
    n_bins : int, default=15
        Number of equal-width bins on [0, 1], binned exactly as
        :func:`~precal.metrics.expected_calibration_error` bins.
    labels : array-like of shape (n_classes,), default=None
        The class of each column. Without it, labels must be integers in ``0..n_classes-1``
        (they index the columns), so that every update maps a label to the same column
        whatever labels that batch happens to hold.

    Attributes
    ----------
    n_samples : int
        Samples seen so far.
    counts, confidence_sums, accuracy_sums : ndarray of shape (n_bins,)
        Per bin: samples, sum of top-label confidence, number of correct top-label predictions.

    Notes
    -----
    The state is a flat float64 vector (:meth:`to_tensor`), laid out as
    ``[n, sum NLL, sum squared error, counts (B), confidence sums (B), accuracy sums (B),
    class-wise probability sums (K B), class-wise correctness sums (K B)]``. Every entry
    is a sum over samples, so the vector of a union of disjoint batches is the sum of their
    vectors. Counts are exact in float64 up to ``2**53`` samples.

    Examples
    --------
    >>> import numpy as np
    >>> from precal.metrics import CalibrationState, expected_calibration_error
    >>> y = np.array([0, 1, 1, 0]); p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    >>> a = CalibrationState(2).update(y[:2], p[:2])
    >>> b = CalibrationState(2).update(y[2:], p[2:])
    >>> bool(abs((a + b).ece() - expected_calibration_error(y, p)) < 1e-12)
    True
    """

    def __init__(self, n_classes: int, n_bins: int = 15, *, labels: Any = None) -> None:
        check_number(n_classes, "n_classes", numbers.Integral, min_val=2)
        _check_n_bins(n_bins)
        self.n_classes = int(n_classes)
        self.n_bins = int(n_bins)
        self.labels = None if labels is None else _check_labels(labels, self.n_classes)
        self._stats = np.zeros(self.size)

    # ------------------------------------------------------------ layout
    @property
    def size(self) -> int:
        """Length of the flat state vector, ``3 + 3 B + 2 K B``."""
        return 3 + 3 * self.n_bins + 2 * self.n_classes * self.n_bins

    def _part(self, i: int) -> np.ndarray:
        b, kb = self.n_bins, self.n_classes * self.n_bins
        starts = [3, 3 + b, 3 + 2 * b, 3 + 3 * b, 3 + 3 * b + kb, 3 + 3 * b + 2 * kb]
        return self._stats[starts[i] : starts[i + 1]]

    @property
    def n_samples(self) -> int:
        return int(self._stats[0])

    @property
    def counts(self) -> np.ndarray:
        return self._part(0).copy()

    @property
    def confidence_sums(self) -> np.ndarray:
        return self._part(1).copy()

    @property
    def accuracy_sums(self) -> np.ndarray:
        return self._part(2).copy()

    def __repr__(self) -> str:
        return f"CalibrationState(n_classes={self.n_classes}, n_bins={self.n_bins}, n_samples={self.n_samples})"

    # ------------------------------------------------------------ accumulation
    def update(self, y_true: Any, y_prob: Any) -> CalibrationState:
        """Add a batch of samples; returns ``self``.

        Parameters
        ----------
        y_true : array-like or torch.Tensor of shape (n_samples,)
            True labels.
        y_prob : array-like, numpy.memmap or torch.Tensor of shape (n_samples, n_classes) or (n_samples,)
            Probabilities, checked as the metric functions check them (finite, in [0, 1],
            rows summing to 1 within the dtype's tolerance). A tensor on any device is
            copied to the host; a 2-D ``numpy.memmap`` is read block by block.

        Raises
        ------
        ValueError
            As the metric functions, and when ``y_prob`` does not have ``n_classes``
            columns or (without ``labels``) a label is not a column index.
        """
        y_idx, prob = _validate(y_true, y_prob, self.labels)
        if prob.shape[1] != self.n_classes:
            raise ValueError(
                f"y_prob has {prob.shape[1]} columns (classes) but this CalibrationState has n_classes={self.n_classes}."
            )
        if self.labels is None:
            _check_column_labels(y_true, y_idx)
        self._stats += batch_statistics(y_idx, prob, self.n_bins)
        return self

    def merge(self, other: CalibrationState) -> CalibrationState:
        """Add ``other``'s statistics to this state (in place); returns ``self``.

        ``a + b`` does the same into a new state, leaving both unchanged.
        """
        self._check_compatible(other)
        self._stats += other._stats
        return self

    def __add__(self, other: Any) -> CalibrationState:
        if not isinstance(other, CalibrationState):
            return NotImplemented
        return self.copy().merge(other)

    def copy(self) -> CalibrationState:
        """An independent copy."""
        new = CalibrationState(self.n_classes, self.n_bins, labels=self.labels)
        new._stats[:] = self._stats
        return new

    def _check_compatible(self, other: Any) -> None:
        if not isinstance(other, CalibrationState):
            raise TypeError(f"Can only merge a CalibrationState, got {type(other).__name__}.")
        if (other.n_classes, other.n_bins) != (self.n_classes, self.n_bins):
            raise ValueError(
                f"Cannot merge a state of n_classes={other.n_classes}, n_bins={other.n_bins} into one of "
                f"n_classes={self.n_classes}, n_bins={self.n_bins}."
            )
        same = (self.labels is None and other.labels is None) or (
            self.labels is not None and other.labels is not None and np.array_equal(self.labels, other.labels)
        )
        if not same:
            raise ValueError("Cannot merge states whose labels (the class of each column) differ.")

    # ------------------------------------------------------------ as a vector
    def to_tensor(self, device: Any = None) -> Any:
        """The state as a flat float64 ``torch.Tensor`` (a copy) on ``device`` (default: CPU).

        Summing these vectors over processes (``torch.distributed.all_reduce``, default
        ``SUM``) and reading the sum back with :meth:`from_tensor` merges the states.
        """
        import torch

        return torch.tensor(self._stats, dtype=torch.float64, device=device)

    def to_numpy(self) -> np.ndarray:
        """The state as a flat float64 numpy vector (a copy)."""
        return self._stats.copy()

    @classmethod
    def from_tensor(cls, tensor: Any, n_classes: int, n_bins: int = 15, *, labels: Any = None) -> CalibrationState:
        """A state from the vector of :meth:`to_tensor` (torch tensor on any device, or array-like).

        Raises
        ------
        ValueError
            If the vector is not 1-D of length :attr:`size`, or holds non-finite or
            negative counts.
        """
        from .._validation import as_numpy

        state = cls(n_classes, n_bins, labels=labels)
        vec = np.asarray(as_numpy(tensor), dtype=np.float64)
        if vec.shape != (state.size,):
            raise ValueError(
                f"A CalibrationState of n_classes={state.n_classes}, n_bins={state.n_bins} is a vector of length "
                f"{state.size}, got shape {vec.shape}."
            )
        if not np.isfinite(vec).all():
            raise ValueError("The state vector holds NaN or inf.")
        state._stats[:] = vec
        if vec[0] < 0 or (state._part(0) < 0).any() or abs(state._part(0).sum() - vec[0]) > 0.5:
            raise ValueError("The state vector is not a CalibrationState: its bin counts do not add up to its n.")
        return state

    # ------------------------------------------------------------ metrics
    def _n(self) -> float:
        n = self._stats[0]
        if n <= 0:
            raise ValueError("This CalibrationState holds no samples; update it with data first.")
        return n

    def ece(self) -> float:
        """:func:`~precal.metrics.expected_calibration_error` of the data seen."""
        n = self._n()
        return float(np.abs(self._part(2) - self._part(1)).sum() / n)

    def mce(self) -> float:
        """:func:`~precal.metrics.maximum_calibration_error` of the data seen."""
        self._n()
        count, conf_sum, acc_sum = self._part(0), self._part(1), self._part(2)
        full = count > 0
        return float(np.max(np.abs(acc_sum[full] - conf_sum[full]) / count[full]))

    def classwise_ece(self) -> float:
        """:func:`~precal.metrics.classwise_calibration_error` of the data seen."""
        n = self._n()
        return _classwise_of_sums(self._part(3), self._part(4), n, self.n_classes, self.n_bins)

    def nll(self) -> float:
        """:func:`~precal.metrics.negative_log_likelihood` of the data seen."""
        return float(self._stats[1] / self._n())

    def brier(self, scale_by_half: bool | str = "auto") -> float:
        """:func:`~precal.metrics.brier_score` of the data seen (``scale_by_half`` as there)."""
        _check_scale_by_half(scale_by_half)
        return float(self._stats[2] / self._n()) * _brier_scale(self.n_classes, scale_by_half)

    def accuracy(self) -> float:
        """Share of samples whose top-label prediction (first column on ties) is the true class."""
        return float(self._part(2).sum() / self._n())

    def reliability_curve(self) -> ReliabilityCurve:
        """:func:`~precal.metrics.reliability_curve` (uniform bins) of the data seen."""
        self._n()
        count, conf_sum, acc_sum = self._part(0), self._part(1), self._part(2)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_conf = np.where(count > 0, conf_sum / count, np.nan)
            acc = np.where(count > 0, acc_sum / count, np.nan)
        edges = np.linspace(0.0, 1.0, self.n_bins + 1)
        return ReliabilityCurve(edges, count.astype(np.int64), mean_conf, acc)


def batch_statistics(y_idx: np.ndarray, prob: Any, n_bins: int) -> np.ndarray:
    """The flat state vector (layout of :class:`CalibrationState`) of one validated batch.

    ``y_idx``: column indices; ``prob``: validated ``(n, K)`` probabilities (array or
    ``FileRows``), read block by block with the metric functions' own per-block code.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    conf, correct = _top_label(y_idx, prob)
    count, conf_sum, acc_sum = _bin_sums(_uniform_bin_index(conf, edges), conf, correct, n_bins)
    nll = brier = 0.0
    for start, block in _blocks(prob):
        yb = y_idx[start : start + block.shape[0]]
        nll += float(np.sum(_nll_rows(yb, block)))
        brier += float(np.sum(_brier_rows(yb, block)))
    cw_conf, cw_acc = _classwise_sums(y_idx, prob, n_bins)
    return np.concatenate([[float(prob.shape[0]), nll, brier], count, conf_sum, acc_sum, cw_conf, cw_acc])


def _check_labels(labels: Any, n_classes: int) -> np.ndarray:
    classes = np.asarray(labels)
    if classes.ndim != 1 or len(np.unique(classes)) != len(classes):
        raise ValueError(f"labels must be a 1-D list of distinct class labels, got {classes!r}.")
    if len(classes) != n_classes:
        raise ValueError(f"labels has {len(classes)} entries but n_classes={n_classes}.")
    return classes


def _check_column_labels(y_true: Any, y_idx: np.ndarray) -> None:
    """Without ``labels``, each label must be its own column index (else batches could disagree)."""
    from .._validation import as_numpy

    y = np.asarray(as_numpy(y_true)).reshape(-1)
    if y.dtype.kind not in "biuf" or not np.array_equal(y, y_idx):
        raise ValueError(
            "Without labels=..., a CalibrationState takes integer labels in 0..n_classes-1 (the column of "
            "each class), so every batch maps a label to the same column; pass labels=... for other labels."
        )
