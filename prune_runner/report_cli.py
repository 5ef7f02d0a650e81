"""`prune-report DIR [--out DIR]`: summarize finished runs under DIR into report.md and tradeoff.png.

Exit status: 0 report written; 1 no finished run under DIR; 2 bad input (e.g. DIR missing).
"""

from __future__ import annotations

import argparse
import sys

from .errors import UserError
from .pipes import closed_pipe_quiet
from .report import NoFinishedRunsError, aggregate, print_table, scan_runs, write_report

DESCRIPTION = """\
prune-report: summarize the finished runs under DIR (their results.json) into report.md, tradeoff.png
(accuracy against speed-up) and a table on the console; runs of one config over several seeds become
one row, mean ± std."""

EPILOG = """\
examples:
  # a sweep of 4 short runs, then one report over them (written to outputs/digits)
  prune-run -m method=l1,group_norm prune.speed_up=1.5,2 model=resnet20 schedule=tiny
  prune-report outputs/digits
  # the report of every run under outputs/, written elsewhere
  prune-report outputs --out reports/all

exit status: 0 report written; 1 no finished run under DIR; 2 bad input (e.g. DIR missing).
docs: docs/ in the repository (`make docs` builds the site into site/); docs/reference/ holds the files
of a run directory and the fields of results.json."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prune-report", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", metavar="DIR", help="folder holding run directories (searched recursively)")
    parser.add_argument("--out", metavar="DIR", default=None, help="where to write the report (default: DIR)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """prune-report; a reader that closes the pipe early (`prune-report DIR | head`) ends it quietly."""
    return closed_pipe_quiet(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        paths = write_report(args.dir, args.out)
    except NoFinishedRunsError as err:
        print(f"prune-report: {err}", file=sys.stderr)
        return 1
    except UserError as err:
        print(f"prune-report: error: {err}", file=sys.stderr)
        return 2
    runs, incomplete = scan_runs(args.dir)
    print_table(aggregate(runs), incomplete)  # its count line: the same as report.md's
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
