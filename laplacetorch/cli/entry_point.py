"""The ``laplacetorch`` console script: parse, run the command, and turn an error into one
line on stderr and an exit status (2: bad arguments, 1: the run failed, 130: interrupted);
``--debug`` shows the traceback instead."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .arguments import UsageError, _progress
from .demo import run_demo
from .evaluate import run_evaluate
from .parser import PROG, _parser
from .select import run_select


def _one_line(err: BaseException) -> str:
    lines = [s.strip() for s in str(err).splitlines() if s.strip()]
    return "; ".join(lines) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``laplacetorch`` console script; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a one-line usage error
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 2
    debug = args.debug
    try:
        if args.command == "demo":
            run_demo(seed=args.seed, epochs=args.epochs, progress=_progress(args.progress))
        elif args.command == "evaluate":
            run_evaluate(args)
        else:
            run_select(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except UsageError as err:
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, RuntimeError, OSError) as err:  # MemoryBudgetError too
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    return 0
