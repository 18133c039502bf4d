import json

import pytest

from fastgdr.data.detections import Detection, load_detections, select_detections
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
