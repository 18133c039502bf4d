"""The acceleration study: its stages, its table and sentences, and one toy run end to end."""

import json
import subprocess
import sys

import pytest
import torch

from fastgdr.checkpoint import save_checkpoint
from fastgdr.errors import FastGDRError
from fastgdr.study import (
    RunResult,
    StageBuilder,
    StudyPlan,
    StudySettings,
    choose_ot_weight,
    collect,
    gap_closed,
    plan_text,
    seed_spread_sentence,
    summarize,
    with_dependencies,
)

from conftest import REPO, TINY_TRAIN_OVERRIDES


def settings(tmp_path, **kw):
    return StudySettings(data=tmp_path / "data", detections=tmp_path / "dets.json", out=tmp_path / "study", **kw)


def args_of(stages, name):
    (stage,) = [s for s in stages if s.name == name]
    return stage.args


# --------------------------------------------------------------------------- stages


def test_variants_bring_what_they_are_pruned_from_and_the_reference():
    assert with_dependencies(["p28_kd"]) == ("p", "kd_feature", "p28_kd")
    assert with_dependencies(["n28"]) == ("p", "n", "n28")


def test_every_run_trains_alike_and_pruned_ones_fine_tune_three_eighths(tmp_path):
    s = settings(tmp_path, seeds=(0, 1), minutes=20, batch=8, overrides=("model.num_regions=32", "data.max_instances=9"))
    builder = StageBuilder(s)
    reference = builder.reference_phase()
    p = args_of(reference, "train p_seed1")
    assert "train.time_budget_minutes=20" in p and "train.iterations=null" in p and "train.seed=1" in p
    assert {"train.recipe=short", "model.input_res=128", "train.batch_size=8", "model.num_regions=32"} <= set(p)
    teacher = args_of(reference, "train teacher2")
    assert "train.time_budget_minutes=40" in teacher and "train.seed=102" in teacher  # twice P's budget
    assert str(s.teacher_config) in teacher

    plan = StudyPlan({0: 800, 1: 640}, ot_weight=2.5)
    variants = builder.variants_phase(plan)
    for name in ("n_seed1", "kd_feature_seed1", "kd_ua_seed1"):  # as many iterations as that seed's P
        assert "train.iterations=640" in args_of(variants, f"train {name}"), name
    fine_tune = args_of(variants, "train p28_seed1")
    assert "train.iterations=240" in fine_tune and fine_tune[:2] == ("--init", str(s.out / "p28_seed1" / "pruned.pth"))
    assert "model.num_regions=32" not in fine_tune and "data.max_instances=9" in fine_tune  # the checkpoint's model
    assert args_of(variants, "prune p28_seed0")[args_of(variants, "prune p28_seed0").index("--pnp-d") + 1] == "0"
    pnp16 = args_of(variants, "prune p28_pnp16_seed0")
    assert pnp16[pnp16.index("--pnp-d") + 1] == "16" and pnp16[pnp16.index("--geo-d") + 1] == "28"
    assert args_of(variants, "prune p28_kd_seed0")[1] == str(s.out / "kd_feature_seed0" / "model_final.pth")
    ua = args_of(variants, "train kd_ua_seed0")
    assert ua.count("--teacher") == 3 and "kd.ot.weight=2.5" in ua and "kd.uncertainty.enabled=true" in ua
    assert not any("source=tta" in a for a in ua)  # the ensemble, UA-KD's own
    assert args_of(variants, "train kd_ot_seed0").count("--teacher") == 1
    tests = [st for st in variants if st.tool == "test.py"]
    assert all("--decoder" in st.args and "patchpnp" in st.args for st in tests)
    assert args_of(variants, "test kd_ua_seed0")[args_of(variants, "test kd_ua_seed0").index("--method") + 1] == "kd-ua-seed0"

    timed = StageBuilder(settings(tmp_path, seeds=(0,), minutes=16, equalize="time")).variants_phase(StudyPlan(ot_weight=1.0))
    assert "train.time_budget_minutes=16" in args_of(timed, "train kd_naive_seed0")
    assert "train.time_budget_minutes=6" in args_of(timed, "train n28_seed0")


def test_one_teacher_makes_uncertainty_the_labelled_fallback(tmp_path):
    s = settings(tmp_path, seeds=(0,), variants=("kd_ua",), teachers=(tmp_path / "t.pth",), ot_weight=1.0)
    builder = StageBuilder(s)
    (stage,) = [st for st in builder.variants_phase(StudyPlan({0: 10}, 1.0)) if st.name == "train kd_ua_seed0"]
    assert "kd.uncertainty.source=tta" in stage.args
    reference = builder.reference_phase()
    assert [st.name for st in reference] == ["test teacher0", "train p_seed0", "test p_seed0"]  # given: evaluated only
    assert builder.tuning_phase(StudyPlan({0: 10})) == []  # the weight is given


def test_the_ot_weight_is_tuned_on_a_seed_of_its_own(tmp_path):
    s = settings(tmp_path, seeds=(0, 1), ot_weights=(0.1, 1.0))
    stages = StageBuilder(s).tuning_phase(StudyPlan({0: 500, 1: 400}))
    assert [st.name for st in stages] == ["train tune_ot_w0p1_seed1000", "test tune_ot_w0p1_seed1000",
                                          "train tune_ot_w1_seed1000", "test tune_ot_w1_seed1000"]
    assert "kd.ot.weight=0.1" in stages[0].args and "train.iterations=500" in stages[0].args
    with pytest.raises(FastGDRError, match="tuning seed 0 is one of the study's seeds"):
        settings(tmp_path, seeds=(0, 1), tune_seed=0)
    result = lambda ar: RunResult("x", {"bop19_average_recall": ar}, "patchpnp", 1, 1.0)
    assert choose_ot_weight({0.1: result(0.2), 1.0: result(0.3), 10.0: None}) == 1.0
    assert choose_ot_weight({0.1: result(0.3), 1.0: result(0.3)}) == 0.1  # a tie: the smaller weight
    with pytest.raises(FastGDRError, match="no OT tuning run has scores"):
        choose_ot_weight({1.0: None})


def test_unknown_variants_are_refused_with_the_valid_ones(tmp_path):
    with pytest.raises(FastGDRError, match="unknown variant.*p29.*valid: p, p28, p28_pnp16"):
        settings(tmp_path, variants=("p29",))


def test_dry_run_lists_the_stages_and_an_estimate(tmp_path):
    text = plan_text(settings(tmp_path))
    assert "train.iterations=<iterations of p_seed0>" in text and "kd.ot.weight=<tuned>" in text
    assert "estimated wall clock" in text and " h)" in text


# --------------------------------------------------------------------------- sentences and targets


def test_seed_spread_sentences_are_computed():
    exceeds = seed_spread_sentence("kd", "p", {0: 0.05, 1: 0.06, 2: 0.055}, {0: 0.03, 1: 0.04, 2: 0.035})
    assert exceeds.startswith("kd vs p: +0.020 AR (paired by seed: +0.020, +0.020, +0.020)")
    assert "do not overlap (kd 0.050–0.060, p 0.030–0.040): the difference exceeds the seed spread (kd is above)" in exceeds
    within = seed_spread_sentence("p28", "p", {0: 0.03, 1: 0.05}, {0: 0.04, 1: 0.045})
    assert "overlap" in within and "does not exceed the seed spread" in within and "-0.002" in within
    single = seed_spread_sentence("n", "p", {0: 0.05}, {0: 0.03, 1: 0.04})
    assert "one seed on a side: no spread" in single
    assert gap_closed(0.066, 0.065, 0.068) == pytest.approx(1 / 3)
    assert gap_closed(0.05, 0.04, 0.03) is None  # the teacher is worse: no gap


def eval_folder(out, name, ar, decoder="patchpnp", iterations=100, minutes=2.0, method=None):
    run = out / name
    (run / "eval").mkdir(parents=True)
    scores = {"bop19_average_recall": ar, "bop19_average_recall_vsd": ar, "bop19_average_recall_mssd": ar / 2,
              "bop19_average_recall_mspd": ar * 2, "add_s_recall_0.10": ar / 3}
    (run / "eval" / "scores_bop19.json").write_text(json.dumps(scores))
    csv_name = f"{method or name.replace('_', '-')}_synth-test.csv"
    (run / "eval" / csv_name).write_text("scene_id,im_id,obj_id,score,R,t,time\n")
    (run / "eval" / "inference.json").write_text(json.dumps({"decoder": decoder, "results_csv": csv_name}))
    # the last logged row is not the last iteration: the table reads the final checkpoint
    (run / "metrics.csv").write_text(f"iter,loss,minutes\n{iterations // 2},1.0,{minutes / 2}\n")
    save_checkpoint(run / "model_final.pth", torch.nn.Linear(1, 1), iteration=iterations, elapsed_seconds=60.0 * minutes)


def test_summary_tabulates_means_ranges_sentences_targets_and_files(tmp_path):
    s = settings(tmp_path, seeds=(0, 1), variants=("p", "p28", "kd_feature", "kd_ot"), ot_weights=(1.0, 5.0),
                 teacher_count=2)
    for seed, (p, p28, feature) in enumerate(((0.030, 0.029, 0.046), (0.034, 0.031, 0.050))):
        eval_folder(s.out, f"p_seed{seed}", p, iterations=400 + seed)
        eval_folder(s.out, f"p28_seed{seed}", p28, iterations=150)
        eval_folder(s.out, f"kd_feature_seed{seed}", feature, iterations=400 + seed)
    eval_folder(s.out, "kd_ot_seed0", 0.033, decoder="epnp")  # one seed only so far
    eval_folder(s.out, "teacher0", 0.060)
    eval_folder(s.out, "teacher1", 0.058)
    eval_folder(s.out, "tune_ot_w1_seed1000", 0.02)
    text = summarize(collect(s, StudyPlan(ot_weight=5.0)), command="python benchmarks/acceleration_study.py ...")
    table = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
             for line in text.splitlines() if line.startswith("| ") and not line.startswith("| variant")}
    assert table["p"][2:6] == ["0, 1", "patchpnp", "400", "2.0"]
    assert table["p"][6] == "0.032 (0.030–0.034)"
    assert table["p28"][-2:] == ["p", "-0.002"] and table["kd_feature"][-1] == "+0.016"
    assert table["kd_ot"][2:4] == ["0", "epnp"]  # the decoder each number used
    assert "kd_feature vs p: +0.016 AR (paired by seed: +0.016, +0.016); the seed ranges do not overlap" in text
    assert "p28 vs p: -0.002 AR" in text and "does not exceed the seed spread" in text
    assert "kd_feature closes 57 % of the teacher–student gap (teacher 0.060, plain P 0.032" in text
    assert "target ≥ 30 % met" in text and "p28 − p = -0.002 AR: target within 1 AR point (≥ −0.010) met" in text
    assert "| 1 | 0.020 |" in text and "| 5 | – |" in text  # the tuning runs, one not evaluated
    files = sorted(path.name for path in (s.out / "bop_results").iterdir())
    assert "p28-seed1_synth-test.csv" in files and "teacher0_synth-test.csv" in files and len(files) == 10
    data = json.loads((s.out / "acceleration_study.json").read_text())
    assert data["ot_weight"] == 5.0 and data["runs"]["p"]["1"]["iterations"] == 401
    assert (s.out / "acceleration_study.md").read_text() == text


# --------------------------------------------------------------------------- end to end


def test_the_study_runs_end_to_end_at_toy_size(tiny_dataset, tmp_path):
    """Teachers (an ensemble of two), P, P28 pruned from it, and UA-KD with the OT weight
    tuned over two candidates: every stage a real tool run, a few iterations each."""
    out = tmp_path / "study"
    cmd = [sys.executable, str(REPO / "benchmarks/acceleration_study.py"), "--data", str(tiny_dataset),
           "--out", str(out), "--seeds", "0", "--variants", "p28,kd_ua", "--iterations", "2",
           "--teacher-count", "2", "--teacher-iterations", "2", "--ot-weights", "1,5", "--geo-d", "2", "--pnp-d", "1",
           "--batch", "4", "--workers", "0", *[o for o in TINY_TRAIN_OVERRIDES if not o.startswith("train.batch_size")]]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    text = (out / "acceleration_study.md").read_text()
    for variant in ("p", "p28", "kd_ua"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {variant} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] == "0" and cells[3] == "patchpnp", row
        assert all(0.0 <= float(c) <= 1.0 for c in cells[6:11]), row  # every metric measured
    assert "kd_ua vs p: " in text and "one seed on a side" in text
    weight = json.loads((out / "ot_weight.json").read_text())["ot_weight"]
    assert weight in (1.0, 5.0)
    header = (out / "kd_ua_seed0" / "metrics.csv").read_text().splitlines()[0]
    assert "kd_ot" in header and "kd_ua_feature" in header
    assert (out / "p28_seed0" / "pruned.yaml").is_file()
    files = {path.name for path in (out / "bop_results").iterdir()}
    assert {"p-seed0_synth-test.csv", "p28-seed0_synth-test.csv", "kd-ua-seed0_synth-test.csv",
            "teacher0_synth-test.csv", "tune-ot-w5-seed1000_synth-test.csv"} <= files
