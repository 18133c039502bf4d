import json

import pytest

from fastgdr.data.detections import Detection, load_detections, match_detections, select_detections
from fastgdr.errors import DatasetError


def write(tmp_path, data):
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(data))
    return path


def test_bop_list_format(tmp_path):
    path = write(tmp_path, [
        {"scene_id": 1, "image_id": 3, "category_id": 5, "score": 0.9, "bbox": [10, 20, 30, 40], "time": 0.01,
         "segmentation": {"counts": "", "size": [480, 640]}},
        {"scene_id": 1, "image_id": 3, "category_id": 6, "score": 0.5, "bbox": [1, 2, 3, 4], "time": 0.01},
        {"scene_id": 2, "image_id": 0, "category_id": 5, "score": 0.7, "bbox": [1, 2, 3, 4]},
    ])
    dets = load_detections(path)
    assert set(dets) == {(1, 3), (2, 0)}
    assert dets[(1, 3)][0] == Detection(1, 3, 5, 0.9, (10.0, 20.0, 30.0, 40.0), 0.01)
    assert dets[(2, 0)][0].time == 0.0


def test_gdrnpp_dict_format(tmp_path):
    path = write(tmp_path, {"1/3": [{"obj_id": 5, "bbox_est": [10, 20, 30, 40], "score": 0.9, "time": 0.02}]})
    assert load_detections(path)[(1, 3)] == [Detection(1, 3, 5, 0.9, (10.0, 20.0, 30.0, 40.0), 0.02)]


@pytest.mark.parametrize("data, message", [
    ([{"scene_id": 1, "image_id": 3, "score": 0.9, "bbox": [1, 2, 3, 4]}], "entry 0: missing field 'category_id'"),
    ([{"scene_id": 1, "image_id": 3, "category_id": 2, "score": 0.9, "bbox": [1, 2, 3]}], "'bbox' must be [x, y, w, h]"),
    ([{"scene_id": 1, "image_id": 3, "category_id": 2, "score": "high", "bbox": [1, 2, 3, 4]}], "'score' must be a number"),
    ([{"scene_id": 1.5, "image_id": 3, "category_id": 2, "score": 0.9, "bbox": [1, 2, 3, 4]}], "'scene_id' must be an integer"),
    ([{"scene_id": 1, "image_id": 3, "category_id": 2, "score": 0.9, "bbox": [1, 2, 0, 4]}], "positive width and height"),
    ({"1-3": []}, "must look like '<scene_id>/<im_id>'"),
    ({"1/3": [{"obj_id": 2, "score": 0.9}]}, "image '1/3', entry 0: missing field 'bbox_est'"),
    ("nonsense", "expected a list"),
])
def test_malformed_files_name_entry_and_field(tmp_path, data, message):
    with pytest.raises(DatasetError) as err:
        load_detections(write(tmp_path, data))
    assert message in str(err.value) and "dets.json" in str(err.value)


def test_missing_and_invalid_json(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_detections(tmp_path / "none.json")
    path = tmp_path / "bad.json"
    path.write_text("[{")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_detections(path)


def test_top_k_per_object_and_threshold():
    dets = [Detection(1, 1, obj, score, (0, 0, 1, 1)) for obj, score in [(1, 0.3), (1, 0.9), (2, 0.5), (1, 0.6), (2, 0.01)]]
    kept = select_detections(dets, top_k_per_object=1, score_threshold=0.05)
    assert [(d.obj_id, d.score) for d in kept] == [(1, 0.9), (2, 0.5)]
    assert len(select_detections(dets, None)) == 5
    assert [(d.obj_id, d.score) for d in select_detections(dets, 2)] == [(1, 0.9), (1, 0.6), (2, 0.5), (2, 0.01)]


@pytest.mark.parametrize("field, value", [("bbox", [1, 2, float("nan"), 4]), ("bbox", [float("inf"), 2, 3, 4]),
                                          ("time", float("nan")), ("scene_id", float("nan"))])
def test_non_finite_boxes_and_times_are_refused_on_load(tmp_path, field, value):
    entry = {"scene_id": 1, "image_id": 3, "category_id": 2, "score": 0.9, "bbox": [1, 2, 3, 4], field: value}
    path = tmp_path / "dets.json"
    path.write_text(json.dumps([entry]))  # Python's json writes NaN and Infinity, and reads them back
    with pytest.raises(DatasetError, match=f"entry 0: '{field}' must be a finite number"):
        load_detections(path)


def test_match_detections_counts_every_kind_of_drop():
    def det(scene, image, obj, score):
        return Detection(scene, image, obj, score, (0, 0, 5, 5))

    detections = {
        (1, 0): [det(1, 0, 1, 0.9), det(1, 0, 9, 0.8), det(1, 0, 2, float("nan")), det(1, 0, 2, 0.01)],
        (1, 1): [det(1, 1, 2, 0.7)],
        (7, 3): [det(7, 3, 1, 0.9), det(7, 3, 1, 0.8)],  # an image the run does not process
    }
    kept, report = match_detections(detections, [(1, 0), (1, 1)], [1, 2], score_threshold=0.05)
    assert {k: [d.obj_id for d in v] for k, v in kept.items()} == {(1, 0): [1], (1, 1): [2]}
    assert (report.total, report.matched, report.other_images, report.unknown_objects, report.non_finite_scores,
            report.below_threshold) == (7, 2, 2, 1, 1, 1)
    assert report.describe() == (
        "2 of 7 detections used; dropped: 2 of images the run does not process (e.g. scene 7 image 3); "
        "1 of unknown objects (obj_id 9); 1 with a NaN or infinite score; 1 below the score threshold"
    )
    _, none = match_detections(detections, [(5, 5)], [1, 2])
    assert none.matched == 0 and none.other_images == 7
