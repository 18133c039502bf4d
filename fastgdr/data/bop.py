"""Readers for datasets in the BOP format.

Layout (one dataset root)::

    camera[_TYPE].json  test_targets_bop19.json
    models[_TYPE]/obj_{OBJ:06d}.ply + models_info.json      models_eval/ (same)
    {split}/{SCENE:06d}/scene_camera.json scene_gt.json scene_gt_info.json
                        rgb/{IM:06d}.png|.jpg  (or gray/{IM:06d}.tif, ITODD)
                        depth/{IM:06d}.png|.tif  mask/ mask_visib/{IM:06d}_{GT:06d}.png

Units and conventions: model coordinates, model sizes and translations are in mm; depth
images are returned in mm (stored value × ``depth_scale``); image coordinates are in px,
pixel (row i, column j) covering [j, j + 1) × [i, i + 1) as the BOP toolkit renders them
(:mod:`fastgdr.render.renderer`); rotations are row-major 3×3 matrices; ``R, t`` map
model to camera coordinates (OpenCV camera, looking along +Z). Images are returned as
BGR uint8, as OpenCV reads them.

Every reader validates what it parses and raises :class:`~fastgdr.errors.DatasetError`
with a message naming the file, the image / entry / object and the field.
:meth:`BopDataset.check` runs all of these checks up front, before a long run.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from fastgdr.data.cards import DatasetCard
from fastgdr.errors import DatasetError

_SCENE_DIR_RE = re.compile(r"^\d{6}$")
# Where a scene's images may lie, as (folder, extension), in the order they are tried.
_COLOR_LAYOUTS = (("rgb", ".png"), ("rgb", ".jpg"), ("gray", ".tif"))
_GRAY_LAYOUTS = (("gray", ".tif"), ("rgb", ".png"), ("rgb", ".jpg"))
_DEPTH_EXTENSIONS = (".png", ".tif")

T = TypeVar("T")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_file_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) of an image file, or None when it cannot be read: from the header
    of a PNG (without decoding it), else by decoding the file with OpenCV."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return None if image is None else (int(image.shape[1]), int(image.shape[0]))


# ------------------------------------------------------------------------------------
# Data records
# ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ObjectInfo:
    """One entry of ``models_info.json``.

    Attributes:
        obj_id: BOP object id.
        diameter: largest distance between two model vertices, mm.
        bbox_min: (3,) float64 corner (min_x, min_y, min_z) of the 3D bounding box, mm.
        extents: (3,) float64 size of the 3D bounding box (size_x, size_y, size_z), mm.
        symmetries_discrete: (4, 4) float64 model-frame transforms that leave the object
            looking the same (rotation, translation in mm); the identity is not listed.
        symmetries_continuous: (axis (3,), offset (3,) mm) pairs: the object is unchanged
            by any rotation about ``axis`` through the point ``offset``.

    Arrays are read-only. Instances compare by identity.
    """

    obj_id: int
    diameter: float
    bbox_min: np.ndarray
    extents: np.ndarray
    symmetries_discrete: tuple[np.ndarray, ...] = ()
    symmetries_continuous: tuple[tuple[np.ndarray, np.ndarray], ...] = ()

    @property
    def is_symmetric(self) -> bool:
        """Whether models_info declares any discrete or continuous symmetry."""
        return bool(self.symmetries_discrete or self.symmetries_continuous)


@dataclass
class CameraInfo:
    """One entry of ``scene_camera.json``.

    Attributes:
        K: (3, 3) float64 intrinsics in px.
        depth_scale: mm per stored depth unit (depth in mm = stored value × depth_scale).
        R_w2c: optional (3, 3) float64 world→camera rotation.
        t_w2c: optional (3,) float64 world→camera translation, mm.
    """

    K: np.ndarray
    depth_scale: float
    R_w2c: np.ndarray | None = None
    t_w2c: np.ndarray | None = None


@dataclass
class GTInstance:
    """One entry of ``scene_gt.json``: an object instance and its pose.

    Attributes:
        obj_id: BOP object id.
        R: (3, 3) float64 model→camera rotation.
        t: (3,) float64 model→camera translation, mm.
    """

    obj_id: int
    R: np.ndarray
    t: np.ndarray


@dataclass
class GTInfo:
    """One entry of ``scene_gt_info.json`` (same order as ``scene_gt.json``).

    Boxes are (x, y, w, h) in px with the BOP toolkit's convention ``w = x_max - x_min``
    (pixel indices, so one less than the number of columns spanned); (-1, -1, -1, -1)
    when nothing of the object is visible.

    Attributes:
        bbox_obj: box of the whole silhouette, not clipped to the image.
        bbox_visib: box of the visible part.
        px_count_all: silhouette pixels, including the part outside the image.
        px_count_valid: silhouette pixels inside the image that have a depth value.
        px_count_visib: visible pixels.
        visib_fract: px_count_visib / px_count_all (0 when px_count_all is 0).
    """

    bbox_obj: tuple[int, int, int, int]
    bbox_visib: tuple[int, int, int, int]
    px_count_all: int
    px_count_valid: int
    px_count_visib: int
    visib_fract: float


@dataclass
class Scene:
    """The annotations of one scene folder, keyed by image id.

    Attributes:
        split: split folder name, e.g. ``"test"``.
        scene_id: scene id (the folder's 6-digit number).
        camera: image id → camera (scene_camera.json).
        gt: image id → instances (scene_gt.json), or None when scene_gt.json is absent
            and was not required.
        gt_info: image id → per-instance info in the order of ``gt``
            (scene_gt_info.json), or None when that file (or scene_gt.json) is absent.
    """

    split: str
    scene_id: int
    camera: dict[int, CameraInfo]
    gt: dict[int, list[GTInstance]] | None
    gt_info: dict[int, list[GTInfo]] | None

    @property
    def im_ids(self) -> list[int]:
        """Sorted image ids of the scene."""
        return sorted(self.camera)


@dataclass(frozen=True)
class TestTarget:
    """One entry of ``test_targets_bop19.json``: evaluate ``inst_count`` instances of
    ``obj_id`` in image (scene_id, im_id)."""

    __test__ = False  # not a pytest test class despite the name

    scene_id: int
    im_id: int
    obj_id: int
    inst_count: int


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


def _listing(directory: Path) -> frozenset[str]:
    """Names in a folder (empty when it does not exist)."""
    try:
        return frozenset(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()


# ------------------------------------------------------------------------------------
# The dataset
# ------------------------------------------------------------------------------------


class BopDataset:
    """One BOP dataset folder: models info, scenes, images, depth, masks and targets.

    Files are read lazily; nothing is read at construction. Object ids, the camera file,
    the image size and the models folder come from ``card`` when given (look one up with
    :func:`fastgdr.data.cards.detect_card`), else from the files.

    Args:
        root: dataset root, e.g. ``/data/bop/lmo``.
        card: the dataset's card, or None for an unknown / custom dataset.
        models_dir: models folder under ``root``; None: the card's (``models_cad`` for
            T-LESS), else ``"models"``.
        eval_models_dir: folder of the models used by error computations; when it does
            not exist, the models folder is used instead.
    """

    def __init__(
        self,
        root: str | Path,
        card: DatasetCard | None = None,
        models_dir: str | None = None,
        eval_models_dir: str = "models_eval",
    ) -> None:
        self.root = Path(root)
        self.card = card
        if models_dir is None:
            models_dir = card.models_dir if card is not None else "models"
        self.models_dir = self.root / models_dir
        self._eval_models_dir = self.root / eval_models_dir
        # scene folder → (image folder, extension) found for its first image.
        self._image_layout: dict[Path, tuple[str, str]] = {}

    def __repr__(self) -> str:
        name = self.card.name if self.card is not None else None
        return f"BopDataset(root={str(self.root)!r}, card={name!r})"

    # ---- models ------------------------------------------------------------------

    @property
    def eval_models_dir(self) -> Path:
        """``models_eval/`` when present, else the models folder."""
        return self._eval_models_dir if self._eval_models_dir.is_dir() else self.models_dir

    @cached_property
    def models_info(self) -> dict[int, ObjectInfo]:
        """Object id → info from ``<models_dir>/models_info.json`` (mm)."""
        return load_models_info(self.models_dir / "models_info.json")

    @cached_property
    def eval_models_info(self) -> dict[int, ObjectInfo]:
        """Object id → info of the evaluation models (``models_eval/``, else models)."""
        if self.eval_models_dir == self.models_dir:
            return self.models_info
        return load_models_info(self.eval_models_dir / "models_info.json")

    @property
    def _object_infos(self) -> dict[int, ObjectInfo]:
        """models_info of the models folder, or of the evaluation models when the models
        folder has none (a dataset holding only what the evaluation needs)."""
        if (self.models_dir / "models_info.json").is_file() or not self.eval_models_dir.is_dir():
            return self.models_info
        return self.eval_models_info

    @cached_property
    def obj_ids(self) -> tuple[int, ...]:
        """Object ids in class-label order: the card's order, else sorted models_info ids
        (those of models_eval/ when there is no models/models_info.json)."""
        if self.card is not None:
            return self.card.obj_ids
        return tuple(sorted(self._object_infos))

    def label_of(self, obj_id: int) -> int:
        """0-based class label of an object: its index in :attr:`obj_ids`."""
        try:
            return self._labels[obj_id]
        except KeyError:
            raise DatasetError(
                f"{self.root}: object id {obj_id} is not one of the dataset's objects "
                f"{list(self.obj_ids)}"
            ) from None

    @cached_property
    def _labels(self) -> dict[int, int]:
        return {obj_id: label for label, obj_id in enumerate(self.obj_ids)}

    @property
    def symmetric_obj_ids(self) -> tuple[int, ...]:
        """Objects evaluated with ADD-S: the card's list, else those of :attr:`obj_ids`
        whose models_info (models_eval's without a models folder) declares a symmetry."""
        if self.card is not None and self.card.symmetric_obj_ids is not None:
            return self.card.symmetric_obj_ids
        infos = self._object_infos
        return tuple(i for i in self.obj_ids if i in infos and infos[i].is_symmetric)

    def model_path(self, obj_id: int, eval: bool = False) -> Path:  # noqa: A002 (BOP's word)
        """Path of ``obj_{obj_id:06d}.ply`` in the models folder, or the evaluation
        models folder when ``eval``. The file is not opened."""
        directory = self.eval_models_dir if eval else self.models_dir
        return directory / f"obj_{obj_id:06d}.ply"

    # ---- camera ------------------------------------------------------------------

    @property
    def camera_path(self) -> Path:
        """The dataset-level camera file (the card's, else ``camera.json``)."""
        return self.root / (self.card.camera_file if self.card is not None else "camera.json")

    @cached_property
    def image_size(self) -> tuple[int, int]:
        """(width, height) in px: the card's, else ``width``/``height`` of the camera file."""
        if self.card is not None:
            return self.card.image_size
        path = self.camera_path
        entry = _mapping(_read_json(path), str(path), "an object")
        return _integer(entry, "width", str(path)), _integer(entry, "height", str(path))

    # ---- scenes ------------------------------------------------------------------

    def split_dir(self, split: str) -> Path:
        """Folder of a split, e.g. ``root/test``."""
        return self.root / split

    def scene_dir(self, split: str, scene_id: int) -> Path:
        """Folder of a scene, ``root/split/{scene_id:06d}``."""
        return self.split_dir(split) / f"{scene_id:06d}"

    def scene_ids(self, split: str) -> list[int]:
        """Sorted ids of the scene folders (6-digit names) of a split.

        Raises:
            DatasetError: when the split folder does not exist.
        """
        directory = self.split_dir(split)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset folder not found")
        if not directory.is_dir():
            present = sorted(p.name for p in self.root.iterdir() if p.is_dir())
            raise DatasetError(
                f"{directory}: split folder not found (folders in {self.root}: {present})"
            )
        return sorted(
            int(p.name) for p in directory.iterdir() if _SCENE_DIR_RE.match(p.name) and p.is_dir()
        )

    def load_scene(self, split: str, scene_id: int, require_gt: bool = True) -> Scene:
        """Read and validate the three annotation files of a scene.

        ``scene_gt_info.json`` is optional. ``scene_gt.json`` is required unless
        ``require_gt`` is False (test sets whose ground truth is withheld); the image ids
        of all files must agree, and scene_gt_info must have as many entries per image as
        scene_gt.

        Raises:
            DatasetError: a missing or malformed file; the message names the file, the
                image, the entry and the field.
        """
        directory = self.scene_dir(split, scene_id)
        camera_path = directory / "scene_camera.json"
        gt_path = directory / "scene_gt.json"
        info_path = directory / "scene_gt_info.json"
        cameras = _load_scene_camera(camera_path)
        gts: dict[int, list[GTInstance]] | None = None
        gt_infos: dict[int, list[GTInfo]] | None = None
        if require_gt or gt_path.exists():
            gts = _load_per_image_lists(gt_path, _parse_gt)
            _check_same_ids(gt_path, set(gts), camera_path.name, set(cameras))
            if info_path.exists():
                gt_infos = _load_per_image_lists(info_path, _parse_gt_info)
                _check_gt_info_matches(info_path, gt_infos, gts)
        return Scene(split=split, scene_id=scene_id, camera=cameras, gt=gts, gt_info=gt_infos)

    # ---- images ------------------------------------------------------------------

    def _layouts(self) -> tuple[tuple[str, str], ...]:
        return _GRAY_LAYOUTS if self.card is not None and self.card.gray else _COLOR_LAYOUTS

    def _missing_image(self, directory: Path, im_id: int) -> DatasetError:
        tried = ", ".join(f"{sub}/{im_id:06d}{ext}" for sub, ext in self._layouts())
        return DatasetError(f"{directory}: image {im_id}: no image file; looked for {tried}")

    def image_path(self, split: str, scene_id: int, im_id: int) -> Path:
        """Path of an image: ``rgb/{im:06d}.png`` or ``.jpg``, or ``gray/{im:06d}.tif``,
        whichever exists (the layout found first in a scene is tried first after that).

        Raises:
            DatasetError: when none exists.
        """
        directory = self.scene_dir(split, scene_id)
        name = f"{im_id:06d}"
        cached = self._image_layout.get(directory)
        if cached is not None:
            path = directory / cached[0] / (name + cached[1])
            if path.is_file():
                return path
        for sub, ext in self._layouts():
            path = directory / sub / (name + ext)
            if path.is_file():
                self._image_layout[directory] = (sub, ext)
                return path
        raise self._missing_image(directory, im_id)

    def read_image(self, split: str, scene_id: int, im_id: int) -> np.ndarray:
        """Read an image as (H, W, 3) uint8 BGR; gray images are replicated to 3 channels.

        Raises:
            DatasetError: missing or undecodable file, or pixels that are not 8-bit.
        """
        path = self.image_path(split, scene_id, im_id)
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise DatasetError(f"{path}: cannot be decoded as an image")
        if image.dtype != np.uint8:
            raise DatasetError(f"{path}: expected 8-bit pixels, got {image.dtype}")
        if image.ndim == 2:
            image = image[:, :, None]
        channels = image.shape[2]
        if channels == 1:
            return np.ascontiguousarray(np.repeat(image, 3, axis=2))
        if channels == 3:
            return image
        if channels == 4:
            return np.ascontiguousarray(image[:, :, :3])
        raise DatasetError(f"{path}: expected 1, 3 or 4 channels, got {channels}")

    def depth_path(self, split: str, scene_id: int, im_id: int) -> Path:
        """Path of a depth image, ``depth/{im:06d}.png`` or ``.tif`` (whichever exists).

        Raises:
            DatasetError: when neither exists.
        """
        directory = self.scene_dir(split, scene_id) / "depth"
        for ext in _DEPTH_EXTENSIONS:
            path = directory / f"{im_id:06d}{ext}"
            if path.is_file():
                return path
        raise DatasetError(
            f"{directory}: image {im_id}: no depth file {im_id:06d}.png or {im_id:06d}.tif"
        )

    def read_depth(self, split: str, scene_id: int, im_id: int, depth_scale: float) -> np.ndarray:
        """Read a depth image in mm: (H, W) float32 = stored value × ``depth_scale``
        (take it from the image's :class:`CameraInfo`). 0 means no measurement."""
        path = self.depth_path(split, scene_id, im_id)
        depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if depth is None:
            raise DatasetError(f"{path}: cannot be decoded as an image")
        if depth.ndim != 2:
            raise DatasetError(f"{path}: depth must have one channel, got shape {depth.shape}")
        return depth.astype(np.float32) * np.float32(depth_scale)

    def mask_path(
        self, split: str, scene_id: int, im_id: int, gt_index: int, visible: bool
    ) -> Path:
        """Path of an instance mask: ``mask_visib/`` (visible part) when ``visible``,
        else ``mask/`` (whole silhouette), file ``{im:06d}_{gt_index:06d}.png`` where
        ``gt_index`` is the position of the instance in the image's scene_gt list."""
        folder = "mask_visib" if visible else "mask"
        return self.scene_dir(split, scene_id) / folder / f"{im_id:06d}_{gt_index:06d}.png"

    def read_mask(
        self, split: str, scene_id: int, im_id: int, gt_index: int, visible: bool
    ) -> np.ndarray:
        """Read an instance mask as an (H, W) bool array (True on the object)."""
        path = self.mask_path(split, scene_id, im_id, gt_index, visible)
        if not path.is_file():
            raise DatasetError(f"{path}: file not found")
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise DatasetError(f"{path}: cannot be decoded as an image")
        return mask > 0

    # ---- targets -----------------------------------------------------------------

    def load_test_targets(self, filename: str = "test_targets_bop19.json") -> list[TestTarget]:
        """Read the evaluation targets (a list of {scene_id, im_id, obj_id, inst_count})."""
        path = self.root / filename
        targets = []
        for index, entry in enumerate(_list(_read_json(path), str(path), "a list of targets")):
            where = f"{path}: target {index}"
            entry = _mapping(entry, where, "an object")
            targets.append(
                TestTarget(
                    scene_id=_integer(entry, "scene_id", where),
                    im_id=_integer(entry, "im_id", where),
                    obj_id=_integer(entry, "obj_id", where),
                    inst_count=_integer(entry, "inst_count", where),
                )
            )
        return targets

    # ---- up-front validation -----------------------------------------------------

    def check_evaluation(
        self, split: str, *, depth: bool, targets_file: str = "test_targets_bop19.json"
    ) -> list[TestTarget]:
        """Validate what the BOP evaluation reads, and only that (as the BOP toolkit).

        Checks: the evaluation models (``models_eval/``, else the models folder) have a
        models_info.json entry and a .ply for every target object; the targets file; per
        target scene, scene_camera.json, scene_gt.json and scene_gt_info.json parse and
        agree, and list every target image; with ``depth`` (VSD), a depth image per target
        image, all of the image size (from the PNG headers; the size of the card or camera
        file, else that of the first depth image). Colour images, masks, the models folder
        and camera.json are not needed.

        Args:
            split: split folder of the targets' scenes, e.g. ``"test"``.
            depth: require the test depth of every target image.
            targets_file: the targets file in the dataset root.

        Returns:
            The targets.

        Raises:
            DatasetError: on the first problem, naming the file, the field and what was
                expected.
        """
        if not self.eval_models_dir.is_dir():
            raise DatasetError(
                f"{self._eval_models_dir}: folder not found (nor {self.models_dir}); the evaluation "
                "computes every error on the evaluation models"
            )
        targets_path = self.root / targets_file
        targets = self.load_test_targets(targets_file)
        if not targets:
            raise DatasetError(f"{targets_path}: lists no targets; there is nothing to evaluate")
        infos, names = self.eval_models_info, _listing(self.eval_models_dir)
        for obj_id in sorted({t.obj_id for t in targets}):
            if obj_id not in infos:
                raise DatasetError(
                    f"{self.eval_models_dir / 'models_info.json'}: no entry for object {obj_id} (a target object)"
                )
            path = self.model_path(obj_id, eval=True)
            if path.name not in names:
                raise DatasetError(f"{path}: model file not found (object {obj_id}, a target object)")
        images: dict[int, set[int]] = {}
        for target in targets:
            images.setdefault(target.scene_id, set()).add(target.im_id)
        expected = self.image_size if self.card is not None or self.camera_path.is_file() else None
        scene_ids = set(self.scene_ids(split))
        for scene_id, im_ids in sorted(images.items()):
            directory = self.scene_dir(split, scene_id)
            if scene_id not in scene_ids:
                raise DatasetError(f"{directory}: scene folder not found (scene {scene_id} of {targets_path})")
            scene = self.load_scene(split, scene_id)
            if scene.gt_info is None:
                raise DatasetError(
                    f"{directory / 'scene_gt_info.json'}: file not found (the evaluation needs visib_fract per GT)"
                )
            missing = sorted(im_ids - set(scene.camera))
            if missing:
                raise DatasetError(
                    f"{targets_path}: scene {scene_id} image {missing[0]} is not in {directory / 'scene_camera.json'}"
                )
            listing = _listing(directory / "depth")
            for im_id in sorted(im_ids) if depth else ():
                found = [f"{im_id:06d}{ext}" for ext in _DEPTH_EXTENSIONS if f"{im_id:06d}{ext}" in listing]
                if not found:
                    raise DatasetError(
                        f"{directory / 'depth'}: image {im_id}: no depth file {im_id:06d}.png or "
                        f"{im_id:06d}.tif (VSD needs the test depth of every target image)"
                    )
                # the image size of the card or camera file, else that of the first depth image
                expected = self._check_depth_size(directory / "depth" / found[0], expected, first_sets=True)
        return targets

    def check(
        self,
        splits: Sequence[str],
        *,
        require_gt: bool = True,
        depth: bool = False,
        masks: bool = False,
    ) -> None:
        """Validate everything a run over ``splits`` reads, without decoding images.

        Checks: models_info (models and evaluation models), that the card's objects are
        in it and that every listed model .ply exists; the camera file when the image size
        comes from it; per scene, that the three JSON files parse, are well-formed and
        agree on image ids, that every GT object id is in models_info, and that every
        image file exists (and, with ``depth``, depth files of the image size — read from
        PNG headers; ``mask/`` and ``mask_visib/`` files with ``masks``); and
        ``test_targets_bop19.json``, when present and the test split is checked, refers to
        existing images and known objects.

        Args:
            splits: split folders, e.g. ``["test"]`` or ``["train_pbr"]``.
            require_gt: whether scene_gt.json must exist (False for withheld test GT).
            depth: also require a depth file per image, of the dataset's image size
                (read from its header).
            masks: also require both mask files per GT instance.

        Raises:
            DatasetError: on the first problem, naming the file, the field and what was
                expected.
        """
        known_ids = self._check_models()
        if self.card is None:
            _ = self.image_size
        test_split = self.card.test_split if self.card is not None else "test"
        for split in splits:
            image_ids: dict[int, set[int]] = {}
            scene_ids = self.scene_ids(split)
            if not scene_ids:
                raise DatasetError(f"{self.split_dir(split)}: no scene folders (6-digit names)")
            for scene_id in scene_ids:
                scene = self.load_scene(split, scene_id, require_gt=require_gt)
                self._check_scene_objects(scene, known_ids)
                self._check_scene_files(scene, depth=depth, masks=masks)
                image_ids[scene_id] = set(scene.camera)
            if split == test_split:
                self._check_targets(split, image_ids, known_ids)

    def _check_models(self) -> set[int]:
        """Check both models_info files and the .ply files; return the known object ids."""
        folders = [(self.models_dir, self.models_info, False)]
        if self.eval_models_dir != self.models_dir:
            folders.append((self.eval_models_dir, self.eval_models_info, True))
        for directory, infos, is_eval in folders:
            info_path = directory / "models_info.json"
            missing = [i for i in self.obj_ids if i not in infos]
            if missing:
                raise DatasetError(f"{info_path}: no entry for object ids {missing} of the dataset")
            names = _listing(directory)
            for obj_id in infos:
                path = self.model_path(obj_id, eval=is_eval)
                if path.name not in names:
                    raise DatasetError(
                        f"{path}: model file not found (object {obj_id} of {info_path})"
                    )
        return set(self.models_info)

    def _check_scene_objects(self, scene: Scene, known_ids: set[int]) -> None:
        if scene.gt is None:
            return
        gt_path = self.scene_dir(scene.split, scene.scene_id) / "scene_gt.json"
        for im_id, instances in scene.gt.items():
            for index, instance in enumerate(instances):
                if instance.obj_id not in known_ids:
                    raise DatasetError(
                        f"{gt_path}: image {im_id}, entry {index}: 'obj_id' {instance.obj_id} "
                        f"is not in {self.models_dir / 'models_info.json'} "
                        f"(known: {sorted(known_ids)})"
                    )

    def _check_scene_files(self, scene: Scene, depth: bool, masks: bool) -> None:
        directory = self.scene_dir(scene.split, scene.scene_id)
        folders = ("rgb", "gray", "depth", "mask", "mask_visib")
        listings = {sub: _listing(directory / sub) for sub in folders}
        for im_id in scene.im_ids:
            name = f"{im_id:06d}"
            if not any(name + ext in listings[sub] for sub, ext in self._layouts()):
                raise self._missing_image(directory, im_id)
            if depth:
                found = [name + ext for ext in _DEPTH_EXTENSIONS if name + ext in listings["depth"]]
                if not found:
                    raise DatasetError(
                        f"{directory / 'depth'}: image {im_id}: no depth file {name}.png or {name}.tif"
                    )
                self._check_depth_size(directory / "depth" / found[0])
            if masks and scene.gt is not None:
                for gt_index in range(len(scene.gt[im_id])):
                    for sub in ("mask", "mask_visib"):
                        mask_name = f"{name}_{gt_index:06d}.png"
                        if mask_name not in listings[sub]:
                            raise DatasetError(
                                f"{directory / sub / mask_name}: file not found "
                                f"(mask of image {im_id}, entry {gt_index})"
                            )

    def _check_depth_size(
        self, path: Path, expected: tuple[int, int] | None = None, first_sets: bool = False
    ) -> tuple[int, int]:
        """The depth image (its size read from the file's header) has ``expected`` (width,
        height); None expects the dataset's image size or, with ``first_sets``, accepts the
        size of this first image. Returns its size."""
        size = image_file_size(path)
        if size is None:
            raise DatasetError(f"{path}: cannot be read as an image")
        if expected is None and first_sets:
            return size
        width, height = expected if expected is not None else self.image_size
        if size != (width, height):
            raise DatasetError(f"{path}: depth image is {size[0]}×{size[1]} px, expected {width}×{height}")
        return size

    def _check_targets(
        self, split: str, image_ids: dict[int, set[int]], known_ids: set[int]
    ) -> None:
        path = self.root / "test_targets_bop19.json"
        if not path.exists():
            return
        for index, target in enumerate(self.load_test_targets(path.name)):
            where = f"{path}: target {index}"
            if target.im_id not in image_ids.get(target.scene_id, set()):
                raise DatasetError(
                    f"{where}: scene {target.scene_id} image {target.im_id} is not in "
                    f"{self.split_dir(split)}"
                )
            if target.obj_id not in known_ids:
                raise DatasetError(f"{where}: 'obj_id' {target.obj_id} is not in models_info.json")
