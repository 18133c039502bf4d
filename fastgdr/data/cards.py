"""Per-dataset facts of the seven BOP core datasets, as GDRNPP and the BOP toolkit use them.

A :class:`DatasetCard` holds what a BOP folder does not say about itself: the object ids
and their order (the 0-based class label of an object is its index in ``obj_ids``), which
camera file and test split to use, image size, and the evaluation and detection settings.
Cards are looked up by name in :data:`DATASET_CARDS` or guessed from a folder name with
:func:`detect_card`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fastgdr.registry import Registry


@dataclass(frozen=True)
class DatasetCard:
    """Facts about one BOP dataset.

    Attributes:
        name: short BOP name, e.g. ``"lmo"``.
        obj_ids: object ids in GDRNPP/BOP order; an object's class label is its index.
        symmetric_obj_ids: ids evaluated with ADD-S (ADI) instead of ADD, as listed by the
            BOP toolkit's ``symmetric_obj_ids``; None means "the objects whose
            models_info.json declares a symmetry".
        image_size: (width, height) of the test images in px.
        camera_file: name of the camera file in the dataset root.
        models_dir: folder of the models used for training and rendering (T-LESS ships
            ``models_cad``, no ``models``); error computations use ``models_eval``.
        test_split: folder of the test images, e.g. ``"test"`` or ``"test_primesense"``.
        train_splits: training folders GDRNPP trains on, real data first.
        gray: True when the images are single-channel (``gray/*.tif``, ITODD).
        vsd_delta_mm: VSD / visibility tolerance delta in mm.
        det_topk_per_obj: detections kept per object and image (GDRNPP ``DET_TOPK_PER_OBJ``).
        det_score_threshold: detections with a lower score are dropped (``DET_THR``).
    """

    name: str
    obj_ids: tuple[int, ...]
    symmetric_obj_ids: tuple[int, ...] | None
    image_size: tuple[int, int]
    camera_file: str = "camera.json"
    models_dir: str = "models"
    test_split: str = "test"
    train_splits: tuple[str, ...] = ("train_pbr",)
    gray: bool = False
    vsd_delta_mm: float = 15.0
    det_topk_per_obj: int = 1
    det_score_threshold: float = 0.0


DATASET_CARDS = Registry[DatasetCard]("BOP dataset")

DATASET_CARDS.register(
    "lmo",
    DatasetCard(
        name="lmo",
        obj_ids=(1, 5, 6, 8, 9, 10, 11, 12),
        symmetric_obj_ids=(10, 11),
        image_size=(640, 480),
    ),
)
DATASET_CARDS.register(
    "ycbv",
    DatasetCard(
        name="ycbv",
        obj_ids=tuple(range(1, 22)),
        symmetric_obj_ids=(1, 13, 14, 16, 18, 19, 20, 21),
        image_size=(640, 480),
        camera_file="camera_uw.json",
        train_splits=("train_real", "train_pbr"),
    ),
)
DATASET_CARDS.register(
    "tless",
    DatasetCard(
        name="tless",
        obj_ids=tuple(range(1, 31)),
        symmetric_obj_ids=tuple(range(1, 31)),
        image_size=(720, 540),
        camera_file="camera_primesense.json",
        models_dir="models_cad",
        test_split="test_primesense",
        train_splits=("train_primesense", "train_pbr"),
        det_topk_per_obj=100,
    ),
)
DATASET_CARDS.register(
    "itodd",
    DatasetCard(
        name="itodd",
        obj_ids=tuple(range(1, 29)),
        symmetric_obj_ids=None,
        image_size=(1280, 960),
        gray=True,
        vsd_delta_mm=5.0,
        det_topk_per_obj=100,
        det_score_threshold=0.05,
    ),
)
DATASET_CARDS.register(
    "tudl",
    DatasetCard(
        name="tudl",
        obj_ids=(1, 2, 3),
        symmetric_obj_ids=None,
        image_size=(640, 480),
        train_splits=("train_real", "train_pbr"),
    ),
)
DATASET_CARDS.register(
    "hb",
    DatasetCard(
        name="hb",
        obj_ids=(1, 3, 4, 8, 9, 10, 12, 15, 17, 18, 19, 22, 23, 29, 32, 33),
        symmetric_obj_ids=None,
        image_size=(640, 480),
        camera_file="camera_primesense.json",
        test_split="test_primesense",
        det_topk_per_obj=100,
    ),
)
DATASET_CARDS.register(
    "icbin",
    DatasetCard(
        name="icbin",
        obj_ids=(1, 2),
        symmetric_obj_ids=None,
        image_size=(640, 480),
        det_topk_per_obj=100,
    ),
)


def detect_card(root: str | Path) -> DatasetCard | None:
    """Guess the dataset card from the name of a dataset folder.

    The folder name is lower-cased and stripped of ``-`` (so ``T-LESS`` and ``lm-o``
    match), then matched whole, then by its part before the first ``_``
    (``hb_bop19`` → hb).

    Args:
        root: the dataset root, e.g. ``/data/bop/ycbv``.

    Returns:
        The card, or None when the name matches no known dataset.
    """
    name = Path(root).expanduser().resolve().name.lower().replace("-", "")
    for candidate in (name, re.split(r"[_.]", name, maxsplit=1)[0]):
        if candidate in DATASET_CARDS:
            return DATASET_CARDS.get(candidate)
    return None
