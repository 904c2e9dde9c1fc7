"""Study: is ``reg_region=10`` a sensible default for FuzzyDirichletCalibrator?

``FuzzyDirichletCalibrator`` gives region ``r`` the map ``(W + ΔW_r, b + Δb_r)`` and penalises
the deviations by ``ρ (‖ΔW_r‖²/#W + ‖Δb_r‖²/K)`` (``reg_region``). Its current design starts
from a cross-validated ``DirichletCalibrator`` (stage 1) and keeps the gated maps (stage 2)
only when they beat that map on every held-out fold; otherwise it *is* Dirichlet's map. So
``ρ`` now decides how free the gated candidate is, and the held-out check decides whether it
is used at all. The question: with that check, is the default ``ρ = 10`` a sensible choice,
or would another ``ρ`` calibrate held-out data clearly better?

A. **Data** (``study_fuzzy``'s builders, imported): ``digits-10`` (the precal demo CNN on its
   899 held-out images, the whole network at ``w4a4`` and at ``fp32``), ``resnet50-10`` (the
   CIFAR-10 test logits of ``../shared/data/logits/resnet50_cifar10.npz``, as stored and
   rounded to ``logit-int4``) and ``resnet50-3`` (its three most confused classes). The
   ResNet-50 sets are skipped with a note when the file is absent.
B. **Protocol.** ``--splits`` (10) stratified 50/50 splits (``harness.make_splits``). For each
   fit source (INT4: ``w4a4`` / ``logit-int4``; ``fp32``) every calibrator is fitted on the
   calibration half and scored on the test half of the *same* logits (the deployed precision
   is the fitted one): ``TemperatureScaling()``, ``DirichletCalibrator()`` and
   ``FuzzyDirichletCalibrator(reg_region=ρ, random_state=seed + s)`` for ``ρ`` in ``--rho``
   (0.1, 1, 10, 100), every other parameter at its default; and, to show what the check
   guards against, ``ρ = 10`` with ``check_gates=False`` (the gated fit always kept).
   Recorded per fit: test NLL, ECE, ACE, accuracy (``harness.scores``), training NLL,
   whether the gated maps were kept (``gated_``), the region spread (RMS over entries of
   ``W_r - mean_r W_r`` and ``b_r - mean_r b_r``; 0 = one map) and the fit time.
C. **Verdict** (``harness.paired``, one-sd rule, NLL differences at most :data:`NLL_TOL` not
   counted as clear): ``ρ = 10`` is a sensible default when, in every data set x fit source,
   its test NLL is not clearly above Dirichlet's and no other ``ρ`` of the grid has clearly
   lower test NLL.

Outputs: ``benchmarks/results/study_fuzzy_reg.{json,md}``,
``docs/figures/study-fuzzy-reg-nll-ece.png`` and the generated region of
``docs/study-fuzzy-reg.md`` (the hand-written text around it is kept). Run from the
repository root::

    python benchmarks/study_fuzzy_reg.py --threads 1   # full run
    python benchmarks/study_fuzzy_reg.py --quick       # smoke test into a temp dir
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks.*
from benchmarks import harness as h  # noqa: E402
from benchmarks import study_fuzzy as sf  # noqa: E402

SCRIPT = "benchmarks/study_fuzzy_reg.py"
RERUN = f"python {SCRIPT}"
MARKS = h.generated_marks(SCRIPT)
DEFAULT_RHO = 10.0
RHO_GRID = (0.1, 1.0, 10.0, 100.0)
RHO_QUICK = (1.0, 10.0)
UNCHECKED = "ρ=10, no check"
#: data set -> {fit source kind: the logits it names}
SOURCES = {"digits-10": {"int4": "w4a4", "fp32": "fp32"}, "resnet50-10": {"int4": "logit-int4", "fp32": "fp32"},
           "resnet50-3": {"int4": "logit-int4", "fp32": "fp32"}}
METRICS = ("accuracy", "ece", "ace", "nll")
#: Mean test-NLL differences at most this large are not called clear (values of ρ whose gates lose fit the same map).
NLL_TOL = 1e-4
QUICK = {"datasets": ("digits-10",), "sources": ("int4",), "max_iter": 30}
FIG_FILE = "study-fuzzy-reg-nll-ece.png"


def rho_label(rho: float) -> str:
    """``"ρ=0.1"``, ``"ρ=10"``: the method label of a fuzzy fit."""
    return f"ρ={rho:g}"


def method_spec(rhos: tuple[float, ...], max_iter: int | None) -> dict[str, Any]:
    """The study's methods by label, as :func:`harness.method_table` takes them."""
    cap = {} if max_iter is None else {"max_iter": max_iter}
    spec: dict[str, Any] = {"TS": "ts", "Dirichlet": "dirichlet"}
    spec |= {rho_label(r): ("fuzzy", {"reg_region": r, **cap}) for r in rhos}
    spec[UNCHECKED] = ("fuzzy", {"reg_region": DEFAULT_RHO, "check_gates": False, **cap})
    return spec


def region_spread(est: Any) -> float:
    """RMS over entries of ``W_r - mean_r W_r`` and ``b_r - mean_r b_r`` (0: every region applies one map)."""
    dw = est.coefs_ - est.coefs_.mean(axis=0)
    db = est.intercepts_ - est.intercepts_.mean(axis=0)
    return float(np.sqrt((np.sum(dw**2) + np.sum(db**2)) / (dw.size + db.size)))


def one_split(item: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any], int]) -> dict[str, Any]:
    """Fit every method on one calibration half; its test scores, training NLL, gates kept, spread, time."""
    from precal.metrics import negative_log_likelihood

    z, y, cal, test, spec, random_state = item
    out: dict[str, Any] = {}
    for label, factory in h.method_table(spec, random_state=random_state)[0].items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # not recorded here: study_fuzzy counts the fits' warnings
            t0 = time.perf_counter()
            est = factory().fit(z[cal], y[cal])
            seconds = time.perf_counter() - t0
        out[label] = h.scores(y[test], est.predict_proba(z[test]), METRICS) | {
            "train_nll": negative_log_likelihood(y[cal], est.predict_proba(z[cal])), "seconds": seconds,
            "gated": bool(getattr(est, "gated_", False)),
            "spread": region_spread(est) if hasattr(est, "coefs_") else None}
    return out


def summarize(outs: list[dict[str, Any]], rhos: tuple[float, ...]) -> dict[str, Any]:
    """Per method: per-split values, mean ± sd, gates kept, the paired differences against Dirichlet and ρ=10."""
    methods = {}
    for label in outs[0]:
        ps = {k: [o[label][k] for o in outs] for k in (*METRICS, "train_nll", "seconds")}
        e = {"per_split": ps, "summary": {k: h.mean_sd(v) for k, v in ps.items()},
             "n_gated": int(sum(o[label]["gated"] for o in outs)), "n_fits": len(outs)}
        if outs[0][label]["spread"] is not None:
            e["mean_spread"] = float(np.mean([o[label]["spread"] for o in outs]))
        methods[label] = e
    default = rho_label(DEFAULT_RHO)
    for label, e in methods.items():
        e["vs"] = {base: {k: h.paired(e["per_split"][k], methods[base]["per_split"][k],
                                      min_effect=NLL_TOL if k == "nll" else 0.0) for k in ("nll", "ece")}
                   for base in ("Dirichlet", default) if base != label and base in methods}
    return methods


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    default = rho_label(DEFAULT_RHO)
    rhos = [rho_label(r) for r in report["rho"]]
    above_dir, beaten, details = [], [], []
    for name, st in report["settings"].items():
        m = st["methods"]
        if m[default]["vs"]["Dirichlet"]["nll"]["verdict"] == "higher":
            above_dir.append(name)
        better = [r for r in rhos if r != default and m[r]["vs"][default]["nll"]["verdict"] == "lower"]
        if better:
            beaten.append(f"{name} (by {', '.join(better)})")
        best = min(rhos, key=lambda r: m[r]["summary"]["nll"]["mean"])
        details.append(f"{name}: test NLL Dirichlet {m['Dirichlet']['summary']['nll']['mean']:.4f}, "
                       + ", ".join(f"{r} {m[r]['summary']['nll']['mean']:.4f} (gated {m[r]['n_gated']}/{m[r]['n_fits']})"
                                   for r in rhos)
                       + f", {UNCHECKED} {m[UNCHECKED]['summary']['nll']['mean']:.4f} "
                         f"({m[UNCHECKED]['vs']['Dirichlet']['nll']['verdict']} vs Dirichlet); lowest mean: {best}.")
    n = len(report["settings"])
    gated = {r: sum(st["methods"][r]["n_gated"] for st in report["settings"].values()) for r in rhos}
    fits = sum(st["methods"][default]["n_fits"] for st in report["settings"].values())
    details.append("Gated maps kept by the held-out check, over all settings: "
                   + ", ".join(f"{r} {gated[r]}/{fits}" for r in rhos) + ".")
    def where(vs: str, word: str) -> list[str]:
        return [name for name, st in report["settings"].items()
                if st["methods"][UNCHECKED]["vs"][vs]["nll"]["verdict"] == word]

    for vs, than in (("Dirichlet", "Dirichlet's"), (default, f"the checked {default}'s")):
        above, below = where(vs, "higher"), where(vs, "lower")
        details.append(f"Without the check ({UNCHECKED}) the test NLL is clearly above {than} in {len(above)} of {n} "
                       f"settings" + (f" ({', '.join(above)})" if above else "") + f" and clearly below it in "
                       f"{len(below)}" + (f" ({', '.join(below)})." if below else "."))
    details.append(f"{default}'s test NLL is clearly above Dirichlet's in {len(above_dir)} of {n} settings"
                   + (f": {', '.join(above_dir)}." if above_dir else "."))
    details.append(f"Another ρ of the grid has clearly lower test NLL than {default} in {len(beaten)} of {n} settings"
                   + (f": {'; '.join(beaten)}." if beaten else "."))
    if not above_dir and not beaten:
        word = "sensible"
        reason = (f"Nowhere is {default}'s test NLL clearly above Dirichlet's, and no ρ of the grid is clearly "
                  "better in any setting.")
    else:
        word = "not supported"
        reason = " ".join(details[-2:])
    return {"word": word, "reason": reason, "details": details}


# --------------------------------------------------------------------------- figure and tables
def figure(report: dict[str, Any]) -> Any:
    """Test NLL and ECE minus Dirichlet's against ρ, one line per data set; rows fit sources."""
    from matplotlib.figure import Figure

    rhos, kinds = report["rho"], report["sources"]
    fig = Figure(figsize=(10.5, 3.2 * len(kinds) + 0.5), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(kinds), 2, squeeze=False))
    names = report["datasets"]
    for row, kind in zip(axes, kinds):
        for ax, metric, unit in zip(row, ("nll", "ece"), (1.0, 100.0)):
            ax.axhline(0.0, color="black", lw=1.0, label="DirichletCalibrator (0)")
            for i, name in enumerate(names):
                m = report["settings"][f"{name} / {kind}"]["methods"]
                d = [m[rho_label(r)]["vs"]["Dirichlet"][metric] for r in rhos]
                ax.errorbar(np.asarray(rhos) * (1.0 + 0.06 * (i - 1)), [unit * x["mean"] for x in d],
                            yerr=[unit * x["sd"] for x in d], fmt="o-", ms=4, capsize=2, color=f"C{i}", label=name)
                ax.axhline(unit * m[UNCHECKED]["vs"]["Dirichlet"][metric]["mean"], color=f"C{i}", ls=":", lw=1.0,
                           label=f"{name}: {UNCHECKED}")
            ax.set_xscale("log")
            ax.set_xlabel("reg_region ρ")
            ax.set_ylabel("test NLL − Dirichlet's" if metric == "nll" else "test ECE − Dirichlet's (points)")
            ax.set_title(f"fitted and tested on {kind} logits", fontsize="medium")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize="small")
    return fig


def _diff(metric: str, c: dict[str, Any]) -> str:
    value = f"{c['mean']:+.4f}" if metric == "nll" else f"{100 * c['mean']:+.2f}"
    mark = {"lower": " **↓**", "higher": " **↑**", "identical": " (=)"}.get(c["verdict"], "")
    return f"{value} ({c['n_lower']}/{c['n']}){mark}"


def tables(report: dict[str, Any]) -> list[str]:
    v = report["verdict"]
    md = [f"Run {report['date']} by `{report['command']}`: {report['n_splits']} splits, seed {report['seed']}, "
          f"`--threads {report['threads']}`, wall time {report['wall_time_s'] / 60:.1f} min"
          + (" (**quick smoke test**)" if report["quick"] else "") + "."]
    md += [f"- **{b}**: {a}" for b, a in report["about"].items()] + [f"- {n}" for n in report["notes"]]
    md += [f"- Methods: {report['methods']}.",
           "- Versions: " + ", ".join(f"{k} {val}" for k, val in report["versions"].items())
           + (f"; commit {report['git_commit']}" if report.get("git_commit") else "") + ".",
           "", f"**Verdict: ρ = {DEFAULT_RHO:g} is {v['word']}.** {v['reason']}", "", "### Computed summary", ""]
    md += [f"- {d}" for d in v["details"]]
    md += ["", "### Per setting", "",
           "Mean ± sd over splits. Δ columns: method − Dirichlet (or − ρ=10) on the test half, mean (splits where the "
           "method is lower / splits); **↓** / **↑** clearly lower / higher by the one-sd rule (NLL: and by more than "
           f"{NLL_TOL:g}), (=) identical on every split. gated: fits whose gated maps the held-out check kept; "
           "spread: region spread, mean over splits (0 = one map); fit s: mean fit time, one thread."]
    for name, st in report["settings"].items():
        md += ["", f"#### {name} ({st['logits']} logits, {st['n_calibration']} calibration / {st['n_test']} test rows)",
               "", "| method | test NLL | ΔNLL vs Dirichlet | ΔNLL vs ρ=10 | ECE % | ΔECE vs Dirichlet (pp) | "
               "accuracy % | train NLL | gated | spread | fit s |", "|---|" + "---:|" * 10]
        for label, e in st["methods"].items():
            s, vs = e["summary"], e["vs"]
            md.append(f"| {label} | {h.fmt_ms(s['nll'], 1, 4)} | "
                      + (_diff("nll", vs["Dirichlet"]["nll"]) if "Dirichlet" in vs else "—") + " | "
                      + (_diff("nll", vs[rho_label(DEFAULT_RHO)]["nll"]) if rho_label(DEFAULT_RHO) in vs else "—")
                      + f" | {h.fmt_ms(s['ece'], 100, 2)} | "
                      + (_diff("ece", vs["Dirichlet"]["ece"]) if "Dirichlet" in vs else "—")
                      + f" | {100 * s['accuracy']['mean']:.2f} | {s['train_nll']['mean']:.4f} | "
                      + (f"{e['n_gated']}/{e['n_fits']} | {e['mean_spread']:.4f}" if "mean_spread" in e else "— | —")
                      + f" | {s['seconds']['mean']:.2f} |")
    md += ["", "### Figure", ""] + h.figure_markdown(report["figures"])
    return md


def render(report: dict[str, Any], paths: dict[str, Path]) -> tuple[str, str]:
    """The results markdown and the docs page (its hand-written text kept)."""
    rel = os.path.relpath(paths["figures"], paths["md"].parent).replace(os.sep, "/")
    md = [f"# FuzzyDirichletCalibrator reg_region study: results{' (quick smoke test)' if report['quick'] else ''}",
          "", f"Generated by `{report['command']}`; see `docs/study-fuzzy-reg.md` for the reading. Do not edit by hand.",
          ""] + tables(report)
    doc = h.region_page(paths["doc"], "\n".join(tables(report)), MARKS,
                        title="Study: the default of FuzzyDirichletCalibrator's reg_region")
    return "\n".join(md).replace("](figures/", f"]({rel}/") + "\n", doc


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None, staged: h.StagedOutputs) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    h.add_study_arguments(parser, default_splits=10, quick_splits=2)
    parser.add_argument("--rho", type=float, nargs="+", default=None,
                        help="reg_region grid (default " + " ".join(f"{r:g}" for r in RHO_GRID) + "; it always "
                             f"includes {DEFAULT_RHO:g})")
    parser.add_argument("--page-only", action="store_true",
                        help="recompute the verdict from the results JSON and rewrite it and the markdown")
    args = h.finish_study_arguments(parser, parser.parse_args(argv))
    rhos = tuple(sorted(set(args.rho or (RHO_QUICK if args.quick else RHO_GRID)) | {DEFAULT_RHO}))
    if min(rhos) < 0:
        parser.error("--rho values must be >= 0")
    paths = h.output_paths(args, h.committed_outputs("study_fuzzy_reg", "study-fuzzy-reg.md"),
                           prefix="precal-study-fuzzy-reg-")
    if args.page_only:
        report = json.loads(paths["json"].read_text(encoding="utf-8"))
        report["verdict"] = h.json_ready(verdict(report))
        print("wrote " + ", ".join(str(x) for x in h.write_study(staged, paths, report, *render(report, paths))))
        return 0
    h.set_threads(args.threads)
    start, cpu_start = time.perf_counter(), h.cpu_seconds()
    max_iter = QUICK["max_iter"] if args.quick else None
    spec = method_spec(rhos, max_iter)
    data, notes = [d for d in sf.digits_datasets(args.seed) if d["name"] in SOURCES], []
    if args.quick:
        notes.append(f"Quick smoke test: digits-10 on INT4 logits only, fuzzy max_iter={max_iter}; not the results.")
    else:
        try:
            data += [d for d in sf.shared_datasets() if d["name"] in SOURCES]
        except h.DataError as exc:
            notes.append(f"Skipped the ResNet-50 data sets: {exc}.")
    kinds = QUICK["sources"] if args.quick else ("int4", "fp32")
    print(f"study_fuzzy_reg: ρ {', '.join(f'{r:g}' for r in rhos)}; {len(data)} data sets; {args.splits} splits; "
          f"--threads {args.threads}", flush=True)
    settings = {}
    for ds in data:
        splits = h.make_splits(ds["y"], args.splits, args.seed)
        for kind in kinds:
            t0 = time.perf_counter()
            z = np.asarray(ds["logits"][SOURCES[ds["name"]][kind]], dtype=np.float64)
            outs = h.parallel_map(one_split, [(z, ds["y"], cal, test, spec, args.seed + s)
                                              for s, (cal, test) in enumerate(splits)], args.threads)
            name = f"{ds['name']} / {kind}"
            settings[name] = {"logits": SOURCES[ds["name"]][kind], "n_calibration": int(len(splits[0][0])),
                              "n_test": int(len(splits[0][1])), "methods": summarize(outs, rhos)}
            m = settings[name]["methods"]
            print(f"  {name} ({time.perf_counter() - t0:.0f} s): NLL " + ", ".join(
                f"{k} {e['summary']['nll']['mean']:.4f}" for k, e in m.items()), flush=True)
    report: dict[str, Any] = {
        "study": "FuzzyDirichletCalibrator reg_region default under the held-out gate check", "script": SCRIPT,
        "command": RERUN + (" --quick" if args.quick else f" --splits {args.splits} --threads {args.threads}"),
        "date": h.utc_now(), "quick": args.quick, "seed": args.seed, "n_splits": args.splits, "threads": args.threads,
        "rho": list(rhos), "sources": list(kinds), "datasets": [d["name"] for d in data],
        "about": {d["name"]: d["about"] for d in data}, "notes": notes,
        "methods": ", ".join(f"{k} = `{m.describe()}`" for k, m in
                             h.method_table(spec, random_state="seed + s")[0].items()),
        "versions": h.versions(), "git_commit": h.git_commit(), "settings": settings,
    }
    report = h.json_ready(report)
    report["figures"] = [{"path": h.save_figure(figure(report), staged, paths, FIG_FILE), "caption": (
        f"Test NLL and ECE minus DirichletCalibrator's against reg_region ρ (mean ± sd of the paired difference over "
        f"{args.splits} splits), one line per data set; dotted: {UNCHECKED} (the gated fit always kept).")}]
    report["verdict"] = h.json_ready(verdict(report))
    report["wall_time_s"] = time.perf_counter() - start
    report["cpu_time_s"] = h.cpu_seconds() - cpu_start
    written = h.write_study(staged, paths, report, *render(report, paths))
    print(f"\nVerdict: ρ = {DEFAULT_RHO:g} is {report['verdict']['word']}. {report['verdict']['reason']}")
    print("\n".join(f"- {d}" for d in report["verdict"]["details"]))
    print(f"wall time {report['wall_time_s']:.1f} s; wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(h.run_study("study_fuzzy_reg", main))
