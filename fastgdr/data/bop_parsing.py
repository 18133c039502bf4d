"""Parsing and validation of the BOP JSON files: ``models_info.json``, ``scene_camera.json``
and the per-image lists of ``scene_gt.json`` / ``scene_gt_info.json``, the checks that they
agree on image ids, and the field readers behind them. Every problem raises
:class:`~fastgdr.errors.DatasetError` with a message naming the file, the image / entry /
object and the field. :class:`fastgdr.data.bop.BopDataset` reads datasets with these."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from fastgdr.data.bop_records import CameraInfo, GTInfo, GTInstance, ObjectInfo
from fastgdr.errors import DatasetError

T = TypeVar("T")


# ------------------------------------------------------------------------------------
# JSON and field validation
# ------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    """Parse a JSON file; a missing file or a syntax error raises DatasetError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot be read: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(entry: dict[str, Any], field: str, where: str) -> Any:
    if field not in entry:
        raise DatasetError(f"{where}: missing '{field}'")
    return entry[field]


def _number_list(value: Any, n: int, field: str, where: str) -> np.ndarray:
    """Validate a list of ``n`` finite numbers and return it as float64 (n,)."""
    if not isinstance(value, list):
        raise DatasetError(
            f"{where}: '{field}' must be a list of {n} numbers, got {type(value).__name__}"
        )
    if len(value) != n:
        raise DatasetError(f"{where}: '{field}' must have {n} numbers, got {len(value)}")
    bad = [v for v in value if not _is_number(v)]
    if bad:
        raise DatasetError(f"{where}: '{field}' must have {n} numbers, got {bad[0]!r} in it")
    return np.asarray(value, dtype=np.float64)


def _numbers(entry: dict[str, Any], field: str, n: int, where: str) -> np.ndarray:
    return _number_list(_require(entry, field, where), n, field, where)


def _number(entry: dict[str, Any], field: str, where: str) -> float:
    value = _require(entry, field, where)
    if not _is_number(value):
        raise DatasetError(f"{where}: '{field}' must be a number, got {value!r}")
    return float(value)


def _positive(entry: dict[str, Any], field: str, where: str) -> float:
    value = _number(entry, field, where)
    if value <= 0:
        raise DatasetError(f"{where}: '{field}' must be positive, got {value}")
    return value


def _integer(entry: dict[str, Any], field: str, where: str) -> int:
    value = _require(entry, field, where)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DatasetError(f"{where}: '{field}' must be an integer, got {value!r}")
    return value


def _mapping(value: Any, where: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DatasetError(f"{where}: expected {what}, got {type(value).__name__}")
    return value


def _list(value: Any, where: str, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise DatasetError(f"{where}: expected {what}, got {type(value).__name__}")
    return value


def _id_key(key: str, path: Path, what: str) -> int:
    try:
        return int(key)
    except ValueError:
        raise DatasetError(f"{path}: key {key!r} is not an integer {what} id") from None


def _box(entry: dict[str, Any], field: str, where: str) -> tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in _numbers(entry, field, 4, where))
    return x, y, w, h


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


# ------------------------------------------------------------------------------------
# Parsers of the individual files
# ------------------------------------------------------------------------------------


def _parse_object_info(obj_id: int, entry: dict[str, Any], where: str) -> ObjectInfo:
    diameter = _positive(entry, "diameter", where)
    bbox_min = np.array([_number(entry, f"min_{axis}", where) for axis in "xyz"])
    extents = np.array([_number(entry, f"size_{axis}", where) for axis in "xyz"])
    discrete = _list(
        entry.get("symmetries_discrete", []),
        f"{where}: 'symmetries_discrete'",
        "a list of 16-number lists",
    )
    symmetries_discrete = tuple(
        _readonly(_number_list(value, 16, f"symmetries_discrete[{k}]", where).reshape(4, 4))
        for k, value in enumerate(discrete)
    )
    continuous = _list(
        entry.get("symmetries_continuous", []),
        f"{where}: 'symmetries_continuous'",
        "a list of {'axis', 'offset'} objects",
    )
    symmetries_continuous = []
    for k, value in enumerate(continuous):
        sym_where = f"{where}, symmetries_continuous[{k}]"
        sym = _mapping(value, sym_where, "an object with 'axis' and 'offset'")
        axis = _numbers(sym, "axis", 3, sym_where)
        if not np.any(axis):
            raise DatasetError(f"{sym_where}: 'axis' must not be the zero vector")
        offset = _numbers(sym, "offset", 3, sym_where)
        symmetries_continuous.append((_readonly(axis), _readonly(offset)))
    return ObjectInfo(
        obj_id=obj_id,
        diameter=diameter,
        bbox_min=_readonly(bbox_min),
        extents=_readonly(extents),
        symmetries_discrete=symmetries_discrete,
        symmetries_continuous=tuple(symmetries_continuous),
    )


def load_models_info(path: str | Path) -> dict[int, ObjectInfo]:
    """Read and validate a ``models_info.json``.

    Args:
        path: the file.

    Returns:
        Object id → :class:`ObjectInfo` (sizes in mm), in the file's order.

    Raises:
        DatasetError: missing file, invalid JSON, or a missing / malformed field; the
            message names the file, the object id and the field.
    """
    path = Path(path)
    data = _mapping(_read_json(path), str(path), "an object mapping object ids to entries")
    infos: dict[int, ObjectInfo] = {}
    for key, entry in data.items():
        obj_id = _id_key(key, path, "object")
        where = f"{path}: object {obj_id}"
        infos[obj_id] = _parse_object_info(obj_id, _mapping(entry, where, "an object"), where)
    return infos


def _load_scene_camera(path: Path) -> dict[int, CameraInfo]:
    data = _mapping(_read_json(path), str(path), "an object mapping image ids to cameras")
    cameras: dict[int, CameraInfo] = {}
    for key, entry in data.items():
        im_id = _id_key(key, path, "image")
        where = f"{path}: image {im_id}"
        entry = _mapping(entry, where, "an object")
        if "cam_K" not in entry and "cam_model" in entry:
            raise DatasetError(f"{where}: missing 'cam_K' ('cam_model' cameras are not supported)")
        K = _numbers(entry, "cam_K", 9, where).reshape(3, 3)
        depth_scale = _positive(entry, "depth_scale", where)
        R_w2c = t_w2c = None
        if "cam_R_w2c" in entry:
            R_w2c = _numbers(entry, "cam_R_w2c", 9, where).reshape(3, 3)
        if "cam_t_w2c" in entry:
            t_w2c = _numbers(entry, "cam_t_w2c", 3, where)
        cameras[im_id] = CameraInfo(K=K, depth_scale=depth_scale, R_w2c=R_w2c, t_w2c=t_w2c)
    return cameras


def _load_per_image_lists(path: Path, parse: Callable[[dict, str], T]) -> dict[int, list[T]]:
    """A scene file mapping image ids to lists of entries, each parsed by ``parse(entry, where)``."""
    data = _mapping(_read_json(path), str(path), "an object mapping image ids to lists")
    parsed: dict[int, list[T]] = {}
    for key, entries in data.items():
        im_id = _id_key(key, path, "image")
        items = []
        for index, entry in enumerate(_list(entries, f"{path}: image {im_id}", "a list")):
            where = f"{path}: image {im_id}, entry {index}"
            items.append(parse(_mapping(entry, where, "an object"), where))
        parsed[im_id] = items
    return parsed


def _parse_gt(entry: dict, where: str) -> GTInstance:
    return GTInstance(
        obj_id=_integer(entry, "obj_id", where),
        R=_numbers(entry, "cam_R_m2c", 9, where).reshape(3, 3),
        t=_numbers(entry, "cam_t_m2c", 3, where),
    )


def _parse_gt_info(entry: dict, where: str) -> GTInfo:
    return GTInfo(
        bbox_obj=_box(entry, "bbox_obj", where),
        bbox_visib=_box(entry, "bbox_visib", where),
        px_count_all=_integer(entry, "px_count_all", where),
        px_count_valid=_integer(entry, "px_count_valid", where),
        px_count_visib=_integer(entry, "px_count_visib", where),
        visib_fract=_number(entry, "visib_fract", where),
    )


def _check_same_ids(path: Path, ids: set[int], other_name: str, other_ids: set[int]) -> None:
    if ids == other_ids:
        return
    only_here = sorted(ids - other_ids)[:5]
    only_there = sorted(other_ids - ids)[:5]
    raise DatasetError(
        f"{path}: image ids differ from {other_name}: only here {only_here}, "
        f"only in {other_name} {only_there} (first 5 shown)"
    )


def _check_gt_info_matches(
    path: Path, infos: dict[int, list[GTInfo]], gts: dict[int, list[GTInstance]]
) -> None:
    _check_same_ids(path, set(infos), "scene_gt.json", set(gts))
    for im_id, image_infos in infos.items():
        if len(image_infos) != len(gts[im_id]):
            raise DatasetError(
                f"{path}: image {im_id}: {len(image_infos)} entries, "
                f"but scene_gt.json has {len(gts[im_id])}"
            )
