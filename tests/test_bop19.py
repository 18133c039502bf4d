"""BOP 2019 evaluation: golden scores on a tiny synthetic test set, the protocol's rules
(top-k, ignored estimates, strict thresholds, greedy matching) and the results-file I/O."""

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO
from fastgdr.data.bop import BopDataset
from fastgdr.data.mesh import load_ply
from fastgdr.data.symmetry import rotation_about_axis
from fastgdr.errors import ResultsFormatError
from fastgdr.eval.bop19 import evaluate
from fastgdr.eval.matching import greedy_match, valid_gt_indices
from fastgdr.eval.protocol import AD_THETAS, MSPD_THRESHOLDS_PX, MSSD_THETAS
from fastgdr.eval.scores import write_scores
from fastgdr.eval.results import PoseEstimate, load_results, parse_result_filename, save_results

BOP_KEYS = {
    "bop19_average_recall", "bop19_average_recall_vsd", "bop19_average_recall_mssd",
    "bop19_average_recall_mspd", "bop19_average_time_per_image",
}
FAR_AWAY = np.array([10000.0, 0.0, 0.0])  # mm: never matched by any error (gated or huge)
# Symmetry-equivalent rotations (model frame) of the synthetic objects: 180° about z for
# the block (object 1, discrete flips), 120° about z for the can (object 2, continuous;
# a sample of the 315 and a rotation that maps its 48-sided mesh onto itself).
SYMMETRIC_TURN = {
    1: (np.diag([-1.0, -1.0, 1.0]), 180.0),
    2: (rotation_about_axis(np.array([0.0, 0.0, 1.0]), 2 * math.pi / 3), 120.0),
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from fastgdr.data.synthetic import SyntheticSpec, generate_dataset

    root = tmp_path_factory.mktemp("bop19") / "synth"
    spec = SyntheticSpec(num_objects=2, train_images=0, test_images=6, width=160, height=120,
                         objects_per_image=(2, 3), depth_range=(250.0, 450.0), seed=1)
    generate_dataset(root, spec)
    return root


def valid_instances(dataset: BopDataset):
    """(target, scene, [(gt_index, GTInstance)]) with the inst_count most visible GTs of each target."""
    scene = dataset.load_scene("test", 1)
    out = []
    for target in dataset.load_test_targets():
        gts, infos = scene.gt[target.im_id], scene.gt_info[target.im_id]
        indices = [i for i, g in enumerate(gts) if g.obj_id == target.obj_id]
        by_visibility = sorted(indices, key=lambda i: -infos[i].visib_fract)[: target.inst_count]
        # The generator counts instances with visib_fract >= 0.1, so these are exactly they.
        assert sorted(by_visibility) == [i for i in indices if infos[i].visib_fract >= 0.1]
        out.append((target, [(i, gts[i]) for i in sorted(by_visibility)]))
    return out


def image_time(im_id: int) -> float:
    return 0.1 * (im_id + 1)


def estimate(target, gt, score, R=None, t=None) -> PoseEstimate:
    return PoseEstimate(target.scene_id, target.im_id, target.obj_id, score,
                        gt.R if R is None else R, gt.t if t is None else t, image_time(target.im_id))


def golden_exact_or_hopeless(dataset: BopDataset):
    """Estimates whose every error is 0 (the GT pose or a symmetric twin) or hopeless, plus
    estimates the protocol must ignore; returns (estimates, expected scores, valid GTs)."""
    estimates, matched, valid = [], 0, 0
    counter = 0
    for target, gts in valid_instances(dataset):
        for _, gt in gts:
            kind = counter % 4
            counter += 1
            valid += 1
            if kind == 2:  # hopeless, and an exact twin beyond inst_count (lower score: dropped)
                estimates.append(estimate(target, gt, 0.7, t=gt.t + FAR_AWAY))
                estimates.append(estimate(target, gt, 0.01))
                continue
            if kind == 1:  # symmetric twin: MSSD, MSPD, VSD and ADI are all 0
                turn, degrees = SYMMETRIC_TURN[target.obj_id]
                estimates.append(estimate(target, gt, 0.8, R=gt.R @ turn))
            else:
                estimates.append(estimate(target, gt, 0.9 if kind == 0 else 0.6))
            matched += 1
    # Ignored: an image without targets (its time still counts, as in the BOP toolkit) and
    # an object that is no target of its image.
    scene = dataset.load_scene("test", 1)
    estimates.append(PoseEstimate(1, 99, 1, 1.0, np.eye(3), np.array([0.0, 0.0, 300.0]), 1.0))
    targeted = {(t.im_id, t.obj_id) for t in dataset.load_test_targets()}
    im_id, gt = next((im, g) for im, gts in scene.gt.items() for g in gts if (im, 3 - g.obj_id) not in targeted)
    estimates.append(PoseEstimate(1, im_id, 3 - gt.obj_id, 1.0, gt.R, gt.t, image_time(im_id)))

    recall = matched / valid
    times = [image_time(im) for im in {e.im_id for e in estimates if e.im_id != 99}] + [1.0]
    expected = {
        "bop19_average_recall": recall, "bop19_average_recall_vsd": recall,
        "bop19_average_recall_mssd": recall, "bop19_average_recall_mspd": recall,
        "bop19_average_time_per_image": float(np.mean(times)),
        "add_s_recall_0.02": recall, "add_s_recall_0.05": recall, "add_s_recall_0.10": recall,
        "add_s_mean_rotation_error_deg": 0.0,  # a symmetric twin's rotation error is 0 too
        "add_s_mean_translation_error_mm": 0.0,
    }
    return estimates, expected, valid


def test_golden_exact_and_hopeless(synth):
    dataset = BopDataset(synth)
    estimates, expected, valid = golden_exact_or_hopeless(dataset)
    result = evaluate(dataset, estimates)
    assert set(result.scores) == set(expected)
    for key, value in expected.items():
        tol = 1e-5 if key == "add_s_mean_rotation_error_deg" else 1e-6  # arccos near 0: ~1e-6°
        assert result.scores[key] == pytest.approx(value, abs=tol), key
    assert 0.2 < expected["bop19_average_recall"] < 1.0
    assert result.num_valid_gts == valid
    assert result.num_estimates_used == valid  # inst_count per target; extras and non-targets dropped
    assert result.num_targets == len(dataset.load_test_targets())
    assert result.recalls["vsd"].shape == (10, 10)
    assert sum(row["num_valid_gts"] for row in result.per_object.values()) == valid

    paths = write_scores(result, synth.parent / "scores")
    saved = json.loads(paths["scores"].read_text())
    assert BOP_KEYS <= set(saved)
    assert saved["bop19_average_recall"] == pytest.approx(expected["bop19_average_recall"], abs=1e-12)
    header = paths["per_object"].read_text().splitlines()[0]
    assert header.startswith("obj_id,num_valid_gts,num_estimates,ar_vsd,ar_mssd,ar_mspd,add_s_recall_0.02")
    assert "bop19_average_recall_vsd" in paths["markdown"].read_text()


def strip_symmetries(root: Path, out: Path) -> Path:
    """A copy of the dataset whose models_info declares no symmetry (MSSD/MSPD use the
    identity only, and "ad" uses ADD for every object)."""
    shutil.copytree(root, out)
    for folder in ("models", "models_eval"):
        path = out / folder / "models_info.json"
        info = json.loads(path.read_text())
        for entry in info.values():
            entry.pop("symmetries_discrete", None)
            entry.pop("symmetries_continuous", None)
        path.write_text(json.dumps(info))
    return out


def test_golden_known_shifts(synth, tmp_path):
    """Estimates = GT shifted by s = f·diameter along the camera x axis. Without symmetries
    MSSD = ADD = s exactly, and MSPD = fx·s / z_min (every vertex moves fx·s/z px to the
    right), so the recall pattern follows from f and the GT pose alone."""
    dataset = BopDataset(strip_symmetries(synth, tmp_path / "nosym"))
    assert dataset.symmetric_obj_ids == ()
    width = dataset.image_size[0]
    fractions = (0.0, 0.03, 0.12, 0.27, 0.43, 0.8, 1.5)  # 1.5: gated (‖Δt‖ ≥ d) for MSSD and ADD
    scene = dataset.load_scene("test", 1)
    estimates = []
    counts = {"mssd": 0, "mspd": 0, "ad": np.zeros(3)}
    shifts_matched = []
    n = 0
    for target, gts in valid_instances(dataset):
        diameter = dataset.eval_models_info[target.obj_id].diameter
        vertices = load_ply(dataset.model_path(target.obj_id, eval=True)).vertices.astype(np.float64)
        K = scene.camera[target.im_id].K
        for _, gt in gts:
            f = fractions[n % len(fractions)]
            n += 1
            shift = f * diameter
            estimates.append(estimate(target, gt, 1.0 - 0.01 * n, t=gt.t + np.array([shift, 0.0, 0.0])))
            z_min = (vertices @ gt.R.T + gt.t)[:, 2].min()
            mspd = K[0, 0] * shift / z_min * 640.0 / width
            assert np.min(np.abs(mspd - MSPD_THRESHOLDS_PX)) > 1e-6
            counts["mspd"] += int(np.sum(mspd < MSPD_THRESHOLDS_PX))
            if f < 1.0:
                counts["mssd"] += int(np.sum(f < MSSD_THETAS))
                counts["ad"] += f < AD_THETAS
                if f < 0.10:
                    shifts_matched.append(shift)
    result = evaluate(dataset, estimates, error_types=("mssd", "mspd", "ad"))
    expected = {
        "bop19_average_recall_mssd": counts["mssd"] / (10 * n),
        "bop19_average_recall_mspd": counts["mspd"] / (10 * n),
        "bop19_average_time_per_image": float(np.mean([image_time(im) for im in {e.im_id for e in estimates}])),
        "add_s_recall_0.02": counts["ad"][0] / n,
        "add_s_recall_0.05": counts["ad"][1] / n,
        "add_s_recall_0.10": counts["ad"][2] / n,
        "add_s_mean_rotation_error_deg": 0.0,
        "add_s_mean_translation_error_mm": float(np.mean(shifts_matched)),
    }
    assert set(result.scores) == set(expected)  # no AR without VSD
    for key, value in expected.items():
        assert result.scores[key] == pytest.approx(value, abs=1e-5 if "rotation" in key else 1e-6), key
    assert 0.0 < expected["bop19_average_recall_mspd"] < 1.0


def test_top_k_estimate_with_higher_score_displaces_a_correct_one(synth):
    dataset = BopDataset(synth)
    instances = valid_instances(dataset)
    exact = [estimate(target, gt, 0.5) for target, gts in instances for _, gt in gts]
    n = len(exact)
    assert evaluate(dataset, exact, error_types=("mssd",)).scores["bop19_average_recall_mssd"] == 1.0
    target, gts = next((t, g) for t, g in instances if len(g) >= 2)
    hopeless_high = estimate(target, gts[0][1], 0.9, t=gts[0][1].t + FAR_AWAY)
    hopeless_low = estimate(target, gts[0][1], 0.1, t=gts[0][1].t + FAR_AWAY)
    result = evaluate(dataset, [*exact, hopeless_high, hopeless_low], error_types=("mssd",))
    assert result.scores["bop19_average_recall_mssd"] == pytest.approx((n - 1) / n, abs=1e-12)
    assert result.num_estimates_used == n
    # Missing estimates are misses.
    result = evaluate(dataset, exact[1:], error_types=("mssd",))
    assert result.scores["bop19_average_recall_mssd"] == pytest.approx((n - 1) / n, abs=1e-12)


def test_greedy_matching_is_strict_and_per_threshold():
    # Strict: an error equal to the threshold does not match.
    assert greedy_match(np.array([[[0.25]]]), np.array([0.25])).tolist() == [[-1]]
    assert greedy_match(np.array([[[0.25]]]), np.array([np.nextafter(0.25, 1.0)])).tolist() == [[0]]
    # Estimate 0 (higher score) takes its smallest-error GT 0; estimate 1 is left with GT 1.
    errors = np.array([[0.1, 0.2], [0.05, 0.5]])[:, :, None]
    assert greedy_match(errors, np.array([0.3])).tolist() == [[0], [-1]]
    # Per threshold: at 0.08 estimate 0 fails on GT 0, which stays free for estimate 1.
    assert greedy_match(errors, np.array([0.08, 0.3])).tolist() == [[-1, 0], [0, -1]]
    # Equal errors: the GT listed first; inf and NaN never match.
    assert greedy_match(np.array([[[0.1], [0.1]]]), np.array([0.5])).tolist() == [[0]]
    assert greedy_match(np.array([[[np.inf], [np.nan]]]), np.array([0.5])).tolist() == [[-1]]


def test_valid_gts_are_the_most_visible_ties_by_order():
    assert valid_gt_indices([0.2, 0.9, 0.5], 2) == [1, 2]
    assert valid_gt_indices([0.5, 0.9, 0.5], 2) == [0, 1]
    assert valid_gt_indices([0.5], 3) == [0]


def sample_estimates() -> list[PoseEstimate]:
    rng = np.random.default_rng(0)
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    return [
        PoseEstimate(1, im, obj, float(rng.random()), rotation_about_axis(unit(rng.normal(size=3)), rng.random()),
                     rng.normal(size=3) * 100 + [0, 0, 500], 0.123 + im)
        for im in range(3) for obj in (1, 2)
    ]


def test_results_round_trip(tmp_path):
    estimates = sample_estimates()
    path = tmp_path / "mymethod_synth-test.csv"
    save_results(path, estimates)
    assert path.read_text().splitlines()[0] == "scene_id,im_id,obj_id,score,R,t,time"
    loaded = load_results(path)
    assert len(loaded) == len(estimates)
    for a, b in zip(estimates, loaded):
        assert (a.scene_id, a.im_id, a.obj_id, a.score, a.time) == (b.scene_id, b.im_id, b.obj_id, b.score, b.time)
        assert np.array_equal(a.R, b.R) and np.array_equal(a.t, b.t)
    # Without a header, with Windows line ends and a trailing blank line.
    path.write_text("\r\n".join(path.read_text().splitlines()[1:]) + "\r\n\r\n")
    assert len(load_results(path)) == len(estimates)


GOOD_LINE = "1,0,1,0.9,1 0 0 0 1 0 0 0 1,10 20 300,0.5"


@pytest.mark.parametrize(
    "lines, message",
    [
        ([GOOD_LINE, "1,0,1,0.9,1 0 0 0 1 0 0 0 1,10 20 300"],
         "line 3: expected 7 comma-separated fields (scene_id,im_id,obj_id,score,R,t,time), got 6"),
        (["1,0,1,0.9,1 0 0 0 1 0 0 0,10 20 300,0.5"], "line 2: 'R' must be 9 space-separated numbers, got 8"),
        ([GOOD_LINE, "1,0,2,0.8,1 0 0 0 1 0 0 0 1,10 20 300,0.6"],
         "line 3: time 0.6 of scene 1 image 0 differs from time 0.5 on line 2"),
        (["1,0,1,high,1 0 0 0 1 0 0 0 1,10 20 300,0.5"], "line 2: 'score' must be a number, got 'high'"),
        (["1,0,x,0.9,1 0 0 0 1 0 0 0 1,10 20 300,0.5"], "line 2: 'obj_id' must be an integer, got 'x'"),
        (["1,0,1,0.9,1 0 0 0 1 0 0 0 1,10 20 nan,0.5"], "line 2: 't' must be finite"),
    ],
)
def test_malformed_results_one_clear_message(tmp_path, lines, message):
    path = tmp_path / "mymethod_synth-test.csv"
    path.write_text("\n".join(["scene_id,im_id,obj_id,score,R,t,time", *lines]) + "\n")
    with pytest.raises(ResultsFormatError) as info:
        load_results(path)
    text = str(info.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def test_result_filenames():
    assert parse_result_filename("a/mymethod_lmo-test.csv") == ("mymethod", "lmo", "test", None)
    assert parse_result_filename("m_tless-test-primesense_run2.csv") == ("m", "tless", "test", "primesense")
    with pytest.raises(ResultsFormatError, match="METHOD must not contain '_'"):
        parse_result_filename("my_method_lmo-test.csv")
    with pytest.raises(ResultsFormatError, match=r"expected \{METHOD\}_\{DATASET\}-\{SPLIT\}"):
        parse_result_filename("results.csv")


def eval_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools/eval_bop.py"), *args], capture_output=True, text=True)


def test_tool_end_to_end(synth, tmp_path):
    dataset = BopDataset(synth)
    estimates, expected, _ = golden_exact_or_hopeless(dataset)
    results = tmp_path / "mymethod_synth-test.csv"
    save_results(results, estimates)
    out = tmp_path / "eval"
    run = eval_tool("--results", str(results), "--data", str(synth), "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "bop19_average_recall" in run.stdout
    scores = json.loads((out / "scores_bop19.json").read_text())
    assert BOP_KEYS <= set(scores)
    assert scores["bop19_average_recall"] == pytest.approx(expected["bop19_average_recall"], abs=1e-6)
    assert (out / "per_object.csv").is_file() and (out / "scores.md").is_file()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("my_method_synth-test.csv", GOOD_LINE, "METHOD must not contain '_'"),
        ("mymethod_synth-test.csv", "1,0,1,0.9,1 0 0,10 20 300,0.5", "line 1: 'R' must be 9"),
    ],
)
def test_tool_bad_results_file(synth, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content + "\n")
    run = eval_tool("--results", str(path), "--data", str(synth), "--out", str(tmp_path / "eval"))
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_tool_help_has_examples():
    run = eval_tool("--help")
    assert run.returncode == 0 and "Examples:" in run.stdout and "--results" in run.stdout


# ----------------------------------------------------------------------------------------
# VSD golden scores in closed form, in the BOP toolkit's pixel convention
#
# A 20 × 16 mm plate (model x in [-10, 10], y in [-8, 8], z = 0, 4 vertices) facing a
# 640×480 camera with f = 500 px, (cx, cy) = (319.9, 240.2). The toolkit's renderer shows at
# pixel (row i, column j) the ray through (j + 0.5, i + 0.5), so the plate covers the pixels
# whose centre lies inside its projection:
#   GT, t = (0.4, -0.3, 470): u in 319.9 + (500/470)(0.4 ± 10) = [309.69, 330.96] -> columns
#       310..330; v in 240.2 + (500/470)(-0.3 ± 8) = [231.31, 248.39] -> rows 231..247.
#   estimate, t = (3.4, 0.2, 475): u in [312.95, 334.01] -> columns 313..333; v in
#       [231.99, 248.83] -> rows 232..248.
# Test depth (rendered by the toolkit): a wall at 800 mm, the GT plate at 470 mm, and an
# occluder at 300 mm over the columns whose centre is in (325, 400), i.e. 325..399.
#   visib_gt  = GT pixels not occluded: columns 310..324 × rows 231..247 = 15 × 17 = 255;
#   visib_est = estimate pixels not occluded (475 - 470 <= δ on the plate, in front of the
#               wall below it): columns 313..324 × rows 232..248 = 12 × 17 = 204;
#   intersection: columns 313..324 × rows 232..247 = 12 × 16 = 192; union 255 + 204 - 192 = 267.
#   |dist_gt - dist_est| = 5 mm × (ray norm < 1.003) on the intersection; the diameter is
#   2·hypot(10, 8) = 25.61 mm, so it is >= τ·d for τ <= 0.15 (3.84 mm) and < τ·d for
#   τ >= 0.2 (5.12 mm): e = 1 for τ in {0.05, 0.10, 0.15}, e = (267 - 192) / 267 = 75/267
#   for the seven others.
# The same scene with its test depth rendered in fastgdr's former convention (pixel (i, j)
# sampled at (j, i)): the GT plate covers columns 310..330 × rows 232..248 and the
# occluder columns 326..399. Then visib_gt = columns 310..325 × rows 231..247 = 272,
# visib_est = columns 313..325 × rows 232..248 = 221, intersection 13 × 16 = 208, union 285:
# e = 77/285 for τ >= 0.2. VSD renders the estimate and the GT in the toolkit's convention
# whatever renderer made the test depth.
# Scores of one such image: AR_VSD = 7 τ × 5 θ (0.30..0.50 > 75/267 = 0.281, > 77/285 =
# 0.270) / 100 = 0.35; MSSD = |(3, 0.5, 5)| = 5.852 mm = 0.2285·d -> θ 0.25..0.50: 0.6;
# MSPD = 3.32 px (corner (-10, -8)) < 5 px: 1.0; AR = (0.35 + 0.6 + 1.0) / 3 = 0.65.
# ----------------------------------------------------------------------------------------

PLATE_K = np.array([[500.0, 0.0, 319.9], [0.0, 500.0, 240.2], [0.0, 0.0, 1.0]])
PLATE_T_GT = np.array([0.4, -0.3, 470.0])
PLATE_T_EST = np.array([3.4, 0.2, 475.0])
PLATE_DIAMETER = 2.0 * math.hypot(10.0, 8.0)
PLATE_VSD_TOOLKIT_DEPTH = [1.0] * 3 + [75 / 267] * 7
PLATE_VSD_FORMER_DEPTH = [1.0] * 3 + [77 / 285] * 7


def plate_test_depth(convention: str) -> np.ndarray:
    """(480, 640) test depth in mm of the plate scene above, rendered in either convention."""
    depth = np.full((480, 640), 800.0)
    if convention == "toolkit":
        depth[231:248, 310:331] = 470.0
        depth[:, 325:400] = 300.0
    else:
        depth[232:249, 310:331] = 470.0
        depth[:, 326:400] = 300.0
    return depth


def write_plate_dataset(root: Path, *, models: bool = True, rgb: bool = True, camera_file: bool = True) -> Path:
    """A BOP dataset of the plate scene: image 0 with the toolkit-rendered test depth, image 1
    with the former-convention one; one GT and one target per image."""
    from fastgdr.data.mesh import Mesh, save_ply

    plate = Mesh(np.array([[-10.0, -8.0, 0.0], [10.0, -8.0, 0.0], [10.0, 8.0, 0.0], [-10.0, 8.0, 0.0]]),
                 np.array([[0, 1, 2], [0, 2, 3]]))
    info = {"1": {"diameter": PLATE_DIAMETER, "min_x": -10.0, "min_y": -8.0, "min_z": 0.0,
                  "size_x": 20.0, "size_y": 16.0, "size_z": 0.0}}
    for folder in ("models_eval", "models") if models else ("models_eval",):
        (root / folder).mkdir(parents=True)
        save_ply(root / folder / "obj_000001.ply", plate)
        (root / folder / "models_info.json").write_text(json.dumps(info))
    if camera_file:
        (root / "camera.json").write_text(json.dumps({"fx": 500.0, "fy": 500.0, "cx": 319.9, "cy": 240.2,
                                                      "width": 640, "height": 480, "depth_scale": 0.1}))
    scene = root / "test" / "000001"
    (scene / "depth").mkdir(parents=True)
    gt = {"obj_id": 1, "cam_R_m2c": np.eye(3).ravel().tolist(), "cam_t_m2c": PLATE_T_GT.tolist()}
    gt_info = {"bbox_obj": [310, 231, 20, 16], "bbox_visib": [310, 231, 14, 16], "px_count_all": 357,
               "px_count_valid": 357, "px_count_visib": 255, "visib_fract": 255 / 357}
    camera = {"cam_K": PLATE_K.ravel().tolist(), "depth_scale": 0.1}
    for im_id, convention in enumerate(("toolkit", "former")):
        cv2.imwrite(str(scene / "depth" / f"{im_id:06d}.png"), (plate_test_depth(convention) * 10).astype(np.uint16))
        if rgb:
            (scene / "rgb").mkdir(exist_ok=True)
            cv2.imwrite(str(scene / "rgb" / f"{im_id:06d}.png"), np.zeros((480, 640, 3), np.uint8))
    for name, entry in (("scene_camera", camera), ("scene_gt", [gt]), ("scene_gt_info", [gt_info])):
        (scene / f"{name}.json").write_text(json.dumps({"0": entry, "1": entry}))
    targets = [{"scene_id": 1, "im_id": im_id, "obj_id": 1, "inst_count": 1} for im_id in (0, 1)]
    (root / "test_targets_bop19.json").write_text(json.dumps(targets))
    return root


def plate_estimates() -> list[PoseEstimate]:
    return [PoseEstimate(1, im_id, 1, 0.9, np.eye(3), PLATE_T_EST, 0.25) for im_id in (0, 1)]


PLATE_SCORES = {
    "bop19_average_recall": 0.65, "bop19_average_recall_vsd": 0.35, "bop19_average_recall_mssd": 0.6,
    "bop19_average_recall_mspd": 1.0, "bop19_average_time_per_image": 0.25,
}


@pytest.mark.parametrize("convention, expected", [("toolkit", PLATE_VSD_TOOLKIT_DEPTH), ("former", PLATE_VSD_FORMER_DEPTH)])
def test_vsd_of_the_plate_in_closed_form(tmp_path, convention, expected):
    """Batched and reference VSD equal the hand-derived values (see above) on a test depth
    rendered by either renderer: they render the poses in the toolkit's convention."""
    from fastgdr.eval import batched_errors, reference_errors
    from fastgdr.eval.protocol import VSD_TAUS
    from fastgdr.render import Renderer

    mesh = load_ply(write_plate_dataset(tmp_path / "plate") / "models_eval" / "obj_000001.ply")
    renderer = Renderer({1: mesh})
    depth = plate_test_depth(convention)
    evaluator = batched_errors.VSDEvaluator(renderer, 640, 480, 15.0, VSD_TAUS.tolist())
    batched = evaluator.errors(1, np.eye(3)[None], PLATE_T_EST[None], np.eye(3)[None], PLATE_T_GT[None], depth,
                               PLATE_K, PLATE_DIAMETER)
    reference = reference_errors.vsd(
        np.eye(3), PLATE_T_EST, np.eye(3), PLATE_T_GT, depth, PLATE_K, 15.0, VSD_TAUS, True, PLATE_DIAMETER,
        lambda R, t: renderer.render_depth(1, R, t, PLATE_K, 640, 480),
    )
    renderer.close()
    np.testing.assert_allclose(batched.numpy()[0], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(reference, expected, rtol=0, atol=1e-12)


def test_golden_scores_of_the_plate(tmp_path):
    dataset = BopDataset(write_plate_dataset(tmp_path / "plate"))
    result = evaluate(dataset, plate_estimates(), error_types=("vsd", "mssd", "mspd"))
    assert result.scores == pytest.approx(PLATE_SCORES, abs=1e-6)
    np.testing.assert_allclose(result.recalls["vsd"][:3], 0.0)
    np.testing.assert_allclose(result.recalls["vsd"][3:], np.tile([0.0] * 5 + [1.0] * 5, (7, 1)))


def test_tool_needs_only_what_the_toolkit_reads(tmp_path):
    """Depth, scene_camera, scene_gt, scene_gt_info, models_eval and the targets file: no
    rgb/, no models/, no camera.json (the image size then comes from the depth images)."""
    root = write_plate_dataset(tmp_path / "plate", models=False, rgb=False, camera_file=False)
    results = tmp_path / "mymethod_plate-test.csv"
    save_results(results, plate_estimates())
    run = eval_tool("--results", str(results), "--data", str(root), "--out", str(tmp_path / "eval"))
    assert run.returncode == 0, run.stderr
    scores = json.loads((tmp_path / "eval" / "scores_bop19.json").read_text())
    assert {k: scores[k] for k in PLATE_SCORES} == pytest.approx(PLATE_SCORES, abs=1e-6)


@pytest.mark.parametrize(
    "remove, message",
    [
        ("test/000001/depth/000001.png", "depth: image 1: no depth file 000001.png or 000001.tif (VSD needs"),
        ("test/000001/scene_gt_info.json", "scene_gt_info.json: file not found (the evaluation needs visib_fract"),
        ("models_eval/obj_000001.ply", "obj_000001.ply: model file not found (object 1, a target object)"),
        ("models_eval", "models_eval: folder not found"),
    ],
)
def test_check_evaluation_names_what_is_missing(tmp_path, remove, message):
    from fastgdr.errors import DatasetError

    root = write_plate_dataset(tmp_path / "plate", models=False, rgb=False, camera_file=False)
    dataset = BopDataset(root)
    assert [t.im_id for t in dataset.check_evaluation("test", depth=True)] == [0, 1]
    path = root / remove
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(DatasetError, match=re.escape(message)):
        BopDataset(root).check_evaluation("test", depth=True)


# ----------------------------------------------------------------------------------------
# Rotations that are not rotations, empty files, dataset names
# ----------------------------------------------------------------------------------------

SHEAR_03 = np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def test_rotation_defect():
    from fastgdr.eval.results import rotation_defect

    R = rotation_about_axis(np.array([0.3, -0.4, 0.5]) / np.linalg.norm([0.3, -0.4, 0.5]), 1.2)
    assert rotation_defect(R) is None
    assert rotation_defect(np.round(R, 4)) is None  # a file written with 4 decimals
    assert "RᵀR deviates from I by up to 0.3," in rotation_defect(R @ SHEAR_03)  # SᵀS - I
    assert "RᵀR deviates from I by up to 0.75" in rotation_defect(0.5 * R)
    assert rotation_defect(R @ np.diag([1.0, 1.0, -1.0])) == "det R = -1: a reflection"


def write_with_non_rotations(path: Path) -> list[PoseEstimate]:
    """15 estimates on lines 2..16; lines 3 (sheared), 5 (0.5·R), 7 (reflected) and every
    line from 9 on (sheared) hold matrices that are not rotations: 11 of them."""
    estimates = sample_estimates() + [e for _ in range(3) for e in sample_estimates()[:3]]
    for k, estimate_ in enumerate(estimates):
        line = k + 2  # line 1 is the header
        if line == 5:
            estimate_.R = 0.5 * estimate_.R
        elif line == 7:
            estimate_.R = estimate_.R @ np.diag([1.0, 1.0, -1.0])
        elif line == 3 or line >= 9:
            estimate_.R = estimate_.R @ SHEAR_03
        estimate_.time = 0.5
    save_results(path, estimates)
    return estimates


def test_non_rotations_warn_with_count_and_lines_or_are_refused(tmp_path):
    from fastgdr.errors import ResultsWarning

    path = tmp_path / "mymethod_synth-test.csv"
    written = write_with_non_rotations(path)
    with pytest.warns(ResultsWarning) as record:
        loaded = load_results(path)
    assert len(loaded) == len(written) and np.array_equal(loaded[1].R, written[1].R)  # scored as given
    (message,) = [str(w.message) for w in record]
    assert "11 of 15 estimates have an R that is not a rotation" in message
    assert "on lines 3, 5, 7, 9, 10, 11, 12, 13, 14, 15 (the first 10 shown)" in message
    assert "line 3: RᵀR deviates from I by up to 0.3," in message
    with pytest.raises(ResultsFormatError, match=r"11 of 15 estimates .* \(refused in strict mode\)"):
        load_results(path, strict=True)


def test_empty_results_file_warns_or_is_refused(tmp_path):
    from fastgdr.errors import ResultsWarning

    path = tmp_path / "mymethod_synth-test.csv"
    path.write_text("scene_id,im_id,obj_id,score,R,t,time\n")
    with pytest.warns(ResultsWarning, match="the file holds no estimates: every target counts as a miss"):
        assert load_results(path) == []
    with pytest.raises(ResultsFormatError, match="holds no estimates"):
        load_results(path, strict=True)


def test_sheared_rotations_score_as_in_the_toolkit_with_a_rotation_error(synth):
    """The GT poses with R · shear(0.3): scored as given (as the toolkit does), and the mean
    rotation error of the matched estimates is 2·arcsin(0.3/√8) = 12.18°, not 0. The shear is
    in the x–z plane: no twin under the objects' symmetries (turns about z) is nearer."""
    dataset = BopDataset(synth)
    shear_xz = np.array([[1.0, 0.0, 0.3], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    sheared = [estimate(target, gt, 0.5, R=gt.R @ shear_xz) for target, gts in valid_instances(dataset) for _, gt in gts]
    result = evaluate(dataset, sheared, error_types=("mssd", "ad"))
    assert result.scores["add_s_recall_0.10"] > 0.5
    assert result.scores["add_s_mean_rotation_error_deg"] == pytest.approx(math.degrees(2 * math.asin(0.3 / math.sqrt(8))))


def test_check_dataset_name(tmp_path):
    from fastgdr.errors import ResultsWarning
    from fastgdr.eval.results import check_dataset_name

    synth_folder = tmp_path / "synth"
    check_dataset_name("m_synth-test.csv", synth_folder, None)  # the folder's own name: fine
    check_dataset_name("m_lmo-test.csv", tmp_path / "lmo", "lmo")
    with pytest.raises(ResultsFormatError, match="the file name says dataset 'ycbv' but .* is 'lmo'"):
        check_dataset_name("m_ycbv-test.csv", tmp_path / "lmo", "lmo")
    with pytest.warns(ResultsWarning, match="the file is named for dataset 'lmo', but .*synth is not recognized"):
        check_dataset_name("m_lmo-test.csv", synth_folder, None)
    with pytest.warns(ResultsWarning, match="unknown dataset name 'sytnh': neither a known BOP dataset"):
        check_dataset_name("m_sytnh-test.csv", synth_folder, None)
    with pytest.raises(ResultsFormatError, match="unknown dataset name 'sytnh'.*refused in strict mode"):
        check_dataset_name("m_sytnh-test.csv", synth_folder, None, strict=True)


def test_tool_warns_in_one_line_each_and_strict_refuses(synth, tmp_path):
    dataset = BopDataset(synth)
    estimates, _, _ = golden_exact_or_hopeless(dataset)
    estimates[0].R = estimates[0].R @ SHEAR_03
    results = tmp_path / "mymethod_lmo-test.csv"
    save_results(results, estimates)
    run = eval_tool("--results", str(results), "--data", str(synth), "--out", str(tmp_path / "eval"))
    assert run.returncode == 0, run.stderr
    warnings_ = [line for line in run.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings_) == 2 and "Traceback" not in run.stderr
    assert "named for dataset 'lmo'" in warnings_[0]
    assert f"1 of {len(estimates)} estimates have an R that is not a rotation (RᵀR = I within 0.001" in warnings_[1]
    assert "on lines 2;" in warnings_[1]
    run = eval_tool("--results", str(results), "--data", str(synth), "--out", str(tmp_path / "eval2"), "--strict")
    assert run.returncode == 2 and "refused in strict mode" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "eval2").exists()


def test_pose_error_summary_takes_rotation_errors_up_to_symmetry(synth, tmp_path):
    """Object 1's twins (a 180° turn about its symmetry axis) have rotation error 0; the
    other object, turned by 30° about an axis that is no symmetry, has 30°; each row and the
    "all" row count their estimates."""
    dataset = BopDataset(synth)
    thirty = rotation_about_axis(np.array([1.0, 0.0, 0.0]), math.radians(30.0))
    estimates, counts = [], {1: 0, 2: 0}
    for target, gts in valid_instances(dataset):
        for _, gt in gts:
            turn = SYMMETRIC_TURN[1][0] if target.obj_id == 1 else thirty
            estimates.append(estimate(target, gt, 0.5, R=gt.R @ turn, t=gt.t + np.array([0.0, 3.0, 4.0])))
            counts[target.obj_id] += 1
    path = tmp_path / "twins_synth-test.csv"
    save_results(path, estimates)
    out = subprocess.run([sys.executable, str(REPO / "benchmarks/pose_error_summary.py"), "--data", str(synth), str(path)],
                         capture_output=True, text=True, check=True).stdout
    rows = {cells[0]: cells[1:] for line in out.splitlines() if line.startswith("| ") and "---" not in line
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    assert rows["1"][:3] == [str(counts[1]), "0.0", "1.00"]
    assert rows["2"][:3] == [str(counts[2]), "30.0", "0.00"]
    assert rows["all"][0] == str(counts[1] + counts[2])
    for row in (rows["1"], rows["2"]):
        assert row[3:] == ["4.0", "3.0", "5.0"]  # |Δz|, |Δxy|, ‖Δt‖
