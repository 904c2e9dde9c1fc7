"""How long the ``precal`` command takes to answer ``--help`` and to refuse bad arguments.

Each case is a fresh ``python -m precal ...`` process, timed from start to exit
(``time.perf_counter`` around ``subprocess.run``), run from the repository root so the
package of this checkout is the one imported. The baseline is ``python -c pass`` timed in
the same run: the cost of starting Python at all. Reported per case: the median and
minimum wall time over R rounds and the ratio of the median to the baseline's median. The
cases go round-robin (one process of each per round, R rounds, after one untimed warm-up
round), so a change of load on a shared machine hits every case alike.

Cases:

* ``precal --help``, ``precal sweep --help``;
* argument errors: a missing LOGITS file, ``--cv 1``, ``sweep --configs nonsense`` (config
  names are checked without torch) and ``sweep --out`` into a folder that does not exist
  (the path checks run before anything heavy is imported);
* for scale: ``python -c "import torch"`` and ``python -c "import precal.calibration"``,
  what every case above cost before the command imported lazily.

Target (issue 16): ``--help`` and argument errors under 0.5 s. The ratio to
``python -c pass`` is the machine-independent number: it says how much of the time is
precal's own rather than Python's start-up.

The 1-, 5- and 15-minute load averages at the start and end of the run are recorded with
the results. Results go to ``benchmarks/results/cli.{md,json}``; ``--out DIR`` writes them
under DIR instead; ``--quick`` runs 3 rounds without the two reference imports and writes
to a temporary folder (a smoke test).

Run from the repository root::

    python benchmarks/bench_cli.py            # 9 rounds, refreshes the committed results
    python benchmarks/bench_cli.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
RERUN_COMMAND = "python benchmarks/bench_cli.py"
#: Seconds within which ``--help`` and argument errors must answer (issue 16).
TARGET_SECONDS = 0.5
BASELINE = "python -c pass"


def cases(scratch: Path, *, reference: bool = True) -> dict[str, dict[str, Any]]:
    """Label -> argv (after the interpreter), expected exit code and whether the target applies;
    ``reference`` adds the heavy imports for scale."""
    logits = scratch / "z.npy"
    logits.write_bytes(b"\x93NUMPY\x01\x00v\x00" + b"{'descr': '<f8', 'fortran_order': False, 'shape': (4, 3), }"
                       .ljust(117) + b"\n" + bytes(96))
    table = {
        BASELINE: {"argv": ["-c", "pass"], "code": 0, "target": False},
        "precal --help": {"argv": ["-m", "precal", "--help"], "code": 0, "target": True},
        "precal sweep --help": {"argv": ["-m", "precal", "sweep", "--help"], "code": 0, "target": True},
        "evaluate: missing LOGITS file": {
            "argv": ["-m", "precal", "evaluate", str(scratch / "missing.npz")], "code": 2, "target": True},
        "evaluate: --cv 1": {"argv": ["-m", "precal", "evaluate", str(logits), "--cv", "1"], "code": 2,
                             "target": True},
        "sweep: unknown --configs name": {
            "argv": ["-m", "precal", "sweep", "models:build", str(logits), "--configs", "nonsense", "--out",
                     str(scratch / "o.npz")], "code": 2, "target": True},
        "sweep: --out in a missing folder": {
            "argv": ["-m", "precal", "sweep", "models:build", str(logits), "--out",
                     str(scratch / "missing" / "o.npz")], "code": 2, "target": True},
    }
    if reference:
        table['python -c "import torch"'] = {"argv": ["-c", "import torch"], "code": 0, "target": False}
        table['python -c "import precal.calibration"'] = {"argv": ["-c", "import precal.calibration"], "code": 0,
                                                          "target": False}
    return table


def _run_once(argv: list[str], expected: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], cwd=REPO_ROOT, capture_output=True, text=True, env=env,
                          timeout=300)
    elapsed = time.perf_counter() - start
    if proc.returncode != expected:
        raise RuntimeError(f"{argv}: exit code {proc.returncode}, expected {expected}:\n{proc.stderr[-2000:]}")
    return elapsed


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def measure(rounds: int, *, reference: bool = True) -> dict[str, Any]:
    load_start = _loadavg()
    with tempfile.TemporaryDirectory() as tmp:  # TMP in the table
        table = cases(Path(tmp), reference=reference)
        times: dict[str, list[float]] = {label: [] for label in table}
        for round_no in range(rounds + 1):  # round 0: warm-up (file system caches, .pyc files)
            for label, case in table.items():
                elapsed = _run_once(case["argv"], case["code"])
                if round_no:
                    times[label].append(elapsed)
    base = statistics.median(times[BASELINE])
    rows = []
    for label, case in table.items():
        median = statistics.median(times[label])
        rows.append({
            "case": label,
            "command": "python " + " ".join(a if " " not in a else repr(a) for a in case["argv"]).replace(tmp, "TMP"),
            "median_s": median,
            "min_s": min(times[label]),
            "ratio_to_python": median / base,
            "target_s": TARGET_SECONDS if case["target"] else None,
            "met": (median < TARGET_SECONDS) if case["target"] else None,
            "times_s": times[label],
        })
    return {
        "benchmark": "precal CLI start-up",
        "rerun": RERUN_COMMAND,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "rounds": rounds,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": _loadavg(),
        "rows": rows,
    }


def to_markdown(report: dict[str, Any]) -> str:
    targeted = [r for r in report["rows"] if r["target_s"] is not None]
    worst = max(targeted, key=lambda r: r["median_s"])
    verdict = "met" if all(r["met"] for r in targeted) else "not met"
    lines = [
        "# precal CLI start-up benchmark",
        "",
        f"Generated by `{report['rerun']}` on {report['date']}: Python {report['python']}, {report['platform']}, "
        f"{report['cpu_count']} CPUs; load average (1, 5, 15 min) {report['load_average_start']} at the start, "
        f"{report['load_average_end']} at the end.",
        "",
        f"Target: `--help` and argument errors answer in under {TARGET_SECONDS:g} s: **{verdict}** (slowest: "
        f"{worst['case']}, median {worst['median_s']:.3f} s, {worst['ratio_to_python']:.2f}x `python -c pass`).",
        "",
        f"Each case is a fresh process, timed from start to exit; median and minimum over {report['rounds']} "
        "round-robin rounds after one warm-up round. `x python` is the median over the median of "
        "`python -c pass` in the same run.",
        "",
        "| case | command | median s | min s | x python | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        target = f"< {r['target_s']:g} s" if r["target_s"] is not None else "-"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "no")
        lines.append(f"| {r['case']} | `{r['command']}` | {r['median_s']:.3f} | {r['min_s']:.3f} | "
                     f"{r['ratio_to_python']:.2f} | {target} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds without the heavy reference imports, results to a temporary folder")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 9; 3 with --quick)")
    parser.add_argument("--out", type=Path, default=None, help="folder for cli.md and cli.json")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 9)
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench_cli_")) if args.quick else DEFAULT_RESULTS_DIR)
    report = measure(rounds, reference=not args.quick)
    text = to_markdown(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cli.md").write_text(text)
    (out / "cli.json").write_text(json.dumps(report, indent=2) + "\n")
    print(text)
    print(f"Results written to {out}/cli.md and cli.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
