"""Quick quality check of the issue-14 calibrators on the real logits of ``../shared/data/logits``.

For every file (test rows only where the file also has a validation split), ``--splits``
(default 5) stratified 50/50 calibration/test splits (split ``s`` uses
``random_state=s``); on each split every method is fitted on the calibration half and
scored on the test half: top-label ECE (15 equal-width bins), NLL and accuracy, reported
as mean ± standard deviation over the splits. Methods: the uncalibrated softmax,
temperature scaling (TS), ensemble TS (NLL fit), top-label isotonic and spline
recalibration with and without a TS base (default ``per_class="auto"``: a class needs
2 000 calibration samples for its own map, so only the two IMDB classes get one; isotonic
also with per-class maps from 500 samples), and ``AutoCalibrator`` (default candidates,
``metric="nll"``, and with ``metric="ece"``), with how often Auto chose each candidate.

This is a quick check, not a study: few splits, one run. Outputs:
``benchmarks/results/quick_quality.{md,json}`` (``--out DIR`` to write elsewhere; ``--quick``
runs one split of two files into a temporary directory). Threads are capped at one.

    python benchmarks/quick_quality.py
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import sklearn  # noqa: E402
import torch  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import precal  # noqa: E402
from precal.calibration import (  # noqa: E402
    AutoCalibrator,
    EnsembleTemperatureScaling,
    TemperatureScaling,
    TopLabelCalibrator,
)
from precal.metrics import expected_calibration_error, negative_log_likelihood  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "logits"
FILES = ["resnet50_cifar10", "resnet50-focal_cifar10", "wrn-16-4_cifar10", "densenet-bc-100_cifar100",
         "wrn-16-4_cifar100", "cv-textclf_imdb"]
METHODS = {
    "TS": TemperatureScaling,
    "ETS": EnsembleTemperatureScaling,
    "TL isotonic + TS": lambda: TopLabelCalibrator(method="isotonic"),
    "TL isotonic + TS, per class from 500": lambda: TopLabelCalibrator(method="isotonic", min_samples_per_class=500),
    "TL isotonic": lambda: TopLabelCalibrator(method="isotonic", base=None),
    "TL spline + TS": lambda: TopLabelCalibrator(method="spline"),
    "TL spline": lambda: TopLabelCalibrator(method="spline", base=None),
    "Auto (nll)": AutoCalibrator,
    "Auto (ece)": lambda: AutoCalibrator(metric="ece"),
}


def _softmax(z: np.ndarray) -> np.ndarray:
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def _load(name: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(DATA / f"{name}.npz")
    if "logits_test" in data.files:
        return data["logits_test"].astype(np.float64), data["labels_test"]
    return data["logits"].astype(np.float64), data["labels"]


def _scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"ece": 100 * expected_calibration_error(y, p), "nll": negative_log_likelihood(y, p),
            "acc": 100 * float(np.mean(p.argmax(axis=1) == y))}


def run(files: list[str], n_splits: int) -> dict:
    results: dict = {}
    for name in files:
        z, y = _load(name)
        per_method: dict[str, list[dict[str, float]]] = {m: [] for m in ["uncalibrated", *METHODS]}
        choices: dict[str, Counter] = {"Auto (nll)": Counter(), "Auto (ece)": Counter()}
        fit_seconds: dict[str, float] = {m: 0.0 for m in METHODS}
        for s in range(n_splits):
            cal, test = train_test_split(np.arange(len(y)), test_size=0.5, stratify=y, random_state=s)
            per_method["uncalibrated"].append(_scores(y[test], _softmax(z[test])))
            for method, make in METHODS.items():
                start = time.perf_counter()
                calibrator = make().fit(z[cal], y[cal])
                fit_seconds[method] += time.perf_counter() - start
                per_method[method].append(_scores(y[test], calibrator.predict_proba(z[test])))
                if method in choices:
                    choices[method][calibrator.best_name_] += 1
            print(f"{name}: split {s + 1}/{n_splits} done", flush=True)
        results[name] = {
            "n": int(len(y)), "n_classes": int(z.shape[1]),
            "methods": {m: {k: [row[k] for row in rows] for k in ("ece", "nll", "acc")} for m, rows in per_method.items()},
            "auto_choices": {m: dict(c) for m, c in choices.items()},
            "fit_seconds_total": fit_seconds,
        }
    return results


def to_markdown(results: dict, meta: dict) -> str:
    lines = [
        "# Quick quality check: issue-14 calibrators on ../shared/data/logits",
        "",
        f"{meta['n_splits']} stratified 50/50 calibration/test splits per file (split s: random_state=s; test rows "
        "only for the ResNet-50 files). Mean ± sd over splits of the test-half top-label ECE (%, 15 equal-width "
        "bins), NLL and accuracy (%). Written by `benchmarks/quick_quality.py`; a quick check, not a study.",
        "",
        f"precal {meta['precal']}, torch {meta['torch']}, scikit-learn {meta['sklearn']}, scipy {meta['scipy']}, "
        f"numpy {meta['numpy']}; {meta['machine']}; wall time {meta['wall_seconds']:.0f} s (one thread, on a "
        "machine shared with other jobs).",
        "",
    ]
    for name, res in results.items():
        lines += [f"## {name} (n = {res['n']}, K = {res['n_classes']})", "",
                  "| method | ECE % | NLL | accuracy % |", "|---|---|---|---|"]
        for method, values in res["methods"].items():
            cells = [f"{np.mean(values[k]):.{d}f} ± {np.std(values[k]):.{d}f}" for k, d in
                     (("ece", 2), ("nll", 4), ("acc", 2))]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        picks = "; ".join(f"{m}: " + ", ".join(f"{k} ×{v}" for k, v in sorted(c.items()))
                          for m, c in res["auto_choices"].items())
        lines += ["", f"Auto chose — {picks}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="1 split of 2 files, into a temporary directory")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found: this check needs ../shared/data/logits")
    files = FILES[-2:] if args.quick else FILES
    n_splits = 1 if args.quick else args.splits
    out = args.out or (Path(tempfile.mkdtemp()) if args.quick else ROOT / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = run(files, n_splits)
    meta = {"n_splits": n_splits, "precal": precal.__version__, "torch": torch.__version__,
            "sklearn": sklearn.__version__, "scipy": scipy.__version__, "numpy": np.__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "wall_seconds": time.perf_counter() - start}
    text = to_markdown(results, meta)
    print(text)
    (out / "quick_quality.md").write_text(text + "\n")
    (out / "quick_quality.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"wrote {out / 'quick_quality.md'} and .json")


if __name__ == "__main__":
    main()
