"""`sweeplab-report <experiment name | sweep id>`: a sweep's leaderboard, from its runs in MLflow.

    sweeplab-report <experiment name | sweep id> [--tracking-uri URI] [--out DIR] [--register NAME]
    python -m sweeplab.cli.report ...

Prints the table sorted by best_val_acc (swept parameters, best_val_acc, test_acc, status,
duration, reproduce command) and logs report.md, report.csv, test_acc.png and val_curves.png to
the sweep's parent run under `report/`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sweeplab.errors import SweeplabError
from sweeplab.sweep.report import find_parent, print_error, register, report_sweep
from sweeplab.track import tracking


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sweeplab-report", description="Leaderboard of a sweep, from its runs in MLflow."
    )
    parser.add_argument("target", help="a sweep id (tag sweeplab.sweep_id) or an experiment name")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or ./mlruns")
    parser.add_argument("--out", type=Path, help="also write the report files to this folder")
    parser.add_argument(
        "--register",
        metavar="NAME",
        help="register the best run's model as a new version of "
        "NAME in the Model Registry and point its alias @best at it",
    )
    args = parser.parse_args(argv)
    uri = args.tracking_uri or tracking.default_uri()
    client = tracking.client(uri)
    try:
        parent = find_parent(client, args.target)
        sweep = report_sweep(client, parent, args.out)
        print(f"logged to run {parent.info.run_id} under report/")
        if args.register:
            register(uri, sweep, args.register)
    except SweeplabError as e:
        return print_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
