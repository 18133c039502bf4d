"""The records the BOP readers return: one entry of ``models_info.json``
(:class:`ObjectInfo`), ``scene_camera.json`` (:class:`CameraInfo`), ``scene_gt.json``
(:class:`GTInstance`), ``scene_gt_info.json`` (:class:`GTInfo`) and
``test_targets_bop19.json`` (:class:`TestTarget`), and a scene's annotations
(:class:`Scene`). Units and conventions are those of :mod:`fastgdr.data.bop`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
