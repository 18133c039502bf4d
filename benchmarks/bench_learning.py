"""How fast does a model learn? Train from random weights for M minutes, evaluate along the way.

Examples:
  python benchmarks/bench_learning.py --config configs/p.yaml --minutes 12 --out runs/learn_p
  python benchmarks/bench_learning.py --config configs/n.yaml --minutes 12 --out runs/learn_n --seed 1
  python benchmarks/bench_learning.py --config configs/p.yaml --minutes 12 --out runs/learn_p_gdrnpp train.recipe=gdrnpp
  python benchmarks/bench_learning.py --config configs/p.yaml --minutes 12 --out runs/learn_p_pre --pretrain-iterations 2400

Stages (a re-run skips the finished ones):
  1. the default synthetic dataset in --data, generated when it is not there (4 objects,
     400 training and 50 held-out test images; tools/make_synthetic.py's defaults);
  1b. with --pretrain-iterations N: a backbone pretraining, N iterations of the
     backbone_pretraining recipe (coordinates, masks and regions of the training renders;
     no pose terms) with the run's model and data settings, kept in --pretrain-dir and
     reused by every later run that names it; its minutes are reported apart, never
     counted in M; the backbone of every later stage starts from it;
  2. the untrained model (the recipe's initialisation), the curve's point at minute 0;
  3. training from random weights with train.time_budget_minutes=M, saving the weights at
     --points evenly spaced fractions of the budget (tools/train.py; the clock counts the
     training loop, data loading included, not the set-up before it);
  4. every saved model evaluated on the held-out test split from the dataset's detections,
     with each of --decoders (inference and BOP 2019 scoring are not counted in M).
Outputs in OUT: curve.csv, curve.png, loss_curves.png (every loss term of the run), the
run folder (train/, with metrics.csv) and the last line
  AR=<x> ADD-S=<y> iterations=<n> minutes=<m>
for the final model with --decoder (plus  pretrain_iterations=<n> pretrain_minutes=<m>  with
a pretraining). Defaults: the short training recipe, 128 px crops, batch 16 (overridable
with dotted config overrides). Time it on an idle machine: other jobs slow training directly.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from fastgdr.checkpoint import read_checkpoint
from fastgdr.cli import run_tool
from fastgdr.config import Config, load_config, to_dict
from fastgdr.data.synthetic import SyntheticSpec, generate_dataset
from fastgdr.inference import DECODERS
from fastgdr.learning_curve import curve_points, plot_curve, plot_loss_curves, run_checkpoints, write_curve_csv
from fastgdr.pipeline import Stage, run_pipeline

BATCH_SIZE = 16
DEFAULT_OVERRIDES = ("train.recipe=short", "model.input_res=128", f"train.batch_size={BATCH_SIZE}", "data.num_workers=0")
DETECTIONS = Path("detections/synth_default_detections_test.json")
PRETRAIN_SEED = 100  # the backbone pretraining's seed, apart from the runs' seeds 0, 1, …
SHARED_SETTINGS = ("model.", "data.")  # the overrides a run's pretraining shares with it


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="model config (configs/*.yaml)")
    parser.add_argument("--minutes", type=float, required=True, help="training wall clock in minutes")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--data", type=Path, default=Path("datasets/synth"),
                        help="synthetic dataset folder, generated when missing (default datasets/synth)")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--points", type=int, default=4, help="evaluations along the run, the last at the end")
    parser.add_argument("--decoders", default="patchpnp,epnp-rot", help="comma-separated pose decoders to evaluate")
    parser.add_argument("--decoder", default="patchpnp", choices=list(DECODERS), help="decoder of the last line")
    parser.add_argument("--pretrain-iterations", type=int, default=0,
                        help="pretrain the backbone for this many iterations first (0: none; not counted in --minutes)")
    parser.add_argument("--pretrain-dir", type=Path,
                        help="the backbone pretraining's run folder, reused when finished (default "
                             "runs/backbone_pretraining/<config>_<iterations>[_<digest of model./data. overrides>])")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides (after the defaults above)")
    return parser.parse_args()


def default_pretrain_dir(config: Path, iterations: int, settings: list[str]) -> Path:
    """runs/backbone_pretraining/<config>_<iterations>, plus a digest of the model and data
    overrides when there are any (a pretraining at other settings never stands in for it)."""
    name = f"{config.stem}_{iterations}"
    if settings:
        name += "_" + hashlib.sha1(" ".join(settings).encode()).hexdigest()[:8]
    return Path("runs/backbone_pretraining") / name


def settings_that_differ(expected: dict, cached: dict, prefix: str = "") -> list[str]:
    """The dotted keys of ``expected`` whose value ``cached`` does not share, each with both values."""
    differences = []
    for key, value in expected.items():
        other = cached.get(key) if isinstance(cached, dict) else None
        if isinstance(value, dict) and isinstance(other, dict):
            differences += settings_that_differ(value, other, f"{prefix}{key}.")
        elif value != other:
            differences.append(f"{prefix}{key}: {other!r} in the cached run, {value!r} for this one")
    return differences


def check_cached_pretraining(checkpoint: Path, expected: Config) -> None:
    """Refuse a finished pretraining whose model or data settings or length differ from the
    ones this run would pretrain with (e.g. made before a recipe changed)."""
    cached = read_checkpoint(checkpoint)["config"]
    wanted = to_dict(expected)
    model = {key: value for key, value in wanted["model"].items() if key != "num_classes"}  # set from the data
    differences = settings_that_differ(
        {"model": model, "data": wanted["data"], "train": {"iterations": wanted["train"]["iterations"]}}, cached
    )
    if differences:
        raise SystemExit(
            f"the backbone pretraining in {checkpoint.parent} was made with other settings than this run's:\n  "
            + "\n  ".join(differences)
            + "\nremove that folder or pass another --pretrain-dir"
        )


def main() -> int:
    args = parse_args()
    decoders = [d.strip() for d in args.decoders.split(",") if d.strip()]
    if args.decoder not in decoders:
        decoders.append(args.decoder)
    unknown = [d for d in decoders if d not in DECODERS]
    if unknown:
        raise SystemExit(f"unknown decoder(s) {', '.join(unknown)}; valid: {', '.join(DECODERS)}")
    if args.pretrain_iterations < 0:
        raise SystemExit(f"--pretrain-iterations must be >= 0, got {args.pretrain_iterations}")
    if not (args.data / "test_targets_bop19.json").exists():
        print(f"generating the default synthetic dataset in {args.data}")
        generate_dataset(args.data, SyntheticSpec())
    overrides = (*DEFAULT_OVERRIDES, f"train.seed={args.seed}", *args.overrides)
    fractions = [round(i / args.points, 4) for i in range(1, args.points)]
    stages = []
    own_settings = [o for o in args.overrides if o.startswith(SHARED_SETTINGS)]
    pretrain_dir = args.pretrain_dir or default_pretrain_dir(args.config, args.pretrain_iterations, own_settings)
    if args.pretrain_iterations:
        shared = [o for o in DEFAULT_OVERRIDES if o.startswith(SHARED_SETTINGS)] + own_settings
        pretrain_overrides = (*shared, "train.recipe=backbone_pretraining", f"train.batch_size={BATCH_SIZE}",
                              f"train.iterations={args.pretrain_iterations}", f"train.seed={PRETRAIN_SEED}")
        if (pretrain_dir / "model_final.pth").exists():
            check_cached_pretraining(pretrain_dir / "model_final.pth", load_config(args.config, pretrain_overrides))
        stages.append(Stage(
            "backbone pretraining", "train.py",
            ("--config", str(args.config), "--data", str(args.data), "--out", str(pretrain_dir), "--no-progress",
             *pretrain_overrides),
            (pretrain_dir / "model_final.pth",),
            resumable=pretrain_dir / "last_checkpoint.pth",
        ))
        overrides = (*overrides, f"model.backbone.pretrained={pretrain_dir / 'model_final.pth'}")

    def train_stage(name: str, *extra: str) -> Stage:
        return Stage(
            name, "train.py",
            ("--config", str(args.config), "--data", str(args.data), "--out", str(args.out / name), "--no-progress",
             *overrides, *extra),
            (args.out / name / "model_final.pth",),
            resumable=args.out / name / "last_checkpoint.pth",
        )

    run_pipeline([
        *stages,
        train_stage("untrained", "train.iterations=0"),
        train_stage("train", f"train.time_budget_minutes={args.minutes}", f"train.snapshots=[{','.join(map(str, fractions))}]",
                    "train.checkpoint_period=100"),
    ], args.out / "logs")

    checkpoints = [args.out / "untrained" / "model_final.pth", *run_checkpoints(args.out / "train")]
    points = curve_points(checkpoints, args.data, args.data / DETECTIONS, decoders, cache_dir=args.out / "eval")
    write_curve_csv(points, args.out / "curve.csv")
    pretraining = f", backbone pretrained {args.pretrain_iterations} its" if args.pretrain_iterations else ""
    title = f"{args.config.stem}: {' '.join(args.overrides) or 'defaults'}{pretraining}, seed {args.seed}, {args.minutes:g} min"
    plot_curve(points, args.out / "curve.png", title)
    plot_loss_curves({f"{args.config.stem}, seed {args.seed}": args.out / "train" / "metrics.csv"},
                     args.out / "loss_curves.png")
    final = [p for p in points if p.decoder == args.decoder][-1]
    print(f"curve: {args.out / 'curve.csv'}, {args.out / 'curve.png'}; losses: {args.out / 'loss_curves.png'}")
    line = f"AR={final.ar:.4f} ADD-S={final.add_s:.4f} iterations={final.iteration} minutes={final.minutes:.2f}"
    if args.pretrain_iterations:
        minutes = read_checkpoint(pretrain_dir / "model_final.pth")["elapsed_seconds"] / 60
        line += f" pretrain_iterations={args.pretrain_iterations} pretrain_minutes={minutes:.2f}"
    print(line)
    return 0


if __name__ == "__main__":
    run_tool(main)
