"""Shared plumbing for the thin scripts in ``tools/``."""

from __future__ import annotations

import sys
import warnings
from typing import TYPE_CHECKING, Callable

from fastgdr.errors import FastGDRError, FastGDRWarning

if TYPE_CHECKING:
    import torch

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


def device_option(name: str, option: str = "--device") -> "torch.device":
    """The torch device a ``--device`` value names, if this machine has it.

    Raises:
        FastGDRError: an unknown device, or a CUDA device this torch build or machine
            does not have (checked before any work starts).
    """
    import torch

    valid = "cpu, cuda or cuda:<index>"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise FastGDRError(f"{option} {name!r} is not a device; valid: {valid}") from None
    if device.type not in ("cpu", "cuda"):
        raise FastGDRError(f"{option} {name!r} is not supported; valid: {valid}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise FastGDRError(f"{option} {name}: this torch ({torch.__version__}, {build}) sees no CUDA device; "
                               "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FastGDRError(f"{option} {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device
