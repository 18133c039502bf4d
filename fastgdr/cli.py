"""Shared plumbing for the thin scripts in ``tools/``."""

from __future__ import annotations

import sys
from typing import Callable

from fastgdr.errors import FastGDRError


def run_tool(main: Callable[[], int | None]) -> None:
    """Run a tool's ``main``; user errors print one message and exit with status 2."""
    try:
        status = main()
    except FastGDRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
