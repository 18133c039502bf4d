"""The configurations a benchmark times: ``--configs`` entries resolved to files and
model configs, and the architecture key that says which configs time the same."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from fastgdr.bench.errors import BenchmarkError
from fastgdr.config import ModelConfig, load_config, to_dict


def config_label(name: str) -> str:
    """The name rows carry for a ``--configs`` entry: the name itself or a file's stem."""
    return Path(name).stem if name.endswith((".yaml", ".yml")) or "/" in name else name


def resolve_config(name: str, config_dir: str | Path) -> Path:
    """``name`` → ``config_dir/<name>.yaml``; a path to an existing file is taken as is.

    Raises:
        BenchmarkError: naming the valid config names when neither exists.
    """
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or "/" in name:
        if not path.is_file():
            raise BenchmarkError(f"config file not found: {path}")
        return path
    candidate = Path(config_dir) / f"{name}.yaml"
    if not candidate.is_file():
        names = sorted(p.stem for p in Path(config_dir).glob("*.yaml"))
        raise BenchmarkError(
            f"unknown config {name!r}: there is no {candidate}. Valid names: {', '.join(names) or '(none)'}"
            " (or pass a path to a YAML file)"
        )
    return candidate


def load_bench_configs(
    names: Sequence[str], config_dir: str | Path, num_classes: int = 1, overrides: Sequence[str] = ()
) -> dict[str, tuple[Path, ModelConfig]]:
    """{label: (file, model config)} for ``--configs`` entries, in order.

    ``model.num_classes`` is set to ``num_classes``, then ``overrides`` (dotted, e.g.
    ``model.input_res=128``) apply to every config.
    """
    if not names:
        raise BenchmarkError("no configs to benchmark")
    configs: dict[str, tuple[Path, ModelConfig]] = {}
    for name in names:
        label = config_label(name)
        if label in configs:
            raise BenchmarkError(f"config {label!r} is listed twice")
        path = resolve_config(name, config_dir)
        configs[label] = (path, load_config(path, [f"model.num_classes={num_classes}", *overrides]).model)
    return configs


def architecture_key(cfg: ModelConfig) -> str:
    """What decides a network's cost, as a canonical JSON string.

    Backbone name and feature level, crop size, head and Patch-PnP widths, region count;
    not the class count, the weights or the input normalization. Two configs with the
    same key time the same (up to the out layer's class channels).
    """
    data = to_dict(cfg)
    key = {
        "backbone": [data["backbone"]["name"], data["backbone"]["out_index"]],
        "input_res": data["input_res"],
        "geo_head": data["geo_head"],
        "pnp": data["pnp"],
        "num_regions": data["num_regions"],
    }
    return json.dumps(key, sort_keys=True)
