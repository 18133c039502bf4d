"""One benchmark run's results (:class:`BenchResult`) and their files: ``latency.csv``
and ``latency.json`` written and read back."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from fastgdr.bench.errors import BenchmarkError
from fastgdr.bench.rows import CSV_FIELDS, BenchRow
from fastgdr.bench.targets import TargetResult, evaluate_targets

RESULTS_CSV = "latency.csv"
RESULTS_JSON = "latency.json"
SCHEMA_VERSION = 3  # 2: the "fused" column; 3: per-round samples, the matmul timed in each round-robin


@dataclass
class BenchResult:
    """Everything one benchmark run measured (what ``latency.json`` holds).

    ``matmul`` holds the 2048² fp32 matmul's size, dtype and device, ``by_rois`` (its
    statistics and GFLOP/s in the round-robin of each ROI count) and ``gflop_per_s`` (the
    median over those). ``samples`` are the per-round times (ms) of every PyTorch row
    (:func:`~fastgdr.bench.rows.row_key`) and of the matmul
    (:func:`~fastgdr.bench.rows.matmul_key`).
    """

    environment: dict[str, Any]
    settings: dict[str, Any]
    matmul: dict[str, Any]
    configs: dict[str, dict[str, Any]]
    rows: list[BenchRow] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def matmul_gflop_per_s(self) -> float | None:
        return self.matmul.get("gflop_per_s")

    def targets(self) -> list[TargetResult]:
        return evaluate_targets(self.rows, self.samples)


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_results(result: BenchResult, out: str | Path) -> tuple[Path, Path]:
    """Write ``OUT/latency.csv`` (the rows, :data:`~fastgdr.bench.rows.CSV_FIELDS`) and
    ``OUT/latency.json`` (environment, settings, matmul, configs, rows, per-round samples and
    the evaluated targets)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / RESULTS_CSV, out / RESULTS_JSON
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in result.rows)
    data = {
        "schema_version": SCHEMA_VERSION,
        "environment": result.environment,
        "settings": result.settings,
        "matmul": result.matmul,
        "configs": result.configs,
        "rows": [{k: _finite(v) for k, v in dataclasses.asdict(r).items()} for r in result.rows],
        "samples_ms": result.samples,
        "targets": [dataclasses.asdict(t) for t in result.targets()],
    }
    json_path.write_text(json.dumps(data, indent=2))
    return csv_path, json_path


# Columns newer than schema 1, with the value that files written before them imply.
_ADDED_COLUMNS = {"fused": "False"}
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(BenchRow)}  # "str", "int", "float", "bool"


def _row_from_csv(path: Path, line: int, values: Mapping[str, str]) -> BenchRow:
    """A row of ``latency.csv`` (all strings) back as a typed :class:`~fastgdr.bench.rows.BenchRow`."""
    parse: dict[str, Callable[[str], Any]] = {
        "str": str, "int": int, "float": float, "bool": lambda v: {"True": True, "False": False}[v],
    }
    typed = {}
    for name in CSV_FIELDS:
        value = values.get(name, _ADDED_COLUMNS.get(name))
        if value is None:
            raise BenchmarkError(f"{path}: line {line} lacks column {name!r}")
        try:
            typed[name] = parse[_FIELD_TYPES[name]](value)
        except (KeyError, ValueError):
            raise BenchmarkError(f"{path}: line {line}, column {name!r}: bad value {value!r}") from None
    return BenchRow(**typed)


def _read_csv(path: Path) -> BenchResult:
    with path.open(newline="") as f:
        rows = [_row_from_csv(path, i, values) for i, values in enumerate(csv.DictReader(f), start=2)]
    matmul = {"gflop_per_s": rows[0].matmul_gflop_per_s} if rows else {}
    return BenchResult({}, {}, matmul, {}, rows)


def read_results(path: str | Path) -> BenchResult:
    """Read a benchmark's ``latency.json``, the folder that holds it, or its ``latency.csv``.

    A CSV gives the rows only: no environment, settings or config architectures (the
    report then joins runs by name); the matmul GFLOP/s is taken from its rows.

    Raises:
        BenchmarkError: naming the file and what is missing or malformed.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_JSON
    if not path.is_file():
        raise BenchmarkError(f"benchmark results not found: {path} (written by tools/bench_latency.py)")
    if path.suffix == ".csv":
        return _read_csv(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{path}: not valid JSON (line {exc.lineno}): {exc.msg}") from None
    missing = [k for k in ("environment", "settings", "matmul", "configs", "rows") if k not in data]
    if missing:
        raise BenchmarkError(f"{path}: missing key(s) {', '.join(missing)}; is this a latency.json of tools/bench_latency.py?")
    rows = []
    for i, row in enumerate(data["rows"]):
        row = {**{k: _ADDED_COLUMNS[k] == "True" for k in _ADDED_COLUMNS}, **row}
        absent = [k for k in CSV_FIELDS if k not in row]
        if absent:
            raise BenchmarkError(f"{path}: rows[{i}] lacks {', '.join(absent)}")
        values = {k: (float("nan") if row[k] is None else row[k]) for k in CSV_FIELDS}
        rows.append(BenchRow(**values))
    samples = {k: [float(v) for v in values] for k, values in data.get("samples_ms", {}).items()}
    return BenchResult(data["environment"], data["settings"], data["matmul"], data["configs"], rows, samples)
