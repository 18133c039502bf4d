"""Where tools write: output paths that never replace finished work or the tool's inputs.

Every tool that writes claims its outputs before the long work starts:

- :func:`check_out_dir` / :func:`check_out_file`: ``--out`` is a folder (not a file) or a
  file (not a folder), as the tool needs;
- :func:`check_name_part`: values that become part of a file name (``--method``,
  ``--split``) are plain names, so nothing is written outside ``--out``;
- :func:`claim_outputs`: an output is never one of the tool's inputs (whatever the
  options), and the results of an earlier run are only replaced when the user says so
  (``--overwrite``).

Files are written with :func:`atomic_write` (a temporary file next to the destination,
renamed into place, with the permissions the umask gives every other output), so a
killed or failing write leaves the previous file intact; :func:`remove_stale_temporaries`
cleans up what a killed write left behind.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Mapping, Sequence

from fastgdr.errors import OutputError

MAX_LISTED = 5
TEMP_SUFFIX = ".tmp"


def check_out_dir(path: str | Path, option: str = "--out") -> Path:
    """``path`` as an output folder: it may exist as a folder or not exist yet.

    Raises:
        OutputError: ``path`` or one of its parents is a file.
    """
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists() and not folder.is_dir():
            what = "is a file" if folder == path else f"is inside {folder}, which is a file"
            raise OutputError(f"{option} {path} {what}; it must be a folder")
    return path


def check_out_file(path: str | Path, option: str = "--out") -> Path:
    """``path`` as an output file: not a folder, and its parent is not a file.

    Raises:
        OutputError: ``path`` is a folder or lies inside a file.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; it must name the file to write")
    check_out_dir(path.parent, option=f"{option} {path}: the parent")
    return path


def check_name_part(value: str, option: str) -> str:
    """A value that becomes part of an output file name: no path separator, no ``..``,
    not empty, not starting with a dot.

    Raises:
        OutputError: naming the option and the value.
    """
    separators = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if not value or value.startswith(".") or ".." in value or any(s in value for s in separators):
        raise OutputError(
            f"{option} {value!r} is not a plain name (it becomes part of a file name inside --out: "
            "no '/', '\\', '..' or leading '.')"
        )
    return value


def same_or_inside(path: str | Path, other: str | Path) -> bool:
    """Whether ``path`` is the file or folder ``other`` or lies inside the folder ``other``
    (symbolic links and hard links resolved)."""
    path, other = Path(path), Path(other)
    if path.exists() and other.exists():
        try:
            if os.path.samefile(path, other):
                return True
        except OSError:
            pass
    resolved, container = path.resolve(), other.resolve()
    return resolved == container or container in resolved.parents


def claim_outputs(
    outputs: Sequence[str | Path],
    *,
    inputs: Mapping[str, str | Path | None] | None = None,
    overwrite: bool = False,
    option: str = "--out",
    hint: str | None = None,
) -> list[Path]:
    """Check that a tool may write ``outputs``; return those that exist already.

    Checks, in this order: no two outputs are the same path; no output is (or contains)
    one of ``inputs`` — never allowed, ``--overwrite`` or not; and, unless ``overwrite``,
    that none of the outputs exists yet.

    Args:
        outputs: every file or folder the tool will write.
        inputs: option → path of what the tool reads (None entries are skipped).
        overwrite: whether existing outputs may be replaced.
        option: how messages name the output option.
        hint: what to suggest instead of ``--overwrite`` (default: pass --overwrite or
            choose another ``option``).

    Raises:
        OutputError: naming the paths and what to do.
    """
    paths = [Path(p) for p in outputs]
    seen: dict[Path, Path] = {}
    for path in paths:
        key = path.resolve()
        if key in seen:
            raise OutputError(f"{option}: {seen[key]} and {path} are the same file; choose other names")
        seen[key] = path
    for name, source in (inputs or {}).items():
        if source is None:
            continue
        for path in paths:
            if same_or_inside(source, path):
                raise OutputError(
                    f"{option} would overwrite the input {name} {source} (with {path}); choose another {option}"
                )
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        listed = ", ".join(str(p) for p in existing[:MAX_LISTED])
        more = f" and {len(existing) - MAX_LISTED} more" if len(existing) > MAX_LISTED else ""
        one = len(existing) == 1
        hint = hint or f"pass --overwrite to replace {'it' if one else 'them'}, or choose another {option}"
        raise OutputError(f"{listed}{more} already exist{'s' if one else ''} (results of an earlier run): {hint}")
    return existing


def remove_outputs(paths: Iterable[str | Path]) -> None:
    """Delete files and folders (an ``--overwrite`` run clearing an earlier run's outputs)."""
    for path in map(Path, paths):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _new_temporary(path: Path) -> tuple[int, Path]:
    """An exclusive new file ``.<name>.<random>.tmp`` next to ``path``, created with mode
    0666 less the umask (as every other output; ``tempfile`` would make it 0600)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], what: str = "file") -> Path:
    """Write ``path`` through ``write(file)`` into a temporary file renamed into place.

    A write that fails or is interrupted leaves ``path`` as it was and removes the
    temporary file (a killed process leaves it: see :func:`remove_stale_temporaries`).

    Raises:
        OutputError: the file cannot be written (disk full, no permission, …): the
            message names it, says why and that the previous file is unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = _new_temporary(path)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)) and _is_write_failure(exc):
            raise OutputError(_write_failure_message(path, exc, what)) from None
        raise
    return path


def atomic_write_text(path: str | Path, text: str, what: str = "file") -> Path:
    """:func:`atomic_write` of UTF-8 text."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data), what)


def _is_write_failure(exc: BaseException) -> bool:
    """OS errors, and torch's "PytorchStreamWriter failed writing file" (its serializer
    reports a full disk as a RuntimeError)."""
    return isinstance(exc, OSError) or "failed writing" in str(exc) or "unexpected pos" in str(exc)


def _write_failure_message(path: Path, exc: BaseException, what: str) -> str:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        cause = "the disk is full"
    elif isinstance(exc, OSError):
        cause = os.strerror(exc.errno) if exc.errno is not None else (str(exc) or type(exc).__name__)
    else:  # torch's serializer: "PytorchStreamWriter failed writing file data/3: file write failed"
        cause = "the write failed (is the disk full?)"
    try:
        free = shutil.disk_usage(path.parent).free
        space = f"; {free / 2**20:.0f} MiB free on that disk"
    except OSError:
        space = ""
    previous = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
    return f"cannot write {what} {path}: {cause}{space}; {previous}"


def remove_stale_temporaries(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete ``.<name>.*.tmp`` files that a killed :func:`atomic_write` left in ``folder``.

    Call it when a run starts, before anything of that run writes (a temporary file of
    another live writer into the same folder would be removed too).
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for name in names:
        for tmp in folder.glob(f".{name}.*{TEMP_SUFFIX}"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed
