"""Reading and writing pose-network checkpoints, official GDRNPP ones included.

Accepted on load, as GDRNPP's own loader does:
- a bare state dict, or a dict with the state dict under ``"model"`` (detectron2 /
  fvcore checkpoints, and fastgdr's own) or ``"state_dict"``;
- keys prefixed with ``_module.`` (LightningLite) or ``module.`` (DataParallel);
- the geometric head's GroupNorms stored twice, as ``*.norm.*`` and ``*.gn.*``.

Loading compares every key and shape and refuses a partial load unless asked.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from fastgdr import __version__
from fastgdr.errors import CheckpointError
from fastgdr.outputs import atomic_write

WRAPPER_PREFIXES = ("_module.", "module.")
MAX_LISTED_KEYS = 25


@dataclass
class KeyReport:
    """How a state dict matches a model: keys missing, unexpected, or of another shape."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def format(self, max_listed: int = MAX_LISTED_KEYS) -> str:
        """Multi-line description naming the offending keys (all of them up to ``max_listed``)."""
        if self.ok:
            return "all keys and shapes match"
        lines = []
        for title, items in (
            ("missing from the checkpoint", self.missing),
            ("unexpected in the checkpoint", self.unexpected),
            (
                "shape mismatch (checkpoint vs model)",
                [f"{k}: {list(a)} vs {list(b)}" for k, a, b in self.mismatched],
            ),
        ):
            if items:
                lines.append(f"{len(items)} key(s) {title}:")
                lines += [f"  {item}" for item in items[:max_listed]]
                if len(items) > max_listed:
                    lines.append(f"  ... and {len(items) - max_listed} more")
        return "\n".join(lines)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file on the CPU without unpickling arbitrary objects.

    Only tensors and plain containers are read (``weights_only``): code pickled into a
    checkpoint never runs, and such a file is refused.

    Raises:
        CheckpointError: the file is missing, empty, not a PyTorch checkpoint, truncated,
            holds other objects, or is not a dict; the message says which.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a checkpoint file" if path.is_dir() else "not found"
        raise CheckpointError(f"checkpoint {what}: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes; an interrupted copy?)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {_unreadable_reason(path, size, exc)}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict (state dict or checkpoint), got {type(data).__name__}")
    return data


def _unreadable_reason(path: Path, size: int, exc: Exception) -> str:
    """Why torch could not read ``path``, in fastgdr's words (torch's own messages suggest
    loading with code execution enabled, which fastgdr never does)."""
    with path.open("rb") as f:
        head = f.read(4)
    is_zip = zipfile.is_zipfile(path)
    if head.startswith(b"PK") and not is_zip:
        return f"the zip archive is truncated or corrupt ({size} bytes; an interrupted copy or save?)"
    if not is_zip and not head.startswith(b"\x80"):  # neither torch's zip nor its legacy pickle format
        return f"not a PyTorch checkpoint ({size} bytes that are neither a zip archive nor a pickle)"
    if isinstance(exc, pickle.UnpicklingError):
        return (
            "it holds Python objects other than tensors and plain containers (pickled classes or code"
            + ("" if is_zip else ", or corrupt data")
            + "); fastgdr reads only tensors, numbers, strings, lists and dicts and never runs code from a "
            "checkpoint: save the weights as a state dict (torch.save(model.state_dict(), ...))"
        )
    if isinstance(exc, EOFError):
        return f"the file ends early ({size} bytes; truncated?)"
    text = str(exc).strip()
    first = text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
    return f"the file is corrupt or truncated ({size} bytes): {first}"


def extract_state_dict(checkpoint: Mapping[str, Any], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model state dict inside a checkpoint, normalized to fastgdr's key names."""
    state = checkpoint
    for wrapper in ("model", "state_dict"):
        if isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{source}: no tensors found (expected a state dict)")
    return fold_duplicate_group_norms(strip_wrapper_prefixes(tensors), source)


def strip_wrapper_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a ``_module.`` or ``module.`` prefix that every key carries."""
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def fold_duplicate_group_norms(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Map GDRNPP's duplicated ``*.gn.*`` GroupNorm keys onto ``*.norm.*``.

    Where both names exist they must hold equal tensors (they are one module upstream).
    """
    folded = dict(state)
    for key in list(state):
        head, sep, tail = key.rpartition(".gn.")
        if not sep:
            continue
        twin = f"{head}.norm.{tail}"
        value = folded.pop(key)
        if twin in folded:
            if folded[twin].shape != value.shape or not torch.equal(folded[twin], value):
                raise CheckpointError(
                    f"{source}: {key} and {twin} should be the same GroupNorm but differ"
                )
        else:
            folded[twin] = value
    return folded


def compare_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> KeyReport:
    """Compare keys and shapes of ``state`` against ``model.state_dict()``."""
    expected = model.state_dict()
    report = KeyReport(
        missing=[k for k in expected if k not in state],
        unexpected=[k for k in state if k not in expected],
    )
    for key, value in state.items():
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(expected[key].shape)))
    return report


def load_weights(
    model: nn.Module,
    checkpoint: str | Path | Mapping[str, Any],
    strict: bool = True,
    source: str | None = None,
) -> KeyReport:
    """Load a checkpoint (path or loaded dict) into ``model``.

    Args:
        strict: refuse (raise) unless every key and shape matches. With ``strict=False``
            the matching tensors are loaded and the report says what was skipped.
        source: how error messages name a loaded dict (default: its path, or "checkpoint").

    Returns:
        The key report (``report.ok`` is True after a strict load).

    Raises:
        CheckpointError: the file is missing or unreadable, a tensor holds NaN or
            infinite values, or (strict) keys mismatch.
    """
    if source is None:
        source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "checkpoint"
    data = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    state = extract_state_dict(data, source)
    report = compare_state_dict(model, state)
    if not report.ok and strict:
        raise CheckpointError(
            f"{source} does not match the model:\n{report.format()}\n"
            "(load it into the config it was trained with, or allow a partial load)"
        )
    mismatched = {k for k, _, _ in report.mismatched}
    usable = {k: v for k, v in state.items() if k not in mismatched and k not in report.unexpected}
    non_finite = [k for k, v in usable.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if non_finite:
        listed = ", ".join(non_finite[:5]) + (f" and {len(non_finite) - 5} more" if len(non_finite) > 5 else "")
        raise CheckpointError(
            f"{source}: {len(non_finite)} tensor(s) hold NaN or infinite values ({listed}); "
            "the run that wrote it diverged"
        )
    model.load_state_dict(usable, strict=False)
    return report


def save_checkpoint(path: str | Path, model: nn.Module, **extra: Any) -> Path:
    """Write ``{"model": state_dict, "fastgdr_version": …, **extra}`` atomically.

    The file is written next to its destination and renamed into place, so an
    interrupted or failing save (a full disk) never leaves a truncated checkpoint behind
    and keeps the previous one; its permissions follow the umask, as every other output.

    Raises:
        OutputError: the file cannot be written (the message says why and that the
            previous checkpoint is unchanged).
    """
    payload = {"model": model.state_dict(), "fastgdr_version": __version__, **extra}
    return atomic_write(path, lambda f: torch.save(payload, f), what="checkpoint")
