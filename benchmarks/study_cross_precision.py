"""Study: calibrators fitted at fp32 and applied at a lower precision without refitting.

The claim tested (DESIGN.md's PACS contract; issue 14, item 3): ``PACSCalibrator`` is
precision-aware -- fitted once at one precision, it is re-targeted to another with
``set_params(precision=P)`` (its ``T0`` and ``λ`` stay, its ``ε`` becomes ``P``'s), and
then calibrates the logits at ``P`` at least as well as temperature scaling refitted at
``P``, which needs labelled data at ``P``.

What runs (every number in the outputs comes from this run):

A. **Digits demo** (always available): ``precal.demo.digits_logits(random_state=SEED)``
   emulated by ``precal.emulate.sweep`` at fp32 and ``EMULATED_CONFIGS`` on its 899
   held-out images (activation observers on the training images), as in study_pacs.
B. **Real logits** (``../shared/data/logits``): the two ResNet-50 / CIFAR-10 files, the only
   ones holding true logits, rounded in logit space by ``precal.emulate.round_logits`` to
   bf16, fp8_e4m3 (element-wise) and int8, int4 (symmetric, one scale per row), as a model
   whose last layer emits that format would give them. (The other files store
   log-probabilities: rounding those is not what their networks would do, and PACS's risk
   would see the shift; see docs/seeds/real-logits.md.)
C. **Seed models** (``../shared/data/models``): the CIFAR-10 ResNet-20 (``--seed-models``:
   also ResNet-56) on the 1,017 exact test images, the whole network emulated at
   ``EMULATED_CONFIGS`` (cached logits of ``benchmarks.seeds.data.emulated_logits``; first
   conv and last linear at W8A8 for the ``w*a*`` configs, as in seed 002, so the two studies
   share their logits). ResNet-56 is left out by default: its six emulated forward passes
   take about 15 minutes on the project machine's two loaded cores.

For each model, ``--splits`` (20) stratified 50/50 calibration/test splits of its rows (the
same rows at every precision, so the halves are paired). On each split:

* fitted once on the **fp32** calibration half: ``TemperatureScaling``,
  ``PACSCalibrator(precision="fp32")``, ``EnsembleTemperatureScaling``, ``TopLabelCalibrator()``
  (TS then top-label isotonic, "TS+top-label") and the composite "precision-aware temperature +
  top-label recalibration" of issue 14 (:class:`PACSThenTopLabel`, "PACS+top-label"); each is
  applied **as fitted** to the test half at every precision ``P`` ("TS fp32", ...), and the two
  with a PACS stage also **re-targeted** -- a copy with ``set_params(precision=P)``, no refit
  ("PACS fp32→P", "PACS+top-label fp32→P");
* refitted on the calibration half **at P** (the oracle that needs labelled data at ``P``):
  TS, PACS, TS+top-label and PACS+top-label ("... refit");
* all scored with the uncalibrated softmax on the test half at ``P``: accuracy, top-label
  ECE (15 bins), NLL, Brier.

PACS's fit depends on ``ε`` only through ``ρ = r / mean(r)``, in which ``ε`` cancels: so
"PACS fp32" is also what ``PACSCalibrator(precision=P)`` fitted on the fp32 logits would
give, and re-targeting from fp32 to ``P`` multiplies the adaptive part ``λ ε ||z|| s`` by
``ε_P / ε_fp32`` (2^16 for bf16).

Comparisons (:data:`COMPARISONS`): paired per-split differences with the harness's one-sd
verdict (clearly lower / higher when the mean is beyond one sd of the differences) and the
Wilcoxon signed-rank p-value (descriptive: the splits share one pool of rows).

Outputs: ``benchmarks/results/study_cross_precision.{json,md}``,
``docs/study-cross-precision.md`` and ``docs/figures/study-cross-precision-*.png``.

``--quick``: the digits demo at bf16 and w4a4, both ResNet-50 files (first 2,000 rows) at
fp8_e4m3 and int4, ResNet-20 on the first 200 exact images at bf16; 3 splits; into a temp
dir (or ``--out``). A missing or unreadable shared file skips its part with a note on the
page. Run from the repository root::

    python benchmarks/study_cross_precision.py              # full run, refreshes the committed outputs
    python benchmarks/study_cross_precision.py --quick      # smoke test
    python benchmarks/study_cross_precision.py --page-only  # rewrite the pages from the committed JSON
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks.*
from benchmarks import harness as h  # noqa: E402
from benchmarks.seeds import data as sd  # noqa: E402

RERUN = "python benchmarks/study_cross_precision.py"
SOURCE = ("DESIGN.md's PACS contract (\"a calibrator fitted at one precision can be re-targeted with "
          "`set_params(precision=...)`\") and issue 14, item 3")
CLAIM = ("A `PACSCalibrator` fitted at fp32 and re-targeted to the deployment precision P with "
         "`set_params(precision=P)`, without refitting, calibrates the logits at P at least as well as temperature "
         "scaling refitted at P (which needs labelled data at P).")
#: file -> (short name, what it is)
REAL_FILES = {"resnet50_cifar10.npz": ("ResNet-50 CE", "ResNet-50 trained with cross-entropy"),
              "resnet50-focal_cifar10.npz": ("ResNet-50 focal", "ResNet-50 trained with focal loss")}
REAL_PRECISIONS = ("bf16", "fp8_e4m3", "int8", "int4")
EMULATED_CONFIGS = ("bf16", "fp16", "fp8_e4m3", "w8a8", "w4a8", "w4a4")
SEED_MODELS = {"resnet20": "ResNet-20", "resnet56": "ResNet-56"}
#: The seed models of a full run (``--seed-models`` changes it).
DEFAULT_SEED_MODELS = ("resnet20",)
SEED_DATASET = "cifar10_lossless"
QUICK = {"digits": ("bf16", "w4a4"), "real": ("fp8_e4m3", "int4"), "real_rows": 2000,
         "seed_models": ("resnet20",), "seed_configs": ("bf16",), "seed_rows": 200}
METRICS = ("accuracy", "ece", "nll", "brier")
COMPARED = ("ece", "nll", "brier")
#: A mean paired difference at most this large is not called clear, however small its sd: two
#: nearly equal fits (TS at fp32 and at bf16, say) differ by 1e-6 on every split.
NEGLIGIBLE = {"ece": 1e-4, "nll": 1e-4, "brier": 1e-4}
#: A split on which a method's test ECE is more than this above (below) the other's is "much worse"
#: ("much better"); a method much worse on at least SHARE_OF_SPLITS of the splits counts as clearly
#: worse even when the mean ± sd rule does not say so -- a failure on some splits only (nothing on
#: the others) has an sd as large as its mean.
MUCH_ECE = 0.01
SHARE_OF_SPLITS = 0.25
#: Fitted once on the fp32 calibration half, applied at every precision as fitted (and re-targeted
#: when the class has a ``precision`` parameter). Names this precal lacks are listed on the page.
FROM_FP32 = {"TS": "ts", "PACS": "pacs", "ETS": "ets", "TS+top-label": "top-label-isotonic"}
#: Refitted on the calibration half at each precision: the oracle.
REFIT = {"TS": "ts", "PACS": "pacs", "TS+top-label": "top-label-isotonic"}
#: The composite "precision-aware temperature + top-label recalibration" (issue 14, item 3):
#: :class:`PACSThenTopLabel`, fitted at fp32 (and re-targeted) and refitted at P as PACS is.
COMPOSITE = "PACS+top-label"
#: (a, b, what a - b measures), on every model × precision setting.
COMPARISONS = (
    ("PACS fp32→P", "TS refit", "re-targeted PACS vs TS refitted at P (the claim)"),
    ("PACS fp32→P", "TS fp32", "re-targeted PACS vs reusing the fp32 temperature"),
    ("PACS fp32", "TS fp32", "PACS vs TS, both fitted at fp32 and applied as fitted"),
    ("TS fp32", "TS refit", "what skipping TS's refit at P costs"),
    ("PACS refit", "TS refit", "PACS vs TS, both refitted at P (study_pacs's question)"),
    ("TS+top-label refit", "TS refit", "what top-label isotonic adds to TS, both refitted at P"),
    ("PACS+top-label refit", "TS refit", "the composite vs TS, both refitted at P"),
    ("PACS+top-label refit", "PACS refit", "what top-label isotonic adds to PACS, both refitted at P"),
    ("PACS+top-label refit", "TS+top-label refit", "the composite vs TS + top-label: what the PACS stage adds"),
    ("PACS+top-label fp32", "TS+top-label fp32", "the composite vs TS + top-label, both fitted at fp32, as fitted"),
    ("PACS+top-label fp32→P", "TS refit", "the re-targeted composite vs TS refitted at P"),
    ("PACS+top-label fp32→P", "TS+top-label fp32", "the re-targeted composite vs TS + top-label fitted at fp32"),
)
#: How a PACS variant compares with its temperature-scaling counterpart, for "where PACS helps".
VARIANTS = {"PACS fp32→P - TS fp32": "re-targeted from fp32", "PACS fp32 - TS fp32": "fitted at fp32, as fitted",
            "PACS refit - TS refit": "refitted at P",
            "PACS+top-label fp32→P - TS+top-label fp32": "composite, re-targeted from fp32",
            "PACS+top-label fp32 - TS+top-label fp32": "composite, fitted at fp32, as fitted",
            "PACS+top-label refit - TS+top-label refit": "composite, refitted at P"}
COLORS = {"uncalibrated": "0.55", "TS fp32": "C0", "PACS fp32": "C2", "PACS fp32→P": "C3", "TS refit": "C1",
          "PACS refit": "C4", "TS+top-label refit": "C5", "PACS+top-label refit": "C6",
          "PACS+top-label fp32→P": "C9"}


# --------------------------------------------------------------------------- data
def digits_block(seed: int, configs: tuple[str, ...]) -> dict[str, Any]:
    """The demo CNN's held-out logits at fp32 and ``configs`` (sweep, observers on its training images)."""
    import torch

    from precal.demo import config_precision, digits_logits
    from precal.emulate import sweep

    data = digits_logits(random_state=seed)
    held_out = torch.cat([data.cal_inputs, data.test_inputs])
    y = np.concatenate([data.cal_labels, data.test_labels]).astype(np.int64)
    logits = sweep(data.model, held_out, ("fp32", *configs), calibration_data=data.train_inputs, progress=False)
    return {"name": "digits", "description": f"the digits CNN of `precal.demo` on its {len(y)} held-out images, "
                                             f"whole network emulated by `sweep` (observers on its {data.n_train} "
                                             f"training images)",
            "models": {"digits CNN": {"y": y, "logits": logits, "about": "the 8x8 digits of scikit-learn",
                                      "precision": {c: config_precision(c) for c in configs}}}}


def real_block(precisions: tuple[str, ...], rows: int | None) -> dict[str, Any]:
    """The ResNet-50 test logits, as stored (fp32) and rounded in logit space to ``precisions``."""
    from benchmarks.seeds import real_logits as rl
    from precal.emulate import round_logits

    models = {}
    for name, (label, about) in REAL_FILES.items():
        d = rl.load_logits(name, rows)
        models[label] = {"y": d["labels"], "file": name, "about": f"{about}, CIFAR-10 test set (`{name}`)",
                         "logits": {"fp32": d["logits"], **{p: round_logits(d["logits"], p) for p in precisions}},
                         "precision": {p: p for p in precisions}}
    return {"name": "real", "description": "the true test logits of `../shared/data/logits`, rounded in logit space "
                                           "by `round_logits`", "models": models}


def seed_model_block(models: tuple[str, ...], configs: tuple[str, ...], rows: int | None,
                     args: argparse.Namespace) -> dict[str, Any]:
    """The seed ResNets on the exact CIFAR-10 test images, emulated end to end (cached)."""
    from precal.demo import config_precision

    ds = sd.load_dataset(SEED_DATASET, limit=rows)
    out = {}
    for model in models:
        logits = {}
        for config in ("fp32", *configs):
            t0 = time.perf_counter()
            logits[config] = sd.emulated_logits(model, ds, config, overrides=sd.ends_at_8bit(model, config),
                                                **sd.emulation_options(args))
            print(f"  {model} {config}: logits in {time.perf_counter() - t0:.1f} s", flush=True)
        out[SEED_MODELS[model]] = {"y": ds.labels, "logits": logits,
                                   "about": f"the pretrained CIFAR-10 {SEED_MODELS[model]}",
                                   "precision": {c: config_precision(c) for c in configs}}
    return {"name": "seed models", "description": f"the `../shared/data/models` ResNets on {ds.description}, whole "
                                                  f"network emulated by `emulate_model` (observers on "
                                                  f"{ds.calibration_note})",
            "models": out}


# --------------------------------------------------------------------------- one split
def _fit(factory: Any, z: np.ndarray, y: np.ndarray, label: str, caught_texts: dict[str, int]) -> Any:
    """``factory().fit(z, y)``, counting the fit (key ``""``) and each warning it raised in ``caught_texts``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = factory().fit(z, y)
    for text in {h.warning_text(label, w) for w in caught} | {""}:
        caught_texts[text] = caught_texts.get(text, 0) + 1
    return est


def _state(est: Any) -> dict[str, float]:
    return {a: float(getattr(est, a)) for a in ("temperature_", "lambda_", "epsilon_") if hasattr(est, a)}


class PACSThenTopLabel:
    """The composite: ``PACSCalibrator(precision)``, then ``TopLabelCalibrator(method="isotonic",
    base=None)`` fitted on PACS's calibrated logits (so its confidence map sees PACS's
    probabilities). ``set_params(precision=P)`` re-targets the PACS stage without a refit; the
    confidence map stays as fitted. Not in the library: this study found it equal to
    ``TopLabelCalibrator()`` (TS + top-label) within noise, see the page.
    """

    def __init__(self, precision: str = "fp32") -> None:
        self.precision = precision

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"precision": self.precision}

    def set_params(self, **params: Any) -> PACSThenTopLabel:
        self.precision = params.pop("precision", self.precision)
        if params:
            raise ValueError(f"PACSThenTopLabel has no parameters {sorted(params)}.")
        if hasattr(self, "pacs_"):
            self.pacs_.set_params(precision=self.precision)
        return self

    def fit(self, z: np.ndarray, y: np.ndarray) -> PACSThenTopLabel:
        from precal.calibration import PACSCalibrator, TopLabelCalibrator

        self.pacs_ = PACSCalibrator(precision=self.precision).fit(z, y)
        self.top_ = TopLabelCalibrator(method="isotonic", base=None).fit(self.pacs_.decision_function(z), y)
        self.temperature_, self.lambda_, self.epsilon_ = (self.pacs_.temperature_, self.pacs_.lambda_,
                                                         self.pacs_.epsilon_)
        return self

    def predict_proba(self, z: np.ndarray) -> np.ndarray:
        return self.top_.predict_proba(self.pacs_.decision_function(z))

    @staticmethod
    def describe(precision: str) -> str:
        return (f"PACSCalibrator(precision={precision!r}), then TopLabelCalibrator(method='isotonic', base=None) on "
                f"its calibrated logits")


def _composite(precision: str) -> Any:
    """A factory of :class:`PACSThenTopLabel` (picklable: a partial of a module-level class)."""
    import functools

    return functools.partial(PACSThenTopLabel, precision=precision)


def _retargetable(est: Any) -> bool:
    """Whether ``set_params(precision=...)`` changes what ``est`` predicts: PACS, and the
    top-label calibrator on a PACS base (its ``precision`` is unused on the other bases)."""
    params = est.get_params()
    return "precision" in params and params.get("base", "pacs") == "pacs"


def one_split(item: tuple[Any, ...]) -> dict[str, Any]:
    """Every method of one model on one split (module level: runs in worker processes).

    Returns ``scores[P][method]``, the fitted states and the fits' warnings.
    """
    logits, precision_of, y, cal, test, seed = item
    z32 = np.asarray(logits["fp32"], dtype=np.float64)
    caught: dict[str, int] = {}
    sources, _ = h.method_table(FROM_FP32, precision="fp32", random_state=seed)
    sources[COMPOSITE] = _composite("fp32")
    fitted32 = {label: _fit(m, z32[cal], y[cal], f"{label} fp32", caught) for label, m in sources.items()}
    out: dict[str, Any] = {"scores": {}, "fitted": {"fp32": {k: _state(e) for k, e in fitted32.items()}},
                           "warnings": caught}
    for p, z in logits.items():
        z = np.asarray(z, dtype=np.float64)
        prob = {"uncalibrated": h.softmax64(z[test])}
        for label, est in fitted32.items():
            prob[f"{label} fp32"] = est.predict_proba(z[test])
            if p != "fp32" and _retargetable(est):
                moved = copy.deepcopy(est).set_params(precision=precision_of[p])
                prob[f"{label} fp32→P"] = moved.predict_proba(z[test])
                if hasattr(moved, "sample_temperature"):
                    out["fitted"].setdefault("retargeted_median_temperature", {})[p] = float(
                        np.median(moved.sample_temperature(z[test])))
        if p != "fp32":
            refits, _ = h.method_table(REFIT, precision=precision_of[p], random_state=seed)
            refits[COMPOSITE] = _composite(precision_of[p])
            for label, m in refits.items():
                est = _fit(m, z[cal], y[cal], f"{label} refit", caught)
                out["fitted"].setdefault(p, {})[label] = _state(est)
                prob[f"{label} refit"] = est.predict_proba(z[test])
        out["scores"][p] = {k: h.scores(y[test], v, METRICS) for k, v in prob.items()}
    return out


# --------------------------------------------------------------------------- one model
def summarize(outs: list[dict[str, Any]], splits: list[tuple[np.ndarray, np.ndarray]],
              precision_of: dict[str, str]) -> dict[str, Any]:
    """Per-split lists, mean ± sd, comparisons and fitted facts of one model over its splits."""
    from precal.calibration import precision_epsilon

    per_split: dict[str, dict[str, dict[str, list[float]]]] = {}
    for out in outs:
        for p, by_method in out["scores"].items():
            for m, sc in by_method.items():
                for k, v in sc.items():
                    per_split.setdefault(p, {}).setdefault(m, {}).setdefault(k, []).append(v)
    summary = {p: {m: {k: h.mean_sd(v) for k, v in d.items()} for m, d in by_m.items()}
               for p, by_m in per_split.items()}
    comparisons = {}
    for p, by_m in per_split.items():
        if p == "fp32":
            continue
        comparisons[p] = {}
        for a, b, _ in COMPARISONS:
            if a in by_m and b in by_m:
                d = np.subtract(by_m[a]["ece"], by_m[b]["ece"])
                comparisons[p][f"{a} - {b}"] = {
                    **{k: h.paired(by_m[a][k], by_m[b][k], min_effect=NEGLIGIBLE[k])
                       | {"p": h.wilcoxon_p(by_m[a][k], by_m[b][k])} for k in COMPARED},
                    "splits_much_worse": int(np.sum(d > MUCH_ECE)), "splits_much_better": int(np.sum(d < -MUCH_ECE))}
    pacs32 = [o["fitted"]["fp32"]["PACS"] for o in outs]
    lam_eps = [f["lambda_"] * f["epsilon_"] for f in pacs32]
    fitted = {
        "ts_fp32_T": [o["fitted"]["fp32"]["TS"]["temperature_"] for o in outs],
        "pacs_fp32_T0": [f["temperature_"] for f in pacs32],
        "pacs_fp32_lambda_eps": lam_eps,
        "pacs_fp32_share_lambda_zero": float(np.mean(np.asarray(lam_eps) == 0.0)),
        "by_precision": {
            p: {"precision": precision_of[p], "epsilon": precision_epsilon(precision_of[p]),
                "retarget_factor": precision_epsilon(precision_of[p]) / precision_epsilon("fp32"),
                "ts_refit_T": [o["fitted"][p]["TS"]["temperature_"] for o in outs],
                "pacs_refit_lambda_eps": [o["fitted"][p]["PACS"]["lambda_"] * o["fitted"][p]["PACS"]["epsilon_"]
                                          for o in outs],
                "retargeted_median_temperature": [o["fitted"]["retargeted_median_temperature"][p] for o in outs]}
            for p in precision_of},
    }
    warn: dict[str, int] = {}
    for o in outs:
        for text, count in o["warnings"].items():
            warn[text] = warn.get(text, 0) + count
    return {"n": int(len(splits[0][0]) + len(splits[0][1])), "n_calibration": int(len(splits[0][0])),
            "n_test": int(len(splits[0][1])), "summary": summary, "comparisons": comparisons, "fitted": fitted,
            "per_split": per_split, "warnings": warn}


# --------------------------------------------------------------------------- verdict (computed)
def _settings(report: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(model, precision, comparisons)`` of every setting, in page order."""
    return [(model, p, c) for block in report["blocks"].values() for model, r in block["models"].items()
            for p, c in r["comparisons"].items()]


def often(comp: dict[str, Any], which: str) -> bool:
    """Much worse (better) on at least :data:`SHARE_OF_SPLITS` of the splits."""
    return comp[f"splits_much_{which}"] >= SHARE_OF_SPLITS * comp["ece"]["n"]


def classify(comp: dict[str, Any]) -> str:
    """A PACS variant against its TS counterpart: helps / hurts / mixed / identical / within noise.

    Better: clearly lower ECE or NLL (one-sd rule), or much better on a quarter of the splits;
    worse: the same upwards; mixed: both.
    """
    v = {comp["ece"]["verdict"], comp["nll"]["verdict"]}
    if v == {"identical"}:
        return "identical"
    better = "lower" in v or often(comp, "better")
    worse = "higher" in v or often(comp, "worse")
    if better and worse:
        return "mixed"
    if better:
        return "helps"
    if worse:
        return "hurts"
    return "within noise"


def where_pacs_helps(report: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """For each PACS variant: the settings where it helps, equals, or hurts against TS."""
    out: dict[str, dict[str, list[str]]] = {}
    for key in VARIANTS:
        groups: dict[str, list[str]] = {k: [] for k in ("helps", "identical", "within noise", "mixed", "hurts")}
        for model, p, comps in _settings(report):
            if key in comps:
                groups[classify(comps[key])].append(f"{model} {p}")
        out[key] = groups
    return out


def _pts(c: dict[str, Any], metric: str) -> str:
    scale, nd, unit = (100, 2, " points") if metric == "ece" else (1, 4, "")
    return f"{scale * c['mean']:+.{nd}f}{unit} (sd {scale * c['sd']:.{nd}f}, {c['verdict']})"


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """Reproduced / partly / not: re-targeted PACS against TS refitted at P on ECE and NLL."""
    holds, fails, n_much = [], [], []
    for model, p, comps in _settings(report):
        c = comps["PACS fp32→P - TS refit"]
        worse = "higher" in (c["ece"]["verdict"], c["nll"]["verdict"]) or often(c, "worse")
        (fails if worse else holds).append(f"{model} {p}")
        n_much.append(c["splits_much_worse"])
    n = len(holds) + len(fails)
    word = "reproduced" if n and not fails else "not reproduced" if not holds else "partly reproduced"
    reason = (f"Re-targeted PACS is not worse than TS refitted at P (on the mean ± sd rule for ECE and NLL, and "
              f"by more than {100 * MUCH_ECE:g} ECE point on fewer than {100 * SHARE_OF_SPLITS:.0f} % of the "
              f"splits) in {len(holds)} of {n} model × precision settings"
              + (f"; it is worse in {', '.join(fails)}" if fails else "")
              + f". Splits on which its ECE is more than {100 * MUCH_ECE:g} point above TS refitted's: "
                f"{min(n_much)} to {max(n_much)} of {report['n_splits']} per setting.")
    details = []
    for block in report["blocks"].values():
        for model, r in block["models"].items():
            f = r["fitted"]
            n_splits = len(f["pacs_fp32_lambda_eps"])
            zero = round(f["pacs_fp32_share_lambda_zero"] * n_splits)
            parts = []
            for p, comps in r["comparisons"].items():
                c = comps["PACS fp32→P - TS refit"]
                fp = f["by_precision"][p]
                t_ratio = np.median(fp["retargeted_median_temperature"]) / np.median(f["ts_fp32_T"])
                parts.append(f"{p} (× {fp['retarget_factor']:.3g}; median re-targeted temperature "
                             f"{t_ratio:.3g} × TS's): ECE {_pts(c['ece'], 'ece')}, NLL {_pts(c['nll'], 'nll')}, "
                             f"more than {100 * MUCH_ECE:g} ECE point worse on {c['splits_much_worse']} of "
                             f"{c['ece']['n']} splits")
            positive = [x for x in f["pacs_fp32_lambda_eps"] if x > 0]
            lam = (f"PACS fitted at fp32 has λ = 0 (plain TS) on {zero} of {n_splits} splits"
                   + (f" and λ·ε_fp32 from {min(positive):.3g} to {max(positive):.3g} on the other {len(positive)}"
                      if positive else ""))
            details.append(f"{model}: {lam}. Re-targeted PACS − TS refitted at P, by precision (× the factor "
                           f"re-targeting multiplies λ ε by): " + "; ".join(parts) + ".")
    return {"word": word, "reason": reason, "details": details, "holds": holds, "fails": fails}


def _tally(report: dict[str, Any], key: str) -> dict[str, dict[str, list[str]]]:
    """Settings where ``a - b`` is clearly lower / higher, per metric (ECE, NLL), one-sd rule."""
    out: dict[str, dict[str, list[str]]] = {m: {"lower": [], "higher": []} for m in ("ece", "nll")}
    for model, p, comps in _settings(report):
        if key in comps:
            for m in out:
                v = comps[key][m]["verdict"]
                if v in out[m]:
                    out[m][v].append(f"{model} {p}")
    return out


def _mean_of(report: dict[str, Any], method: str, metric: str) -> list[float]:
    """Per-setting means of one method's metric (settings in page order; fp32 rows left out)."""
    return [r["summary"][p][method][metric]["mean"] for block in report["blocks"].values()
            for r in block["models"].values() for p in r["comparisons"] if method in r["summary"][p]]


def composite_reading(report: dict[str, Any]) -> list[str]:
    """Does the composite (PACS + top-label isotonic) win? Computed from the comparisons."""
    n = len(_settings(report))
    c = COMPOSITE
    if not any(f"{c} refit - TS refit" in comps for _, _, comps in _settings(report)):
        return [f"The composite {c} was not measured."]

    def counts(key: str) -> str:
        t = _tally(report, key)
        return (f"ECE clearly lower in {len(t['ece']['lower'])} and higher in {len(t['ece']['higher'])}, NLL "
                f"clearly lower in {len(t['nll']['lower'])} and higher in {len(t['nll']['higher'])} of {n} settings")

    wins = []
    for model, p, comps in _settings(report):
        rivals = [f"{c} refit - TS refit", f"{c} refit - TS+top-label refit", f"{c} refit - PACS refit"]
        if all(k in comps for k in rivals):
            lower_ece = all(comps[k]["ece"]["verdict"] == "lower" for k in rivals)
            no_worse_nll = all(comps[k]["nll"]["verdict"] != "higher" for k in rivals)
            if lower_ece and no_worse_nll:
                wins.append(f"{model} {p}")
    ece = {m: np.asarray(_mean_of(report, m, "ece")) for m in ("TS refit", "TS+top-label refit", f"{c} refit")}
    lines = [
        f"The composite {c} (PACS's per-sample temperature, then top-label isotonic recalibration of its "
        f"probabilities), refitted at P, against TS refitted at P: {counts(f'{c} refit - TS refit')}. "
        f"Against TS + top-label isotonic refitted at P (what the PACS stage adds): "
        f"{counts(f'{c} refit - TS+top-label refit')}. Against PACS refitted at P (what the top-label stage adds): "
        f"{counts(f'{c} refit - PACS refit')}.",
        f"Top-label isotonic on top of TS (both refitted at P) against TS: {counts('TS+top-label refit - TS refit')}. "
        f"Mean test ECE over the {n} settings: TS {100 * ece['TS refit'].mean():.2f} %, TS + top-label "
        f"{100 * ece['TS+top-label refit'].mean():.2f} %, {c} {100 * ece[f'{c} refit'].mean():.2f} % (all refitted "
        f"at P).",
        f"The composite wins (clearly lower ECE than TS, TS + top-label and PACS, all refitted at P, with no clearly "
        f"higher NLL) in {len(wins)} of {n} settings" + (f": {', '.join(wins)}." if wins else "."),
        f"Re-targeted from fp32 with `set_params(precision=P)`, the composite against TS refitted at P: "
        f"{counts(f'{c} fp32→P - TS refit')}; it inherits PACS's re-targeting (the confidence map, fitted on the "
        f"fp32 base's confidences, is then read at the far lower confidences of the re-targeted base).",
    ]
    return lines


def reading(report: dict[str, Any]) -> list[str]:
    """Where PACS helps and where it equals TS, and what refitting is worth; computed."""
    n = len(_settings(report))
    groups = report["where_pacs_helps"]
    moved, kept = groups["PACS fp32→P - TS fp32"], groups["PACS fp32 - TS fp32"]
    refit = groups["PACS refit - TS refit"]
    # do the splits where re-targeting fails coincide with the splits where the fp32 fit found λ > 0?
    inside = outside = 0
    for block in report["blocks"].values():
        for r in block["models"].values():
            lam_pos = np.asarray(r["fitted"]["pacs_fp32_lambda_eps"]) > 0
            for p, by_m in r["per_split"].items():
                if p != "fp32":
                    much = np.subtract(by_m["PACS fp32→P"]["ece"], by_m["TS fp32"]["ece"]) > MUCH_ECE
                    inside += int(np.sum(much & lam_pos))
                    outside += int(np.sum(much & ~lam_pos))
    lines = [f"Where PACS helps and where it equals TS: re-targeted from fp32 with `set_params(precision=P)`, PACS is "
             f"worse than temperature scaling fitted on the same fp32 data in {len(moved['hurts'])} of {n} settings "
             f"and better in {len(moved['helps'])}; "
             f"of the split × precision cases where its ECE is more than {100 * MUCH_ECE:g} point above, "
             f"{inside} are splits on which the fp32 fit found λ > 0 and {outside} are not. Applied as fitted at "
             f"fp32, PACS helps in {len(kept['helps'])} settings ({', '.join(kept['helps']) or 'none'}) and hurts "
             f"in {len(kept['hurts'])}; refitted at P it helps in {len(refit['helps'])} "
             f"({', '.join(refit['helps']) or 'none'}) and hurts in {len(refit['hurts'])}; everywhere else it "
             f"equals TS (identical or within noise)."]
    composite = composite_reading(report)
    if len(composite) > 2:
        same = groups[f"{COMPOSITE} refit - TS+top-label refit"]
        n_same = len(same["within noise"]) + len(same["identical"])
        lines[0] += (f" {composite[2]} Against TS + top-label isotonic (`TopLabelCalibrator()`), both refitted at "
                     f"P, the composite is within noise in {n_same} of {n} settings"
                     + (": the PACS stage adds nothing measurable." if n_same == n else
                        f", helps in {len(same['helps'])} and hurts in {len(same['hurts'])}."))
    for key, groups in report["where_pacs_helps"].items():
        a, b = key.split(" - ")
        counts = ", ".join(f"{k} in {len(v)}" for k, v in groups.items() if v)
        lines.append(f"{a} vs {b} ({VARIANTS[key]}), on ECE and NLL over {n} settings: {counts}."
                     + (f" Helps: {', '.join(groups['helps'])}." if groups["helps"] else "")
                     + (f" Hurts: {', '.join(groups['hurts'])}." if groups["hurts"] else "")
                     + (f" Mixed: {', '.join(groups['mixed'])}." if groups["mixed"] else ""))
    cost = {"lower": [], "higher": [], "within noise": [], "identical": []}
    for model, p, comps in _settings(report):
        c = comps["TS fp32 - TS refit"]["nll"]
        cost[c["verdict"]].append(f"{model} {p}")
    lines.append(f"Refitting TS at P instead of reusing the fp32 temperature: the fp32 temperature has a clearly "
                 f"higher NLL in {len(cost['higher'])} of {n} settings"
                 + (f" ({', '.join(cost['higher'])})" if cost["higher"] else "")
                 + f", clearly lower in {len(cost['lower'])}, within noise in {len(cost['within noise'])}.")
    lines.append("Why re-targeting from fp32 behaves as it does: PACS's fit depends on ε only through the "
                 "normalised risk r / mean(r), so T0 and λ·ε come out the same whatever `precision` is fitted with; "
                 "`set_params(precision=P)` then multiplies λ·ε by ε_P / ε_fp32 (the factor in the lines above). "
                 "Where the fp32 fit found λ = 0 nothing changes and PACS is TS; where it found λ > 0, the "
                 "adaptive part grows by that factor.")
    return lines + composite


# --------------------------------------------------------------------------- markdown
def _methods_of(r: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for by_m in r["summary"].values():
        seen += [m for m in by_m if m not in seen]
    return seen


def tables(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for block in report["blocks"].values():
        for model, r in block["models"].items():
            lines += ["", f"### {model}: {r['about']}", "",
                      f"{block['description'][0].upper()}{block['description'][1:]}. {r['n']} rows; "
                      f"{report['n_splits']} splits of {r['n_calibration']} calibration / {r['n_test']} test; "
                      "mean ± sd over splits. \"fp32\" rows: fitted at fp32, applied at P as fitted; \"fp32→P\": "
                      "re-targeted with `set_params(precision=P)`; \"refit\": fitted at P.", "",
                      "| precision | method | accuracy % | ECE % | NLL | Brier |", "|---|---|---:|---:|---:|---:|"]
            for p, by_m in r["summary"].items():
                for i, (m, s) in enumerate(by_m.items()):
                    lines.append(f"| {p if i == 0 else ''} | {m} | {h.fmt_ms(s['accuracy'], 100, 2)} | "
                                 f"{h.fmt_ms(s['ece'], 100, 2)} | {h.fmt_ms(s['nll'], 1, 4)} | "
                                 f"{h.fmt_ms(s['brier'], 1, 4)} |")
    lines += ["", "### Paired comparisons", "",
              "Mean ± sd of the per-split difference a − b (ECE in points, NLL in nats; negative: a better), the "
              "one-sd verdict, the splits where a is lower, and the Wilcoxon signed-rank p-value (descriptive: the "
              "splits share one pool of rows).", "",
              "| setting | comparison | Δ ECE, points | Δ NLL | verdict ECE / NLL | a lower (ECE) | "
              f"a > {100 * MUCH_ECE:g} pt worse / better | p (ECE) |",
              "|---|---|---:|---:|---|---:|---:|---:|"]
    for model, p, comps in _settings(report):
        for i, (key, c) in enumerate(comps.items()):
            e, nl = c["ece"], c["nll"]
            pv = "–" if e["p"] is None else f"{e['p']:.2g}"
            lines.append(f"| {f'{model} {p}' if i == 0 else ''} | {key} | "
                         f"{100 * e['mean']:+.3f} ± {100 * e['sd']:.3f} | {nl['mean']:+.4f} ± {nl['sd']:.4f} | "
                         f"{e['verdict']} / {nl['verdict']} | {e['n_lower']}/{e['n']} | "
                         f"{c['splits_much_worse']} / {c['splits_much_better']} | {pv} |")
    lines += ["", "### Where PACS helps and where it equals TS", "",
              "Each PACS variant against temperature scaling fitted on the same data: *helps* = clearly lower ECE or "
              f"NLL, or an ECE more than {100 * MUCH_ECE:g} point lower on at least {100 * SHARE_OF_SPLITS:.0f} % of "
              "the splits, and nothing of the kind upwards; *hurts* = the reverse; *mixed* = both; *identical* = "
              "the same numbers on every split (PACS fitted λ = 0); *within noise* = none of these.", "",
              "| PACS variant | helps | identical | within noise | mixed | hurts |", "|---|---:|---:|---:|---:|---:|"]
    for key, groups in report["where_pacs_helps"].items():
        lines.append(f"| {key.split(' - ')[0]} vs {key.split(' - ')[1]} ({VARIANTS[key]}) | "
                     + " | ".join(str(len(groups[k])) for k in ("helps", "identical", "within noise", "mixed", "hurts"))
                     + " |")
    return lines


def render(report: dict[str, Any]) -> tuple[str, str]:
    notes = [f"**In short.** {report['reading'][0]}", ""]
    if report["quick"]:
        notes += ["**Quick smoke test** (`--quick`): few rows, precisions and splits; not the study's results.", ""]
    notes += [x for n in report["notes"] for x in (n, "")]
    notes += [x for w in report["warnings"] for x in (f"Fit warnings: {w}", "")]
    if report["unavailable"]:
        notes += [" ".join(report["unavailable"]), ""]
    p = report["protocol"]
    method = [
        "- **Data**: " + "; ".join(f"{b['description']}: " + " and ".join(b["models"])
                                   for b in report["blocks"].values()) + ".",
        f"- **Precisions**: {p['precisions']}",
        f"- **Calibrators**: {p['methods']}",
        f"- **Splits and scores**: {p['splits']}; test-half accuracy, top-label ECE ({h.N_BINS} bins), NLL, Brier.",
        "- **Re-targeting**: PACS's fit depends on `ε` only through `r / mean(r)`, so `T0` and `λ·ε` do not depend "
        "on the `precision` it is fitted with; `set_params(precision=P)` keeps `T0` and `λ` and so multiplies "
        "the adaptive term `λ ε ‖z‖ s(p̂)` by `ε_P / ε_fp32`.",
        "- **Verdict rule**: a difference is clear when the mean paired per-split difference is beyond one standard "
        "deviation of the differences and larger than a negligible "
        + ", ".join(f"{v:g} in {k.upper() if k != 'brier' else 'Brier'}" for k, v in NEGLIGIBLE.items())
        + " (ECE as a fraction: 1e-4 is 0.01 points). A failure on some splits only leaves the mean within one sd "
        f"(the sd is then as large as the mean), so a method also counts as worse in a setting when its ECE is more "
        f"than {100 * MUCH_ECE:g} point above the other's on at least {100 * SHARE_OF_SPLITS:.0f} % of the splits. "
        "Reproduced when re-targeted PACS is worse than TS refitted at P in no setting; not reproduced when it is "
        "worse in every setting; partly otherwise.",
    ]
    return h.claim_pages(report, title="Study: calibrators across precisions without refitting",
                         results_title="Cross-precision study: results", rerun=RERUN,
                         json_name="study_cross_precision.json", doc_name="study-cross-precision.md", source=SOURCE,
                         claim=CLAIM, run_note=f" (`--threads {report['threads']}`: the fits over {report['threads']} "
                                               f"processes of one torch thread; {report['logits_cache']['computed']} "
                                               f"emulated logit sets computed, {report['logits_cache']['read']} read "
                                               f"from the cache)",
                         notes=notes, method=method, tables=tables(report), reading=report["reading"][1:],
                         source_label="Source",
                         needs=["Parts B and C need `../shared/data/logits` and `../shared/data/models`; without "
                                "them they are skipped with a note.", ""])


# --------------------------------------------------------------------------- figure
def figure(report: dict[str, Any], staged: h.StagedOutputs, paths: dict[str, Path]) -> list[dict[str, str]]:
    from matplotlib.figure import Figure

    panels = [(model, r) for block in report["blocks"].values() for model, r in block["models"].items()]
    ncols = min(3, len(panels) + 1)
    nrows = -(-(len(panels) + 1) // ncols)  # one more cell for the legend
    fig = Figure(figsize=(4.4 * ncols, 3.4 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, (model, r) in zip(axes, panels):
        precisions = list(r["per_split"])
        for i, m in enumerate(COLORS):
            rows = [(j, 100 * np.asarray(r["per_split"][p][m]["ece"])) for j, p in enumerate(precisions)
                    if m in r["per_split"][p]]
            if rows:
                x = [j + (i - (len(COLORS) - 1) / 2) * 0.07 for j, _ in rows]
                med = np.array([np.median(v) for _, v in rows])
                lo, hi = med - [v.min() for _, v in rows], [v.max() for _, v in rows] - med
                ax.errorbar(x, med, yerr=[lo, hi], marker="o", ms=3, capsize=2, color=COLORS[m], label=m)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(precisions)), precisions, fontsize="small")
        ax.set_title(model, fontsize="small")
        ax.set_ylabel("test ECE % (log scale)")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[len(panels):]:
        ax.axis("off")
    axes[len(panels)].legend(handles, labels, loc="center", fontsize="small")
    path = h.save_figure(fig, staged, paths, "study-cross-precision-ece.png")
    return [{"path": path, "caption": f"Test ECE at each precision (log scale): median over {report['n_splits']} "
                                      f"splits, bars from the smallest to the largest split. Uncalibrated; fitted "
                                      f"at fp32 and applied as fitted (TS fp32, PACS fp32) or re-targeted with "
                                      f"`set_params(precision=P)` (PACS fp32→P, and the composite PACS+top-label "
                                      f"fp32→P); refitted at P (TS refit, PACS refit, TS+top-label refit, "
                                      f"PACS+top-label refit)."}]


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None, staged: h.StagedOutputs) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sd.add_study_arguments(parser)
    parser.add_argument("--seed-models", nargs="+", choices=tuple(SEED_MODELS), default=None,
                        help=f"seed ResNets of part C (default {' '.join(DEFAULT_SEED_MODELS)}; "
                             f"{' '.join(QUICK['seed_models'])} on {QUICK['seed_rows']} images with --quick)")
    parser.add_argument("--page-only", action="store_true",
                        help="only rewrite the results markdown and the docs page from the results JSON (the committed "
                             "one, or DIR/study_cross_precision.json with --out DIR)")
    args = h.finish_study_arguments(parser, parser.parse_args(argv))
    seed_models = tuple(args.seed_models or (QUICK["seed_models"] if args.quick else DEFAULT_SEED_MODELS))
    committed = h.committed_outputs("study_cross_precision", "study-cross-precision.md")
    paths = h.output_paths(args, committed, prefix="precal-study-cross-precision-")
    if args.page_only:
        report = json.loads(paths["json"].read_text(encoding="utf-8"))
        results_md, doc_md = render(report)
        staged.write_text(paths["md"], results_md)
        staged.write_text(paths["doc"], doc_md)
        print("wrote " + ", ".join(str(x) for x in staged.commit()))
        return 0
    h.set_threads(args.threads)
    start, cpu_start = time.perf_counter(), h.cpu_seconds()
    q = args.quick
    print(f"cross-precision study: {args.splits} splits{' (quick)' if q else ''}", flush=True)

    notes: list[str] = []
    left_out = [m for m in SEED_MODELS if m not in seed_models]
    if left_out and not q:
        notes.append(f"Part C leaves out {', '.join(SEED_MODELS[m] for m in left_out)} for the time "
                     f"budget (its emulated forward passes take about 15 minutes on two loaded cores); "
                     f"`{RERUN} --seed-models {' '.join(SEED_MODELS)}` adds it.")
    blocks = [digits_block(args.seed, QUICK["digits"] if q else EMULATED_CONFIGS)]
    for name, load in (("B (real logits)", lambda: real_block(QUICK["real"] if q else REAL_PRECISIONS,
                                                              QUICK["real_rows"] if q else None)),
                       ("C (seed models)", lambda: seed_model_block(
                           seed_models,
                           QUICK["seed_configs"] if q else EMULATED_CONFIGS, QUICK["seed_rows"] if q else None,
                           args))):
        try:
            blocks.append(load())
        except h.DataError as exc:
            notes.append(f"**Part {name} skipped**: {exc}.")
            print(f"  part {name} skipped: {exc}", flush=True)
    print(f"  logits ready in {time.perf_counter() - start:.1f} s", flush=True)

    keys, items = [], []
    for block in blocks:
        for model, m in block["models"].items():
            m["splits"] = h.make_splits(m["y"], args.splits, args.seed)
            for s, (cal, test) in enumerate(m["splits"]):
                keys.append((block["name"], model))
                items.append((m["logits"], m["precision"], m["y"], cal, test, args.seed + s))
    t0 = time.perf_counter()
    outs = h.parallel_map(one_split, items, args.threads)
    print(f"  {len(items)} model × split fits in {time.perf_counter() - t0:.1f} s ({args.threads} processes)",
          flush=True)

    report_blocks: dict[str, Any] = {}
    warn: dict[str, int] = {}
    for block in blocks:
        models = {}
        for model, m in block["models"].items():
            r = summarize([o for k, o in zip(keys, outs) if k == (block["name"], model)], m["splits"], m["precision"])
            for text, count in r.pop("warnings").items():
                warn[text] = warn.get(text, 0) + count
            models[model] = {"about": m["about"]} | r
            s = r["summary"]
            print(f"  {model}: ECE % " + "; ".join(
                f"{p} " + " ".join(f"{k} {100 * v['ece']['mean']:.2f}" for k, v in s[p].items()) for p in s),
                flush=True)
        report_blocks[block["name"]] = {"description": block["description"], "models": models}
    n_fits = warn.pop("", 0)
    unavailable = h.method_table(FROM_FP32)[1]
    report: dict[str, Any] = {
        "study": "calibrators fitted at fp32, applied at lower precisions without refitting",
        "paper": SOURCE, "claim": CLAIM, "script": "benchmarks/study_cross_precision.py", "date": h.utc_now(),
        "quick": q, "seed": args.seed, "n_splits": args.splits, "threads": args.threads, "versions": h.versions(),
        "git_commit": h.git_commit(),
        "protocol": {
            "precisions": ("digits and seed models: the whole network emulated at " + ", ".join(
                QUICK["digits"] if q else EMULATED_CONFIGS) + " (PACS's precision: `precal.demo.config_precision`, "
                "the compute, else activation, else weight format); real logits: `round_logits` to "
                + ", ".join(QUICK["real"] if q else REAL_PRECISIONS) + "."),
            "methods": ("fitted once at fp32: " + ", ".join(f"{k} = `{m.describe()}`" for k, m in
                                                           h.method_table(FROM_FP32, precision="fp32")[0].items())
                        + f", {COMPOSITE} = {PACSThenTopLabel.describe('fp32')}"
                        + "; applied at P as fitted (\"fp32\") and, for those with a `precision` parameter, "
                          "re-targeted by a copy with `set_params(precision=P)` (\"fp32→P\"); refitted at P: "
                        + ", ".join(f"{k} (`{m.describe()}`)"
                                    for k, m in h.method_table(REFIT, precision="P")[0].items())
                        + f", {COMPOSITE} (the same with precision P)"
                        + "; the uncalibrated softmax at P."),
            "splits": f"{args.splits} stratified 50/50 calibration/test splits per model (split s from "
                      f"np.random.default_rng(seed + s)), the same rows at every precision",
            "n_bins": h.N_BINS,
        },
        "notes": notes, "unavailable": unavailable, "blocks": report_blocks,
        "warnings": [f"{text} ({count} of {n_fits} fits)" for text, count in sorted(warn.items())],
    }
    report = h.json_ready(report)
    report["figures"] = figure(report, staged, paths)
    report["where_pacs_helps"] = where_pacs_helps(report)
    report["verdict"] = verdict(report)
    report["reading"] = reading(report)
    report["wall_time_s"] = time.perf_counter() - start
    report["cpu_time_s"] = h.cpu_seconds() - cpu_start
    report["logits_cache"] = dict(sd.CACHE_STATS)
    written = h.write_study(staged, paths, report, *render(report))
    print(f"\nVerdict: {report['verdict']['word']}. {report['verdict']['reason']}")
    for line in report["reading"]:
        print(f"- {line}")
    print(f"wall time {report['wall_time_s']:.1f} s, CPU time {report['cpu_time_s']:.1f} s; "
          f"wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(h.run_study("study_cross_precision", main))
