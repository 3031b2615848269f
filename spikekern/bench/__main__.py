"""spikekern's benchmark tools.

    python -m spikekern.bench report RESULTS [--out DIR]

report: writes report.md and PNG plots from RESULTS, the JSON-lines file the benchmarks append to or a
pytest-benchmark --benchmark-json file (pytest benchmarks --benchmark-json=RESULTS.json), to DIR (default:
beside RESULTS). The plots need matplotlib; without it only the tables are written.
"""

import argparse
from pathlib import Path

from .._cli import run_main
from .report import write_report

PROGRAM = "python -m spikekern.bench"


def _parser():
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    report = commands.add_parser(
        "report", help="tables and plots from a results file", description=__doc__.split("\n\n")[2]
    )
    report.add_argument("results", type=Path, metavar="RESULTS", help="JSON-lines results or --benchmark-json file")
    report.add_argument("--out", type=Path, metavar="DIR", help="where to write the report (default: beside RESULTS)")
    return parser


def main(argv=None):
    arguments = _parser().parse_args(argv)
    write_report(arguments.results, arguments.out)


if __name__ == "__main__":
    run_main(main, PROGRAM)
