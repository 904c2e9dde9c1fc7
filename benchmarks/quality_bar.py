"""Issue 14's quality bar: every calibrator, and its peers, on real and emulated logits at every precision.

**Claim (issue 14).** On every file of ``../shared/data/logits`` and every emulated
precision of the seed studies, over >= 20 stratified 50/50 calibration/test splits, the
recommended calibrator (``AutoCalibrator()``, its defaults) has a top-label ECE within one
split-to-split standard deviation of the best of TS, ETS and top-label isotonic/spline (or
below it), an NLL at most TS's + 0.005 and the model's accuracy; and
``FuzzyDirichletCalibrator`` is never worse than ``DirichletCalibrator`` on NLL.

**Data.** The test rows of every file of ``../shared/data/logits`` at fp32. The two
ResNet-50 files hold the networks' true logits; they are also rounded in logit space to
bf16, fp8_e4m3, int8 and int4 by :func:`precal.emulate.round_logits`, as
``study_cross_precision.py`` does. The other four files hold log-probabilities (a row-wise
shift of unknown logits, see the data README), whose absolute size means nothing to a number
format, so they are measured at fp32 only. The seed studies' ResNet-20 on the CIFAR-10
evaluation images is emulated end to end at fp32, bf16, fp16, fp8_e4m3, w8a8, w4a8 and w4a4
(``benchmarks/seeds/data.py`` ``emulated_logits``, cached; a few seconds per precision).

**Methods.** precal's calibrators with their defaults (by name from the study harness),
scikit-learn's ``CalibratedClassifierCV`` on a ``FrozenEstimator`` whose decision function is
the logits (``method="sigmoid"``, ``"isotonic"``, ``"temperature"``), net:cal's
``TemperatureScaling``, ``IsotonicRegression``, ``HistogramBinning``, ``BBQ`` and ``ENIR``
on the softmax probabilities, and probmetrics' calibrators when the package is importable
in the separate virtual environment ``/work/venvs/qbar`` (``--probmetrics-python``).

**Cache.** Every (setting, split, method) result is stored in
``benchmarks/results/quality_bar_runs.json`` as soon as its setting is done; a rerun
computes only what is missing, and ``--methods NAME ...`` recomputes those methods only
(e.g. after a calibrator changed) and keeps the rest.

    python benchmarks/quality_bar.py                      # everything missing from the cache
    python benchmarks/quality_bar.py --methods fuzzy      # recompute one column
    python benchmarks/quality_bar.py --page-only          # rewrite the pages from the cache
    python benchmarks/quality_bar.py --quick              # smoke test into a temp dir
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness as h  # noqa: E402

RERUN = "python benchmarks/quality_bar.py"
DATA = h.REPO_ROOT.parent / "shared" / "data" / "logits"
FILES = ("resnet50_cifar10", "resnet50-focal_cifar10", "wrn-16-4_cifar10", "densenet-bc-100_cifar100",
         "wrn-16-4_cifar100", "cv-textclf_imdb")
#: Files that hold true logits (the data README): the only ones rounded to lower precisions.
TRUE_LOGITS = ("resnet50_cifar10", "resnet50-focal_cifar10")
ROUNDED = ("bf16", "fp8_e4m3", "int8", "int4")
SEED_MODEL, SEED_DATASET = "resnet20", "cifar10_lossless"
SEED_CONFIGS = ("fp32", "bf16", "fp16", "fp8_e4m3", "w8a8", "w4a8", "w4a4")
PM_SCRIPT = Path(__file__).with_name("_quality_bar_probmetrics.py")
DEFAULT_PM_PYTHON = Path("/work/venvs/qbar/bin/python")

#: precal's calibrators: label -> harness registry entry (None: the uncalibrated softmax).
PRECAL = {
    "uncalibrated": None,
    "TS": "ts",
    "ETS": "ets",
    "TL isotonic + TS": "top-label-isotonic",
    "TL isotonic": ("top-label-isotonic", {"base": None}),
    "TL spline + TS": "top-label-spline",
    "TL spline": ("top-label-spline", {"base": None}),
    "Dirichlet": "dirichlet",
    "PACS": "pacs",
    "Fuzzy": "fuzzy",
    "SMS": "sms",
    "Auto": "auto",
}
#: Peers measured in the same run: label -> (library, what).
PEERS = {
    "sklearn sigmoid": ("scikit-learn", "CalibratedClassifierCV(FrozenEstimator(logits), method='sigmoid')"),
    "sklearn isotonic": ("scikit-learn", "CalibratedClassifierCV(FrozenEstimator(logits), method='isotonic')"),
    "sklearn temperature": ("scikit-learn", "CalibratedClassifierCV(FrozenEstimator(logits), method='temperature')"),
    "netcal TS": ("netcal", "netcal.scaling.TemperatureScaling()"),
    "netcal isotonic": ("netcal", "netcal.binning.IsotonicRegression()"),
    "netcal histogram": ("netcal", "netcal.binning.HistogramBinning()"),
    "netcal BBQ": ("netcal", "netcal.binning.BBQ()"),
    "netcal ENIR": ("netcal", "netcal.binning.ENIR()"),
}
#: probmetrics calibrators (run in the separate venv): label -> get_calibrator name.
#: "logistic" is probmetrics' recommended default (structured matrix scaling, Berta et al. 2025, for
#: multiclass; quadratic scaling for binary); "ts-mix" its temperature scaling with Laplace smoothing.
PROBMETRICS = {"probmetrics TS-mix": "ts-mix", "probmetrics logistic": "logistic"}
#: Short names for --methods.
SHORT = {"uncalibrated": "uncal", "TS": "ts", "ETS": "ets", "TL isotonic + TS": "tl-iso-ts", "TL isotonic": "tl-iso",
         "TL spline + TS": "tl-spline-ts", "TL spline": "tl-spline", "Dirichlet": "dirichlet", "PACS": "pacs",
         "Fuzzy": "fuzzy", "SMS": "sms", "Auto": "auto", "sklearn sigmoid": "sk-sigmoid", "sklearn isotonic": "sk-isotonic",
         "sklearn temperature": "sk-temperature", "netcal TS": "nc-ts", "netcal isotonic": "nc-isotonic",
         "netcal histogram": "nc-histogram", "netcal BBQ": "nc-bbq", "netcal ENIR": "nc-enir",
         "probmetrics TS-mix": "pm-ts-mix", "probmetrics logistic": "pm-logistic"}
#: The bar's reference set for ECE: the best of these (mean over splits) sets the target.
ECE_REFERENCES = ("TS", "ETS", "TL isotonic + TS", "TL isotonic", "TL spline + TS", "TL spline")
NLL_MARGIN = 0.005
METRICS = ("accuracy", "ece", "dece", "nll")
#: net:cal's Bayesian binning methods fit one binary model per class and are slow: at most this many classes.
SLOW_PEERS, SLOW_PEERS_MAX_CLASSES = ("netcal BBQ", "netcal ENIR"), 10
QUICK = {"files": ("resnet50-focal_cifar10", "cv-textclf_imdb"), "rows": 2000, "precisions": ("int4",),
         "methods": ("uncalibrated", "TS", "TL isotonic + TS", "Auto", "sklearn temperature", "netcal TS")}


# --------------------------------------------------------------------------- peers
class _Logits:
    """A fitted "classifier" whose decision function is the logits themselves (scikit-learn API)."""

    _estimator_type = "classifier"

    def __init__(self, n_classes: int) -> None:
        self.classes_ = np.arange(n_classes)

    def fit(self, X: Any, y: Any) -> _Logits:
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        return X[:, 1] - X[:, 0] if X.shape[1] == 2 else X

    def predict_proba(self, X: Any) -> np.ndarray:
        return h.softmax64(X)

    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(X).argmax(axis=1)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"n_classes": len(self.classes_)}

    def set_params(self, **params: Any) -> _Logits:
        return self

    def __sklearn_tags__(self) -> Any:
        from sklearn.utils import ClassifierTags, Tags, TargetTags

        return Tags(estimator_type="classifier", target_tags=TargetTags(required=True),
                    classifier_tags=ClassifierTags())


class SklearnPeer:
    """``CalibratedClassifierCV(FrozenEstimator(logits model), method=method)`` on logits."""

    def __init__(self, method: str) -> None:
        self.method = method

    def fit(self, z: np.ndarray, y: np.ndarray) -> SklearnPeer:
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.frozen import FrozenEstimator

        self.model_ = CalibratedClassifierCV(FrozenEstimator(_Logits(z.shape[1])), method=self.method).fit(z, y)
        return self

    def predict_proba(self, z: np.ndarray) -> np.ndarray:
        return self.model_.predict_proba(z)


class NetcalPeer:
    """A net:cal calibrator fitted on the softmax probabilities (binary: the positive class's)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def _input(self, z: np.ndarray) -> np.ndarray:
        p = h.softmax64(z)
        return p[:, 1] if p.shape[1] == 2 else p

    def fit(self, z: np.ndarray, y: np.ndarray) -> NetcalPeer:
        import importlib

        self.model_ = getattr(importlib.import_module(f"netcal.{self.module}"), self.name)()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model_.fit(self._input(z), np.asarray(y))
        return self

    def predict_proba(self, z: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = np.asarray(self.model_.transform(self._input(z)), dtype=np.float64)
        if p.ndim == 1:
            p = np.stack([1.0 - p, p], axis=1)
        p = np.clip(p, 0.0, None)
        return p / p.sum(axis=1, keepdims=True)


def make_peer(label: str) -> Any:
    what = PEERS[label][1]
    if label.startswith("sklearn"):
        return SklearnPeer(label.split()[1])
    module = "scaling" if "TemperatureScaling" in what else "binning"
    return NetcalPeer(module, what.split(".")[2].split("(")[0])


# --------------------------------------------------------------------------- data
def load_settings(files: tuple[str, ...], precisions: tuple[str, ...], rows: int | None,
                  seed_configs: tuple[str, ...]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every (model, precision) setting: ``{"key", "file", "precision", "pacs_precision", "z", "y", "about"}``."""
    from precal.emulate import round_logits

    if not DATA.is_dir():
        raise h.DataError(f"{DATA} not found: this study needs ../shared/data/logits (see its README.md)")
    settings, notes = [], []
    for name in files:
        path = DATA / f"{name}.npz"
        try:
            d = np.load(path)
            z, y = (d["logits_test"], d["labels_test"]) if "logits_test" in d.files else (d["logits"], d["labels"])
        except (OSError, KeyError, ValueError) as exc:
            raise h.DataError(f"{path} is unreadable ({exc}); see {DATA / 'README.md'}") from exc
        if rows is not None:
            keep = np.sort(np.random.default_rng(0).permutation(len(y))[:rows])
            z, y = z[keep], y[keep]
        z = np.asarray(z, dtype=np.float32)
        for p in ("fp32", *(precisions if name in TRUE_LOGITS else ())):
            zp = z if p == "fp32" else np.asarray(round_logits(z, p), dtype=np.float32)
            settings.append({"key": f"{name}|{p}", "file": name, "precision": p, "pacs_precision": p,
                             "z": zp, "y": np.asarray(y), "kind": "real" if p == "fp32" else "rounded"})
    if seed_configs:
        try:
            from benchmarks.seeds import data as sd
            from precal.demo import config_precision

            ds = sd.load_dataset(SEED_DATASET, limit=rows)
            for c in seed_configs:
                t0 = time.perf_counter()
                z = sd.emulated_logits(SEED_MODEL, ds, c, overrides=sd.ends_at_8bit(SEED_MODEL, c))
                print(f"  {SEED_MODEL} {c}: logits in {time.perf_counter() - t0:.1f} s", flush=True)
                settings.append({"key": f"{SEED_MODEL}|{c}", "file": f"{SEED_MODEL} ({ds.name})", "precision": c,
                                 "pacs_precision": "fp32" if c == "fp32" else config_precision(c),
                                 "z": np.asarray(z, dtype=np.float32), "y": np.asarray(ds.labels), "kind": "seed"})
        except Exception as exc:  # noqa: BLE001 - any failure of the seed data leaves part C out
            notes.append(f"The seed ResNet-20 settings were left out: {type(exc).__name__}: {exc}.")
    return settings, notes


# --------------------------------------------------------------------------- one split
def _factory(label: str, pacs_precision: str) -> Any:
    if label in PEERS:
        return lambda: make_peer(label)
    table, _ = h.method_table({label: PRECAL[label]}, precision=pacs_precision, random_state=0)
    return table.get(label)


def score(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """Test-half scores: accuracy, ECE (15 equal-width bins), debiased L2 ECE (15 equal-mass bins), NLL."""
    from precal.metrics import debiased_calibration_error

    prob = np.asarray(prob, dtype=np.float64)
    s = h.scores(y, prob, ("accuracy", "ece", "nll"))
    s["dece"] = debiased_calibration_error(y, prob, n_bins=h.N_BINS)
    return {k: s[k] for k in METRICS}


def one_split(item: tuple[Any, ...]) -> dict[str, dict[str, Any]]:
    """Every requested method on one split of one setting (module level: runs in worker processes)."""
    z, y, cal, test, labels, pacs_precision = item
    z = np.asarray(z, dtype=np.float64)
    out: dict[str, dict[str, Any]] = {}
    for label in labels:
        if label == "uncalibrated":
            out[label] = score(y[test], h.softmax64(z[test])) | {"fit_s": 0.0}
            continue
        factory = _factory(label, pacs_precision)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t0 = time.perf_counter()
                est = factory().fit(z[cal], y[cal])
                fit_s = time.perf_counter() - t0
                prob = est.predict_proba(z[test])
            row = score(y[test], prob) | {"fit_s": fit_s}  # raises on NaN probabilities
        except Exception as exc:  # noqa: BLE001 - a failing peer is reported, not fatal
            out[label] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            continue
        if not np.isfinite([row[m] for m in METRICS]).all():
            row["nonfinite"] = True
        if hasattr(est, "best_name_"):
            row["choice"] = est.best_name_
        texts = sorted({h.warning_text(label, w) for w in caught})
        if texts:
            row["warnings"] = texts
        out[label] = row
    return out


def probmetrics_jobs(python: Path, jobs: list[tuple[np.ndarray, np.ndarray, list]], labels: list[str]) -> list[list[dict]]:
    """probmetrics' calibrators on ``jobs`` = ``[(z, y, splits)]``, in one process of the separate venv.

    Returns, per job and split, ``{label: row}`` (scores, or ``{"error"}``)."""
    names = [PROBMETRICS[label] for label in labels]
    with tempfile.TemporaryDirectory(prefix="qbar-pm-") as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        arrays: dict[str, np.ndarray] = {}
        for j, (z, y, splits) in enumerate(jobs):
            arrays |= {f"z{j}": z, f"y{j}": y}
            arrays |= {f"cal{j}_{s}": c for s, (c, _) in enumerate(splits)}
            arrays |= {f"test{j}_{s}": t for s, (_, t) in enumerate(splits)}
        np.savez(src, **arrays)
        proc = subprocess.run([str(python), str(PM_SCRIPT), str(src), str(dst), json.dumps(names)],
                              capture_output=True, text=True, env=os.environ | {"PYTHONPATH": ""})
        if proc.returncode != 0:
            err = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
            return [[{label: {"error": err} for label in labels} for _ in splits] for _, _, splits in jobs]
        res = np.load(dst)
        meta = json.loads(str(res["meta"]))
        out = []
        for j, (_, y, splits) in enumerate(jobs):
            rows = []
            for s, (_, test) in enumerate(splits):
                row = {}
                for label, name in zip(labels, names):
                    key = f"{name}|{j}|{s}"
                    if key in meta["errors"]:
                        row[label] = {"error": meta["errors"][key]}
                    else:
                        row[label] = score(y[test], res[f"p_{name}_{j}_{s}"]) | {"fit_s": meta["fit_s"][key]}
                rows.append(row)
            out.append(rows)
        return out


def probmetrics_status(python: Path) -> str | None:
    """None when probmetrics imports in ``python``, else the reason it cannot be used."""
    if not python.exists():
        return f"{python} does not exist"
    proc = subprocess.run([str(python), "-c", "import torch, probmetrics; print(torch.__version__)"],
                          capture_output=True, text=True, env=os.environ | {"PYTHONPATH": ""})
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or ["import failed"])[-1]
    return None


# --------------------------------------------------------------------------- summaries and verdict
def summarize(cache: dict[str, Any], setting_key: str, labels: list[str], n_splits: int) -> dict[str, Any]:
    """Per method: ``n`` splits measured, ``mean_sd`` of each metric and of the fit time, Auto's choices."""
    out: dict[str, Any] = {}
    for label in labels:
        rows = [cache.get(f"{setting_key}|{s}|{label}") for s in range(n_splits)]
        ok = [r for r in rows if r is not None and "error" not in r]
        errors = sorted({r["error"] for r in rows if r is not None and "error" in r})
        if not ok:
            if errors:
                out[label] = {"n": 0, "error": errors[0]}
            continue
        entry: dict[str, Any] = {"n": len(ok), "splits": [s for s, r in enumerate(rows) if r in ok]}
        for m in (*METRICS, "fit_s"):
            entry[m] = h.mean_sd([r[m] for r in ok])
        if errors:
            entry["errors"] = errors
        choices = [r["choice"] for r in ok if "choice" in r]
        if choices:
            entry["choices"] = {c: choices.count(c) for c in sorted(set(choices))}
        warns = sorted({w for r in ok for w in r.get("warnings", [])})
        if warns:
            entry["warnings"] = warns
        out[label] = entry
    return out


def bar(summary: dict[str, Any], cache: dict[str, Any], setting_key: str) -> dict[str, Any]:
    """Issue 14's bar on one setting: Auto's ECE, NLL and accuracy; Fuzzy's NLL against Dirichlet's."""
    res: dict[str, Any] = {}
    refs = {k: summary[k] for k in ECE_REFERENCES if k in summary and "ece" in summary[k]}
    auto, ts, unc = summary.get("Auto"), summary.get("TS"), summary.get("uncalibrated")
    if auto and "ece" in auto and refs and ts and unc:
        best = min(refs, key=lambda k: refs[k]["ece"]["mean"])
        target = refs[best]["ece"]["mean"] + refs[best]["ece"]["sd"]
        res["best_reference"] = best
        res["ece_target"] = target
        res["ece_ok"] = auto["ece"]["mean"] <= target
        res["nll_ok"] = auto["nll"]["mean"] <= ts["nll"]["mean"] + NLL_MARGIN
        common = sorted(set(auto["splits"]) & set(unc["splits"]))  # paired per split, from the raw values
        res["accuracy_change"] = float(np.mean([cache[f"{setting_key}|{s}|Auto"]["accuracy"]
                                                - cache[f"{setting_key}|{s}|uncalibrated"]["accuracy"]
                                                for s in common]))
        res["accuracy_ok"] = res["accuracy_change"] >= -1e-12
        res["auto_ok"] = bool(res["ece_ok"] and res["nll_ok"] and res["accuracy_ok"])
    fz, dr = summary.get("Fuzzy"), summary.get("Dirichlet")
    if fz and dr and "nll" in fz and "nll" in dr:
        common = sorted(set(fz["splits"]) & set(dr["splits"]))
        a = [cache[f"{setting_key}|{s}|Fuzzy"]["nll"] for s in common]
        b = [cache[f"{setting_key}|{s}|Dirichlet"]["nll"] for s in common]
        d = h.paired(a, b)
        res["fuzzy_minus_dirichlet_nll"] = d
        res["fuzzy_ok"] = d["mean"] <= 0.0
    return res


# --------------------------------------------------------------------------- pages
def _name(key: str) -> str:
    """A setting's key ``file|precision`` as a page shows it (``|`` would split a table cell)."""
    return key.replace("|", " @ ")


def _cell(stat: dict[str, float] | None, scale: float, nd: int) -> str:
    return h.fmt_ms(stat, scale, nd)


def setting_table(summary: dict[str, Any], labels: list[str], n_splits: int) -> list[str]:
    lines = ["| method | n | ECE % | debiased L2 ECE % | NLL | accuracy % | fit ms |", "|---|---|---|---|---|---|---|"]
    for label in labels:
        e = summary.get(label)
        if e is None:
            continue
        if "ece" not in e:
            lines.append(f"| {label} | 0 | failed: {e.get('error', '?')} | | | | |")
            continue
        n = f"{e['n']}" + ("" if e["n"] == n_splits else f" of {n_splits}")
        lines.append(f"| {label} | {n} | {_cell(e['ece'], 100, 2)} | {_cell(e['dece'], 100, 2)} | "
                     f"{_cell(e['nll'], 1, 4)} | {_cell(e['accuracy'], 100, 2)} | {e['fit_s']['mean'] * 1e3:.0f} |")
    return lines


def _yes(flag: Any) -> str:
    return "–" if flag is None else ("yes" if flag else "**no**")


def verdict_table(report: dict[str, Any]) -> list[str]:
    lines = ["| setting | best of TS/ETS/TL (ECE %) | target (best + sd) | Auto ECE % | Auto picks | "
             "Auto NLL − TS NLL | Δ accuracy (points) | Auto meets bar | Fuzzy − Dirichlet NLL | Fuzzy ok |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, st in report["settings"].items():
        b, s = st["bar"], st["summary"]
        if "best_reference" in b:
            best = s[b["best_reference"]]["ece"]["mean"] * 100
            picks = ", ".join(f"{k} ×{v}" for k, v in s["Auto"].get("choices", {}).items())
            dn = s["Auto"]["nll"]["mean"] - s["TS"]["nll"]["mean"]
            auto = (f"{b['best_reference']} {best:.2f} | {100 * b['ece_target']:.2f} | "
                    f"{100 * s['Auto']['ece']['mean']:.2f} | {picks} | {dn:+.4f} | "
                    f"{100 * b['accuracy_change']:+.2f} | {_yes(b['auto_ok'])}")
        else:
            auto = "– | – | – | – | – | – | –"
        fz = b.get("fuzzy_minus_dirichlet_nll")
        fuzzy = f"{fz['mean']:+.4f} ± {fz['sd']:.4f} (n={fz['n']}) | {_yes(b['fuzzy_ok'])}" if fz else "– | –"
        lines.append(f"| {_name(key)} | {auto} | {fuzzy} |")
    return lines


def overview_table(report: dict[str, Any], metric: str, scale: float, nd: int, labels: list[str],
                   bold: bool = True) -> list[str]:
    head = [lab for lab in labels if any(lab in st["summary"] and metric in st["summary"][lab]
                                          for st in report["settings"].values())]
    lines = ["| setting | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for key, st in report["settings"].items():
        s = st["summary"]
        vals = {lab: s[lab][metric]["mean"] for lab in head if lab in s and metric in s[lab]}
        best = min((v for lab, v in vals.items() if lab != "uncalibrated"), default=None) if bold else None
        cells = []
        for lab in head:
            if lab not in vals:
                cells.append("–")
                continue
            text = f"{vals[lab] * scale:.{nd}f}"
            cells.append(f"**{text}**" if best is not None and lab != "uncalibrated" and
                         f"{vals[lab] * scale:.{nd}f}" == f"{best * scale:.{nd}f}" else text)
        lines.append(f"| {_name(key)} | " + " | ".join(cells) + " |")
    return lines


def fit_time_table(report: dict[str, Any], labels: list[str]) -> list[str]:
    """Median over settings of each method's mean fit time, and its ratio to TS's (same run)."""
    rows = []
    for lab in labels:
        if lab == "uncalibrated":
            continue
        t = [st["summary"][lab]["fit_s"]["mean"] for st in report["settings"].values()
             if lab in st["summary"] and "fit_s" in st["summary"][lab]]
        r = [st["summary"][lab]["fit_s"]["mean"] / st["summary"]["TS"]["fit_s"]["mean"]
             for st in report["settings"].values()
             if lab in st["summary"] and "fit_s" in st["summary"][lab] and "TS" in st["summary"]
             and st["summary"]["TS"]["fit_s"]["mean"] > 0]
        if t:
            rows.append(f"| {lab} | {np.median(t) * 1e3:.0f} | {np.max(t) * 1e3:.0f} | "
                        + (f"{np.median(r):.1f}" if r else "–") + " |")
    return ["| method | median fit ms | slowest setting, fit ms | median ratio to TS |", "|---|---|---|---|"] + rows


def render(report: dict[str, Any]) -> tuple[str, str]:
    labels = report["labels"]
    n = report["n_splits"]
    quick = " (quick smoke test)" if report["quick"] else ""
    v = report["verdict"]
    head = [f"*Generated by `{RERUN}` from `benchmarks/results/quality_bar.json` and its per-split cache "
            f"`benchmarks/results/quality_bar_runs.json`; no number on this page is typed by hand. Last run "
            f"{report['date']}, wall time of that run {report['wall_time_s']:.0f} s on a 2-core machine shared "
            f"with other jobs (fit times are under that load: compare them as ratios).*", ""]
    verdict = [f"**Verdict: {v['word']}.** {v['reason']}", ""] + [f"- {x}" for x in v["details"]] + [""]
    method = ["## Method", "",
              f"- **Settings:** {report['protocol']['settings']}",
              f"- **Splits:** {report['protocol']['splits']}",
              f"- **Scores** (test half): {report['protocol']['metrics']}",
              "- **precal:** " + "; ".join(f"{k} = `{d}`" for k, d in report["protocol"]["precal"].items()) + ".",
              "- **Peers:** " + "; ".join(f"{k} = `{d}`" for k, d in report["protocol"]["peers"].items()) + ".",
              f"- **The bar:** {report['protocol']['bar']}", ""]
    notes = [f"- {x}" for x in report["notes"]]
    tables = ["## The bar, per setting", ""] + verdict_table(report)
    tables += ["", "## ECE % (15 equal-width bins), mean over splits; bold: lowest calibrated", ""]
    tables += overview_table(report, "ece", 100, 2, labels)
    tables += ["", "## NLL, mean over splits; bold: lowest calibrated", ""]
    tables += overview_table(report, "nll", 1, 4, labels)
    tables += ["", "## Accuracy %, mean over splits", ""] + overview_table(report, "accuracy", 100, 2, labels, bold=False)
    tables += ["", "## Fit time (one thread, loaded machine)", ""] + fit_time_table(report, labels)
    per = ["", "## Every setting: mean ± sd over splits", ""]
    for key, st in report["settings"].items():
        per += [f"### {_name(key)} (n = {st['n_rows']}, K = {st['n_classes']}, {st['n_calibration']} calibration rows)",
                ""] + setting_table(st["summary"], labels, n) + [""]
    results = [f"# Quality bar: precal's calibrators and their peers{quick}", ""] + head + verdict
    results += (["## Notes", ""] + notes + [""] if notes else []) + method + tables + per
    doc = [f"# Benchmark: calibration quality against the issue-14 bar and peer libraries{quick}", ""] + head
    doc += [f"**Claim (issue 14):** {report['claim']}", ""] + verdict
    doc += (["## Notes", ""] + notes + [""] if notes else []) + method + tables + per
    doc += ["## Reproduce", "", "```bash", f"{RERUN}                      # what the cache lacks",
            f"{RERUN} --methods fuzzy      # recompute one method's column, keep the rest",
            f"{RERUN} --page-only          # rewrite the pages from the cache",
            f"{RERUN} --quick              # smoke test into a temp dir", "```", "",
            "Needs `../shared/data/logits` (skips with exit status 3 without it); probmetrics, when wanted, "
            "in a separate virtual environment (`--probmetrics-python`).", "",
            "Versions: " + ", ".join(f"{k} {val}" for k, val in report["versions"].items()) + "."]
    return "\n".join(results) + "\n", "\n".join(doc) + "\n"


def _mean(st: dict[str, Any], label: str, metric: str) -> float | None:
    e = st["summary"].get(label)
    return e[metric]["mean"] if e and metric in e else None


#: AutoCalibrator's candidates that can move predictions (its matrix-scaling family).
MATRIX_PICKS = ("matrix_scaling", "top_label_isotonic_matrix", "top_label_spline_matrix")


def guide(report: dict[str, Any]) -> str:
    """docs/which-calibrator.md: the recommendation, with every number computed from ``report``."""
    st = report["settings"]
    n_set = len(st)
    auto_ok = [k for k, s in st.items() if s["bar"].get("auto_ok")]
    peers = [lab for lab in report["labels"] if lab in PEERS or lab in PROBMETRICS]

    def count(pred: Any) -> int:
        return sum(1 for s in st.values() if pred(s))

    def lowest(s: dict[str, Any], metric: str, among: list[str]) -> str | None:
        vals = {lab: _mean(s, lab, metric) for lab in among if _mean(s, lab, metric) is not None}
        return min(vals, key=vals.get) if vals else None

    precal_methods = [lab for lab in report["labels"] if lab in PRECAL and lab != "uncalibrated"]
    auto_vs_ts = [(_mean(s, "Auto", "ece"), _mean(s, "TS", "ece")) for s in st.values()]
    auto_vs_ts = [(a, t) for a, t in auto_vs_ts if a is not None and t is not None]
    auto_below_ts = sum(1 for a, t in auto_vs_ts if a < t)
    auto_vs_peer = []
    for s in st.values():
        best_peer = lowest(s, "ece", peers)
        if best_peer and _mean(s, "Auto", "ece") is not None:
            auto_vs_peer.append((_mean(s, "Auto", "ece"), _mean(s, best_peer, "ece"), best_peer))
    nll_best = {}
    for s in st.values():
        b = lowest(s, "nll", precal_methods + peers)
        if b:
            nll_best[b] = nll_best.get(b, 0) + 1
    pacs_gap = [abs(_mean(s, "PACS", "ece") - _mean(s, "TS", "ece")) for s in st.values()
                if _mean(s, "PACS", "ece") is not None and _mean(s, "TS", "ece") is not None]
    dir_acc = [(_mean(s, "Dirichlet", "accuracy") - _mean(s, "uncalibrated", "accuracy")) * 100 for s in st.values()
               if _mean(s, "Dirichlet", "accuracy") is not None]
    small = {k: s for k, s in st.items() if s["n_calibration"] < 1000}
    rows = ["| setting | uncalibrated | TS | ETS | TL isotonic + TS | TL spline + TS | Auto | best peer |",
            "|---|---|---|---|---|---|---|---|"]
    for k, s in st.items():
        cells = [_mean(s, lab, "ece") for lab in ("uncalibrated", "TS", "ETS", "TL isotonic + TS", "TL spline + TS",
                                                  "Auto")]
        bp = lowest(s, "ece", peers)
        rows.append(f"| {_name(k)} | " + " | ".join("–" if c is None else f"{100 * c:.2f}" for c in cells)
                    + (f" | {100 * _mean(s, bp, 'ece'):.2f} ({bp}) |" if bp else " | – |"))
    med = {lab: np.median([s["summary"][lab]["fit_s"]["mean"] / s["summary"]["TS"]["fit_s"]["mean"]
                           for s in st.values() if lab in s["summary"] and "fit_s" in s["summary"][lab]
                           and "TS" in s["summary"] and s["summary"]["TS"]["fit_s"]["mean"] > 0])
           for lab in ("Auto", "Dirichlet", "Fuzzy", "ETS", "TL isotonic + TS") if any(lab in s["summary"] for s in st.values())}
    lines = [
        "# Which calibrator should I use?", "",
        f"*Every number on this page is computed by `{RERUN}` from `benchmarks/results/quality_bar.json` "
        f"(run {report['date']}; {report['n_splits']} calibration/test splits per setting, {n_set} settings of "
        "network and precision, listed below). The full tables are in "
        "[the quality benchmark](benchmarks-quality.md).*", "",
        "## Short answer", "",
        "```python",
        "from precal.calibration import AutoCalibrator",
        "auto = AutoCalibrator().fit(logits_cal, y_cal)   # logits and labels of a held-out calibration set",
        "probs = auto.predict_proba(logits_test)          # calibrated probabilities",
        "auto.best_name_                                  # which map it chose",
        "```", "",
        "`AutoCalibrator()` tries temperature scaling (TS), ensemble TS and top-label isotonic and spline "
        "recalibration (on a TS base and on the raw softmax), which keep the model's predicted class, and "
        "structured matrix scaling with and without top-label recalibration, which can move it, on five folds of "
        "your calibration data. It keeps the one with the lowest cross-validated top-label ECE among those whose "
        "ECE is below TS's by more than the bootstrap standard error of that difference, whose cross-validated "
        "NLL is not worse than TS's by more than one standard error and whose accuracy is not lower (TS when "
        "none beats it); the matrix-scaling family instead (without that ECE margin) only where its NLL beats "
        "TS's by more than one "
        "standard error and its out-of-fold accuracy gain is significant (McNemar's exact test, 5 %).", "",
        f"- It met issue 14's bar (ECE within one split-to-split sd of the best of TS, ETS and top-label "
        f"isotonic/spline; NLL at most TS's + {NLL_MARGIN}; accuracy unchanged) on **{len(auto_ok)} of "
        f"{count(lambda s: 'auto_ok' in s['bar'])}** settings"
        + ("." if len(auto_ok) == count(lambda s: "auto_ok" in s["bar"]) else
           ": see the misses in [the benchmark](benchmarks-quality.md)."),
        f"- Its mean test ECE was below TS's on {auto_below_ts} of {len(auto_vs_ts)} settings.",
    ]
    moved = []
    for k, s in st.items():
        picks = s["summary"].get("Auto", {}).get("choices", {})
        n_matrix = sum(v for c, v in picks.items() if c in MATRIX_PICKS)
        if n_matrix:
            gain = 100 * (_mean(s, "Auto", "accuracy") - _mean(s, "uncalibrated", "accuracy"))
            moved.append(f"{_name(k)} ({n_matrix} of {sum(picks.values())} splits; accuracy {gain:+.2f} points, "
                         f"NLL {_mean(s, 'Auto', 'nll'):.4f} against TS's {_mean(s, 'TS', 'nll'):.4f})")
    lines.append("- It chose the matrix-scaling family (which moves predictions) on "
                 + ("; ".join(moved) if moved else "no split of any setting") + ".")
    if auto_vs_peer:
        wins = sum(1 for a, p, _ in auto_vs_peer if a <= p)
        lines.append("- It was at or below the lowest ECE of every peer measured in the same run (scikit-learn's "
                     "`CalibratedClassifierCV` sigmoid/isotonic/temperature, net:cal's TS, isotonic, histogram, "
                     "BBQ, ENIR" + (", probmetrics' TS and structured matrix scaling" if any(
                         lab in PROBMETRICS for lab in peers) else "")
                     + f") on {wins} of {len(auto_vs_peer)} settings.")
        beaten = []
        for k, s in st.items():
            bp = lowest(s, "ece", peers)
            if bp and _mean(s, "Auto", "ece") is not None and _mean(s, bp, "ece") < _mean(s, "Auto", "ece"):
                beaten.append(f"{_name(k)}: {bp} {100 * _mean(s, bp, 'ece'):.2f} % against "
                              f"{100 * _mean(s, 'Auto', 'ece'):.2f} %, NLL {_mean(s, bp, 'nll'):.4f} against "
                              f"{_mean(s, 'Auto', 'nll'):.4f}, accuracy "
                              f"{100 * (_mean(s, bp, 'accuracy') - _mean(s, 'Auto', 'accuracy')):+.2f} points")
        if beaten:
            lines.append("- Where a peer had a lower mean ECE: " + "; ".join(beaten) + ".")
        fair = []
        for s in st.values():
            ok_peers = [lab for lab in peers if _mean(s, lab, "nll") is not None and _mean(s, "TS", "nll") is not None
                        and _mean(s, lab, "nll") <= _mean(s, "TS", "nll") + NLL_MARGIN
                        and _mean(s, lab, "accuracy") >= _mean(s, "uncalibrated", "accuracy")]
            bp = lowest(s, "ece", ok_peers)
            if bp and _mean(s, "Auto", "ece") is not None:
                fair.append(_mean(s, "Auto", "ece") <= _mean(s, bp, "ece"))
        if fair:
            lines.append(f"- Against the peers that themselves meet the NLL and accuracy part of the bar (NLL at most "
                         f"TS's + {NLL_MARGIN}, accuracy not below the model's), Auto's ECE was at or below the "
                         f"lowest on {sum(fair)} of {len(fair)} settings.")
    if "Auto" in med:
        lines.append(f"- It costs about {med['Auto']:.0f}× a TS fit (median over settings, same run): "
                     "about 30 small fits and 15 matrix-scaling fits.")
    lines += ["", "## Mean test ECE % by setting", ""] + rows + [""]
    lines += ["## When to choose something else", ""]
    lines.append("- **You score with NLL or another proper scoring rule**: `AutoCalibrator(metric=\"nll\")` picks "
                 "by cross-validated NLL (with the one-standard-error rule in favour of TS). Across the settings, "
                 "the lowest mean NLL came from " + ", ".join(f"{k} ({v})" for k, v in sorted(
                     nll_best.items(), key=lambda kv: -kv[1])) + ".")
    if dir_acc:
        lines.append(f"- **Dirichlet calibration** (`DirichletCalibrator`, ODIR with cross-validated strength) "
                     f"is a full matrix map: it can move predictions (accuracy change against the model, mean over "
                     f"splits, {min(dir_acc):+.2f} to {max(dir_acc):+.2f} points across settings) and is the "
                     "slowest default here"
                     + (f" (median {med['Dirichlet']:.0f}× TS's fit time)" if "Dirichlet" in med else "")
                     + "; try it with `AutoCalibrator(candidates=[..., \"dirichlet\"])` when NLL matters most and "
                       "you have thousands of calibration rows. It ran on fewer splits (see the benchmark's notes).")
    sms = [(k, s, _mean(s, "SMS", "nll"), _mean(s, "TS", "nll")) for k, s in st.items()
           if _mean(s, "SMS", "nll") is not None and _mean(s, "TS", "nll") is not None]
    if sms:
        gain = {k: (_mean(s, "SMS", "accuracy") - _mean(s, "uncalibrated", "accuracy")) * 100 for k, s, _, _ in sms}
        top = sorted(gain, key=gain.get, reverse=True)[:2]
        worse = [k for k, _, a, t in sms if a > t]
        pm = [(a, _mean(s, "probmetrics logistic", "nll")) for _, s, a, _ in sms
              if _mean(s, "probmetrics logistic", "nll") is not None]
        lines.append(
            "- **Structured matrix scaling** (`StructuredMatrixScaling`, Berta et al. 2026: TS, then an affine map "
            "of the TS log-probabilities whose ridge penalty, scaled by parameters per sample, shrinks it towards "
            "TS) when NLL matters and you accept a map that can **change predictions**: its mean NLL was below "
            f"TS's on {len(sms) - len(worse)} of {len(sms)} settings"
            + (" (above it on " + ", ".join(_name(k) for k in worse) + ")" if worse else "")
            + f", and it moved accuracy by {min(gain.values()):+.2f} to {max(gain.values()):+.2f} points against "
            "the model (largest: " + ", ".join(f"{_name(k)} {gain[k]:+.2f}" for k in top) + ")"
            + (f"; its mean NLL was within {max(abs(a - b) for a, b in pm):.1e} of probmetrics' `logistic` (the "
               f"same method) on all {len(pm)} settings" if pm else "")
            + ".")
    lines.append("- **One number to ship, or a calibrator applied across precisions**: `TemperatureScaling` (one "
                 "parameter, a `torch` layer, and the map that `study_cross_precision` shows transferring between "
                 "precisions). Its mean ECE was the lowest of TS, ETS and top-label maps on "
                 f"{count(lambda s: s['bar'].get('best_reference') == 'TS')} of {n_set} settings.")
    if small:
        picks = {}
        for s in small.values():
            for c, v in s["summary"].get("Auto", {}).get("choices", {}).items():
                picks[c] = picks.get(c, 0) + v
        lines.append(f"- **Small calibration sets** (the seed ResNet-20 settings: "
                     f"{min(s['n_calibration'] for s in small.values())} calibration rows): top-label maps have few "
                     "rows per bin; Auto chose " + ", ".join(f"{k} ×{v}" for k, v in sorted(
                         picks.items(), key=lambda kv: -kv[1])) + " there, and met the bar on "
                     f"{sum(1 for k in small if k in auto_ok)} of {len(small)}.")
    if pacs_gap:
        lines.append(f"- **PACSCalibrator** differed from TS by at most {100 * max(pacs_gap):.2f} ECE points "
                     "(mean over splits) on every setting here: on these logits, rounded in logit space or from emulated "
                     "networks, it behaved as temperature scaling; see [the PACS study](study-pacs.md) for where its "
                     "precision-aware term acts.")
    fz = [s["bar"] for s in st.values() if s["bar"].get("fuzzy_minus_dirichlet_nll") is not None]
    if fz:
        lower = [b for b in fz if b["fuzzy_minus_dirichlet_nll"]["mean"] < 0]
        lines.append(
            "- **Confidence-gated maps** (`FuzzyDirichletCalibrator`: Dirichlet maps blended by the top "
            "confidence, kept only when they beat Dirichlet on every held-out fold): its mean NLL was at most "
            f"Dirichlet's on {sum(1 for b in fz if b['fuzzy_ok'])} of {len(fz)} settings measured (lower on "
            f"{len(lower)}), so it is safe where Dirichlet is; it costs Dirichlet's cross-validation plus up to six "
            "stage-2 fits"
            + (f" (median {med['Fuzzy']:.0f}× TS's fit time)" if "Fuzzy" in med else "")
            + ", and Auto does not try it. Use it when you want confidence-dependent corrections and can afford "
              "the fit.")
    lines += ["", "## How the numbers were made", "",
              f"{report['protocol']['splits']} Scores on the test half: {report['protocol']['metrics']} "
              f"Settings: {report['protocol']['settings']}", ""]
    return "\n".join(lines) + "\n"


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    st = report["settings"]
    auto = {k: s["bar"]["auto_ok"] for k, s in st.items() if "auto_ok" in s["bar"]}
    fuzzy = {k: s["bar"]["fuzzy_ok"] for k, s in st.items() if "fuzzy_ok" in s["bar"]}
    details = []
    miss = [k for k, ok in auto.items() if not ok]
    details.append(f"Auto meets the bar on {len(auto) - len(miss)} of {len(auto)} settings"
                   + ("; misses: " + "; ".join(
                       f"{_name(k)} (" + ", ".join(w for w, f in (("ECE", "ece_ok"), ("NLL", "nll_ok"),
                                                           ("accuracy", "accuracy_ok"))
                                            if not st[k]["bar"][f]) + ")" for k in miss) if miss else "") + ".")
    fmiss = [k for k, ok in fuzzy.items() if not ok]
    if fuzzy:
        details.append(f"Fuzzy's mean NLL is at most Dirichlet's on {len(fuzzy) - len(fmiss)} of {len(fuzzy)} "
                       "settings" + (f"; higher on: {', '.join(_name(k) for k in fmiss)}" if fmiss else "") + ".")
    else:
        details.append("Fuzzy against Dirichlet: not measured in this run (see the notes).")
    if miss or not auto:
        word, reason = "does not hold", "AutoCalibrator misses the bar on the settings listed below."
    elif fmiss:
        word, reason = "does not hold", "AutoCalibrator meets the bar everywhere, but Fuzzy is worse than Dirichlet on NLL."
    elif not fuzzy:
        word, reason = ("holds for AutoCalibrator", "Auto meets the ECE, NLL and accuracy bar on every setting; the "
                        "Fuzzy-versus-Dirichlet part of the bar was not measured in this run.")
    else:
        word, reason = "holds", ("Auto meets the ECE, NLL and accuracy bar on every setting and Fuzzy is never worse "
                                 "than Dirichlet on NLL.")
    return {"word": word, "reason": reason, "details": details}


# --------------------------------------------------------------------------- main
def _load_cache(path: Path) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))["runs"]
    return {}


def _save_cache(path: Path, cache: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(h.dump_json({"about": "per (setting|split|method) test-half scores of benchmarks/quality_bar.py",
                                "runs": dict(sorted(cache.items()))}), encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None, staged: h.StagedOutputs) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    h.add_study_arguments(parser)
    parser.add_argument("--methods", nargs="+", default=None, choices=sorted(SHORT.values()),
                        help="recompute only these methods (short names), keep every other cached result")
    parser.add_argument("--max-splits", nargs="+", default=[], metavar="METHOD=N",
                        help="run METHOD (short name) on the first N splits only (slow methods)")
    parser.add_argument("--skip", nargs="+", default=[], choices=sorted(SHORT.values()),
                        help="methods not run at all in this invocation (cached results still shown)")
    parser.add_argument("--slow", nargs="+", default=[], choices=sorted(SHORT.values()),
                        help="methods run only on the settings named by --slow-on (slow methods, for a time budget)")
    parser.add_argument("--slow-on", nargs="+", default=[],
                        help="settings (key substrings, e.g. '|fp32') where the --slow methods run")
    parser.add_argument("--settings", nargs="+", default=None,
                        help="only settings whose key (file|precision) contains one of these strings")
    parser.add_argument("--probmetrics-python", type=Path, default=DEFAULT_PM_PYTHON,
                        help="python of the separate venv that has probmetrics (skipped if it cannot import it)")
    parser.add_argument("--page-only", action="store_true", help="rewrite the pages from the cache only")
    args = h.finish_study_arguments(parser, parser.parse_args(argv))
    committed = h.committed_outputs("quality_bar", "benchmarks-quality.md",
                                    guide=h.REPO_ROOT / "docs" / "which-calibrator.md",
                                    runs=h.REPO_ROOT / "benchmarks" / "results" / "quality_bar_runs.json")
    paths = h.output_paths(args, committed, prefix="precal-quality-bar-")
    q = args.quick
    long_of = {v: k for k, v in SHORT.items()}
    cache = _load_cache(paths["runs"])
    h.set_threads(1)
    start, cpu_start = time.perf_counter(), h.cpu_seconds()
    notes: list[str] = []
    pm_reason = probmetrics_status(args.probmetrics_python)
    labels = list(PRECAL) + list(PEERS) + list(PROBMETRICS)
    if q:
        labels = list(QUICK["methods"])
    if pm_reason is not None:
        labels = [lab for lab in labels if lab not in PROBMETRICS]
        notes.append(f"probmetrics was not measured: it does not import in `{args.probmetrics_python}` "
                     f"({pm_reason}).")
    settings, data_notes = load_settings(QUICK["files"] if q else FILES, QUICK["precisions"] if q else ROUNDED,
                                         QUICK["rows"] if q else None, () if q else SEED_CONFIGS)
    notes += data_notes
    if args.settings:
        settings = [s for s in settings if any(k in s["key"] for k in args.settings)]
    limit = {}
    for spec in args.max_splits:
        name, _, n = spec.partition("=")
        if name not in long_of or not n.isdigit():
            parser.error(f"--max-splits takes METHOD=N with a short method name, got {spec!r}")
        limit[long_of[name]] = int(n)
    redo = {long_of[m] for m in args.methods} if args.methods else set()
    skip = {long_of[m] for m in args.skip}
    print(f"quality bar: {len(settings)} settings × {args.splits} splits{' (quick)' if q else ''}", flush=True)
    report_settings: dict[str, Any] = {}
    pm_jobs: list[tuple[str, list[int], list[str], tuple]] = []
    for st in settings:
        splits = h.make_splits(st["y"], args.splits, args.seed)
        if not args.page_only:
            too_many = set(SLOW_PEERS) if st["z"].shape[1] > SLOW_PEERS_MAX_CLASSES else set()
            if not any(k in st["key"] for k in args.slow_on):
                too_many |= {long_of[m] for m in args.slow}
            todo = [[lab for lab in labels if lab not in skip | too_many and s < limit.get(lab, args.splits)
                     and (lab in redo or f"{st['key']}|{s}|{lab}" not in cache)] for s in range(args.splits)]
            t0 = time.perf_counter()
            own = [[lab for lab in t if lab not in PROBMETRICS] for t in todo]
            items = [(st["z"], st["y"], cal, test, own[s], st["pacs_precision"]) for s, (cal, test) in
                     enumerate(splits) if own[s]]
            outs = h.parallel_map(one_split, items, args.threads)
            for s, out in zip([s for s in range(args.splits) if own[s]], outs):
                for lab, row in out.items():  # rounded as the cache file keeps them: a run and a reload agree
                    cache[f"{st['key']}|{s}|{lab}"] = h.json_ready(row)
            pm = sorted({lab for t in todo for lab in t if lab in PROBMETRICS})
            if pm:
                idx = [s for s in range(args.splits) if any(lab in todo[s] for lab in pm)]
                pm_jobs.append((st["key"], idx, pm, (st["z"], st["y"], [splits[s] for s in idx])))
            if any(own):
                _save_cache(paths["runs"], cache)
                print(f"  {st['key']}: {sum(map(len, own))} fits in {time.perf_counter() - t0:.1f} s", flush=True)
    for labs in sorted({tuple(p[2]) for p in pm_jobs}):
        group = [p for p in pm_jobs if tuple(p[2]) == labs]
        t0 = time.perf_counter()
        rows = probmetrics_jobs(args.probmetrics_python, [p[3] for p in group], list(labs))
        for (key, idx, _, _), job_rows in zip(group, rows):
            for s, row in zip(idx, job_rows):
                for lab, r in row.items():
                    cache[f"{key}|{s}|{lab}"] = r
        _save_cache(paths["runs"], cache)
        print(f"  probmetrics {', '.join(labs)}: {len(group)} settings in {time.perf_counter() - t0:.1f} s", flush=True)
    for st in settings:
        splits = h.make_splits(st["y"], args.splits, args.seed)
        summary = summarize(cache, st["key"], labels, args.splits)
        report_settings[st["key"]] = {"file": st["file"], "precision": st["precision"], "kind": st["kind"],
                                      "n_rows": int(len(st["y"])), "n_classes": int(st["z"].shape[1]),
                                      "n_calibration": int(len(splits[0][0])), "summary": summary,
                                      "bar": bar(summary, cache, st["key"])}
    fewer = sorted({f"{lab} ({e['n']} of {args.splits} splits)" for st in report_settings.values()
                    for lab, e in st["summary"].items() if 0 < e["n"] < args.splits})
    if fewer:
        notes.append("Measured on fewer splits than the others (slow, or limited for the time budget): "
                     + "; ".join(fewer) + ".")
    partial = {lab: [k for k, st in report_settings.items() if st["summary"].get(lab, {}).get("n", 0) > 0]
               for lab in labels}
    partial = {lab: ks for lab, ks in partial.items() if 0 < len(ks) < len(report_settings)}
    if partial:
        notes.append("Measured on some settings only (slow methods, for the time budget of a run on a shared "
                     "2-core machine): " + "; ".join(f"{lab} on {', '.join(_name(k) for k in ks)}"
                                                     for lab, ks in partial.items()) + ".")
    missing = [lab for lab in labels if not any(st["summary"].get(lab) for st in report_settings.values())]
    if "Fuzzy" in missing:
        notes.append("FuzzyDirichletCalibrator was not run: it is being redesigned under issue 14 (at its current "
                     "defaults it spent minutes per fit on 10-class data), and its column is rerun after that "
                     f"change with `{RERUN} --methods fuzzy`, which keeps every other cached result.")
    if not q and any(st["n_classes"] > SLOW_PEERS_MAX_CLASSES for st in report_settings.values()):
        notes.append(f"{' and '.join(SLOW_PEERS)} fit one binary model per class and were not run on more than "
                     f"{SLOW_PEERS_MAX_CLASSES} classes (several minutes per fit at 100 classes on this machine).")
    failed = sorted({f"{lab} on {k}: {e['error']}" for k, st in report_settings.items()
                     for lab, e in st["summary"].items() if e["n"] == 0})
    if failed:
        notes.append("Failed fits: " + "; ".join(failed) + ".")
    precal_table = {lab: (m.describe() if m is not None else "softmax of the logits")
                    for lab, m in h.method_table({lab: PRECAL[lab] for lab in labels if lab in PRECAL},
                                                 precision="P", random_state=0)[0].items()}
    report: dict[str, Any] = {
        "study": "issue 14's quality bar", "script": "benchmarks/quality_bar.py", "date": h.utc_now(),
        "claim": ("on every file of `../shared/data/logits` and every emulated precision of the seed studies, "
                  "`AutoCalibrator()`'s top-label ECE is within one split-to-split sd of the best of TS, ETS and "
                  "top-label isotonic/spline (or below), its NLL is at most TS's + 0.005 and accuracy is unchanged; "
                  "`FuzzyDirichletCalibrator` is never worse than `DirichletCalibrator` on NLL."),
        "quick": q, "seed": args.seed, "n_splits": args.splits, "threads": args.threads,
        "versions": h.versions() | _peer_versions(), "git_commit": h.git_commit(), "labels": labels,
        "protocol": {
            "settings": ("the test rows of " + ", ".join(f"`{f}`" for f in (QUICK["files"] if q else FILES))
                         + " at fp32 (as stored); the true-logit files " + ", ".join(f"`{f}`" for f in TRUE_LOGITS)
                         + " also rounded in logit space by `precal.emulate.round_logits` to "
                         + ", ".join(QUICK["precisions"] if q else ROUNDED) + " (the others hold log-probabilities, "
                         "a row-wise shift of unknown logits, so rounding them would not emulate a number format: "
                         "as in `study_cross_precision.py`)"
                         + ("" if q else f"; the seed studies' ResNet-20 on the {SEED_DATASET} CIFAR-10 images, "
                            "emulated end to end at " + ", ".join(SEED_CONFIGS) + " (`benchmarks/seeds/data.py` "
                            "`emulated_logits`, cached)") + "."),
            "splits": (f"{args.splits} stratified 50/50 calibration/test splits per setting (harness "
                       f"`make_splits`, split s from `np.random.default_rng({args.seed} + s)`), the same rows for "
                       "every method and every precision of a model, so differences are paired."),
            "metrics": ("accuracy; top-label ECE with 15 equal-width bins (L1); the debiased top-label L2 "
                        "calibration error of Kumar, Liang & Ma (2019) with 15 equal-mass bins "
                        "(`precal.metrics.debiased_calibration_error`; not on the scale of the L1 ECE); NLL; the "
                        "wall time of `fit` in a single-threaded worker process."),
            "precal": precal_table, "peers": {lab: PEERS[lab][1] for lab in labels if lab in PEERS}
            | {lab: f"probmetrics.calibrators.get_calibrator('{PROBMETRICS[lab]}')" for lab in labels
               if lab in PROBMETRICS},
            "bar": ("Auto's mean ECE ≤ (lowest mean ECE of " + ", ".join(ECE_REFERENCES) + ") + that method's "
                    f"split-to-split sd; Auto's mean NLL ≤ TS's + {NLL_MARGIN}; Auto's mean accuracy not below "
                    "the uncalibrated model's; Fuzzy's mean NLL ≤ Dirichlet's over the splits both were run on "
                    "(the paired difference and its sd are shown)."),
        },
        "notes": notes, "settings": report_settings,
    }
    report = h.json_ready(report)
    report["verdict"] = verdict(report)
    report["wall_time_s"] = time.perf_counter() - start
    if args.page_only and paths["json"].exists():  # the pages describe the run that measured, not this rewrite
        report["wall_time_s"] = json.loads(paths["json"].read_text(encoding="utf-8"))["wall_time_s"]
    report["cpu_time_s"] = h.cpu_seconds() - cpu_start
    results_md, doc_md = render(report)
    staged.write_text(paths["guide"], guide(report))
    written = h.write_study(staged, paths, report, results_md, doc_md)
    print(f"\nVerdict: {report['verdict']['word']}.")
    for line in report["verdict"]["details"]:
        print(f"- {line}")
    print(f"wall time {report['wall_time_s']:.1f} s; wrote {', '.join(str(p) for p in written)}")
    return 0


def _peer_versions() -> dict[str, str]:
    out = {}
    try:
        import netcal

        out["netcal"] = netcal.__version__
    except ImportError:  # pragma: no cover - optional
        pass
    return out


if __name__ == "__main__":
    raise SystemExit(h.run_study("quality_bar", main))
