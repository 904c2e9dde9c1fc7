"""The ``precal`` command: argument parsing and printing only; the work is in the library."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import __version__

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="precal",
        description="Measure, emulate and correct precision-induced miscalibration of classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"precal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="train a small CNN on scikit-learn's digits, emulate precisions, calibrate, print a table",
        description=(
            "Train a small CNN on half of scikit-learn's bundled digits images, run it at several "
            "emulated precisions (fp32, bf16, fp8_e4m3, w8a8, w4a8, w4a4), fit temperature scaling "
            "and PACS on half of the held-out logits at each precision and report accuracy, ECE, ACE, "
            "NLL and Brier score before and after calibration on the other half."
        ),
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed for the split and training (default 0)")
    demo.add_argument("--epochs", type=int, default=40, help="training epochs (default 40)")
    demo.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import format_summary, run_demo

    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}.")
    result = run_demo(random_state=args.seed, epochs=args.epochs)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(format_summary(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``precal`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return _run_demo(args)
    except (ValueError, TypeError, OSError) as exc:
        print(f"precal {args.command}: error: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse rejects it first
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
