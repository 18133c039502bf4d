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

This module is the reader, :class:`BopDataset` (files, images, depth, masks, targets and the
up-front checks); the records it returns are in :mod:`fastgdr.data.bop_records`, the parsing
and validation of the JSON files in :mod:`fastgdr.data.bop_parsing`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from fastgdr.data.bop_parsing import (
    _check_gt_info_matches,
    _check_same_ids,
    _integer,
    _list,
    _load_per_image_lists,
    _load_scene_camera,
    _mapping,
    _parse_gt,
    _parse_gt_info,
    _read_json,
    load_models_info,
)
from fastgdr.data.bop_records import GTInfo, GTInstance, ObjectInfo, Scene, TestTarget
from fastgdr.data.cards import DatasetCard
from fastgdr.errors import DatasetError

_SCENE_DIR_RE = re.compile(r"^\d{6}$")
# Where a scene's images may lie, as (folder, extension), in the order they are tried.
_COLOR_LAYOUTS = (("rgb", ".png"), ("rgb", ".jpg"), ("gray", ".tif"))
_GRAY_LAYOUTS = (("gray", ".tif"), ("rgb", ".png"), ("rgb", ".jpg"))
_DEPTH_EXTENSIONS = (".png", ".tif")


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
        (take it from the image's :class:`~fastgdr.data.bop_records.CameraInfo`). 0 means no measurement."""
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
