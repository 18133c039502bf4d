"""Generate the synthetic BOP-format dataset (the embedded default), headless on a CPU.

Examples:
  python tools/make_synthetic.py --out datasets/synth
  python tools/make_synthetic.py --out datasets/synth --objects 4 --train-images 400 --test-images 50 --seed 0
  python tools/make_synthetic.py --out /tmp/tiny --objects 2 --train-images 8 --test-images 4 --width 320 --height 240

The folder is a complete BOP dataset (models, models_eval, train_pbr, test,
test_targets_bop19.json, camera.json) plus detections/synth_default_detections_test.json
in the BOP 2023 default-detections format. The same seed gives the same dataset.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from tqdm import tqdm

from fastgdr.cli import run_tool
from fastgdr.data.synthetic import SyntheticSpec, generate_dataset
from fastgdr.errors import FastGDRError
from fastgdr.outputs import check_out_dir


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = SyntheticSpec()
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--objects", type=int, default=defaults.num_objects, help="number of objects")
    parser.add_argument("--train-images", type=int, default=defaults.train_images)
    parser.add_argument("--test-images", type=int, default=defaults.test_images)
    parser.add_argument("--width", type=int, default=defaults.width, help="image width in px")
    parser.add_argument("--height", type=int, default=defaults.height, help="image height in px")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if check_out_dir(args.out).exists() and any(args.out.iterdir()):
        if not args.overwrite:
            raise FastGDRError(f"{args.out} exists and is not empty (use --overwrite to replace it)")
        shutil.rmtree(args.out)
    try:
        spec = SyntheticSpec(
            num_objects=args.objects, train_images=args.train_images, test_images=args.test_images,
            width=args.width, height=args.height, seed=args.seed,
        )
    except ValueError as exc:
        raise FastGDRError(str(exc)) from None
    with tqdm(total=spec.train_images + spec.test_images, desc="render", unit="img") as bar:
        report = generate_dataset(args.out, spec, progress=lambda done, total: bar.update(1))
    print(
        f"wrote {report.images} images ({report.instances} object instances) to {report.out_dir} "
        f"in {report.seconds:.1f} s: {report.images_per_second:.1f} images/s"
    )
    return 0


if __name__ == "__main__":
    run_tool(main)
