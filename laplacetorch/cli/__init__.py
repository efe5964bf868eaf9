"""Command-line front end: ``laplacetorch demo | evaluate | select`` (also ``python -m
laplacetorch``).

Errors print one line, ``laplacetorch: error: <message>``, on stderr: exit status 2 for bad
arguments (checked before any work starts), 1 for a run that fails (a missing data set, the
library refusing a configuration, an unwritable file), 130 when interrupted; ``--debug``
shows the traceback instead.

Modules: :mod:`.entry_point` (:func:`main`: dispatch, exit statuses), :mod:`.parser` (the
options and help), :mod:`.arguments` (checks of option values, :class:`UsageError`),
:mod:`.demo`, :mod:`.evaluate` and :mod:`.select` (one per command), :mod:`.output` (the
atomic ``--out`` directory), :mod:`.training` (the networks and their training loop) and
:mod:`.digits` (the digits split).
"""

from __future__ import annotations

# ``name as name``: private helpers re-exported for the tests (``cli._train`` …), not API
from .arguments import UsageError
from .arguments import _progress as _progress
from .demo import _DEMO_VARIANTS as _DEMO_VARIANTS
from .demo import _demo_notes as _demo_notes
from .demo import run_demo
from .entry_point import main
from .evaluate import _check_evaluate_args as _check_evaluate_args
from .evaluate import _evaluation_data as _evaluation_data
from .evaluate import run_evaluate
from .parser import PROG as PROG
from .parser import _parser as _parser
from .select import run_select
from .training import _train as _train

__all__ = ["UsageError", "main", "run_demo", "run_evaluate", "run_select"]
