"""Shared plumbing for the thin scripts in ``tools/``."""

from __future__ import annotations

import sys
import warnings
from typing import Callable

from fastgdr.errors import FastGDRError, FastGDRWarning


_python_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """fastgdr's warnings as one ``warning: …`` line on stderr; others as Python shows them."""
    if issubclass(category, FastGDRWarning):
        print(f"warning: {message}", file=sys.stderr if file is None else file)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


def run_tool(main: Callable[[], int | None]) -> None:
    """Run a tool's ``main``; user errors print one message and exit with status 2,
    fastgdr's warnings (:class:`~fastgdr.errors.FastGDRWarning`) print one line each."""
    warnings.showwarning = _show_warning
    warnings.simplefilter("always", FastGDRWarning)
    try:
        status = main()
    except FastGDRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
