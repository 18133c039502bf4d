"""Time the BOP 2019 evaluation: batched errors vs a per-pair reference loop (as the BOP toolkit).

Examples:
  python benchmarks/bench_eval.py
  python benchmarks/bench_eval.py --images 50 --objects 4 --subset 5
  python benchmarks/bench_eval.py --data datasets/synth --subset 3 --device cuda
  python benchmarks/bench_eval.py --data datasets/synth --subset 0 --end-to-end 3

Without --data a synthetic dataset (640×480) is generated in a temporary folder. A
results file is made from the GT poses of every target instance, perturbed (rotation
up to --max-angle degrees, translation noise of --noise-mm), written and read back.
``evaluate`` (all four error types, VSD included) is timed on all targets; then on the
targets of the first --subset images both with the batched errors and with a backend
that loops over pairs calling fastgdr.eval.reference_errors (numpy, two renders per VSD
pair, k-d tree ADI), and the two sets of scores are compared. With --end-to-end N the
command-line evaluation (tools/eval_bop.py on the written results file: process start,
imports, checks, all four errors, score files) is also run N times and its wall-clock
seconds printed. Prints measured numbers only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fastgdr.data.bop import BopDataset
from fastgdr.data.cards import detect_card
from fastgdr.data.mesh import load_ply
from fastgdr.data.symmetry import rotation_about_axis
from fastgdr.eval import reference_errors as ref
from fastgdr.eval.bop19 import evaluate
from fastgdr.eval.error_backend import PairBatch
from fastgdr.eval.protocol import DEFAULT_VSD_DELTA_MM, VSD_TAUS
from fastgdr.eval.recall import EvalResult
from fastgdr.eval.results import PoseEstimate, load_results, save_results


class ReferenceErrors:
    """An ErrorBackend that computes one pair at a time with fastgdr.eval.reference_errors."""

    def __init__(self, renderer, width: int, height: int, delta: float) -> None:
        self.renderer, self.width, self.height, self.delta = renderer, width, height, delta

    @staticmethod
    def _numpy(pairs: PairBatch):
        return (x.cpu().numpy() for x in (pairs.R_e, pairs.t_e, pairs.R_g, pairs.t_g))

    def vsd(self, pairs: PairBatch) -> torch.Tensor:
        m, K = pairs.model, pairs.K.cpu().numpy()
        depth = pairs.depth.cpu().numpy()

        def render(R, t):
            return self.renderer.render_depth(m.obj_id, R, t, K, self.width, self.height)

        rows = [
            ref.vsd(R_e, t_e, R_g, t_g, depth, K, self.delta, VSD_TAUS, True, m.diameter, render)
            for R_e, t_e, R_g, t_g in zip(*self._numpy(pairs))
        ]
        return torch.tensor(rows, dtype=torch.float64)

    def _per_pair(self, fn, pairs: PairBatch) -> torch.Tensor:
        return torch.tensor([fn(*pose) for pose in zip(*self._numpy(pairs))], dtype=torch.float64)

    def mssd(self, pairs: PairBatch) -> torch.Tensor:
        m = pairs.model
        pts, sym_R, sym_t = m.points.cpu().numpy(), m.sym_R.cpu().numpy(), m.sym_t.cpu().numpy()
        return self._per_pair(lambda *pose: ref.mssd(*pose, pts, sym_R, sym_t), pairs)

    def mspd(self, pairs: PairBatch) -> torch.Tensor:
        m, K = pairs.model, pairs.K.cpu().numpy()
        pts, sym_R, sym_t = m.points.cpu().numpy(), m.sym_R.cpu().numpy(), m.sym_t.cpu().numpy()
        return self._per_pair(lambda *pose: ref.mspd(*pose, K, pts, sym_R, sym_t), pairs)

    def ad(self, pairs: PairBatch) -> torch.Tensor:
        pts = pairs.model.points.cpu().numpy()
        fn = ref.adi if pairs.model.symmetric else ref.add
        return self._per_pair(lambda *pose: fn(*pose, pts), pairs)


def perturbed_results(dataset: BopDataset, max_angle: float, noise_mm: float, seed: int) -> list[PoseEstimate]:
    """One estimate per GT instance of every target: the GT pose, perturbed."""
    rng = np.random.default_rng(seed)
    targets = dataset.load_test_targets()
    wanted = {(t.scene_id, t.im_id, t.obj_id) for t in targets}
    estimates = []
    for scene_id in sorted({t.scene_id for t in targets}):
        scene = dataset.load_scene("test", scene_id)
        for im_id, gts in scene.gt.items():
            for gt in gts:
                if (scene_id, im_id, gt.obj_id) not in wanted:
                    continue
                axis = rng.normal(size=3)
                turn = rotation_about_axis(axis / np.linalg.norm(axis), np.radians(rng.uniform(0, max_angle)))
                estimates.append(PoseEstimate(
                    scene_id, im_id, gt.obj_id, float(rng.random()), turn @ gt.R,
                    gt.t + rng.normal(0.0, noise_mm, size=3), 0.05,
                ))
    return estimates


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def same_scores(a: EvalResult, b: EvalResult) -> tuple[bool, float]:
    diffs = [abs(a.scores[k] - b.scores[k]) for k in a.scores if not (np.isnan(a.scores[k]) and np.isnan(b.scores[k]))]
    return a.scores.keys() == b.scores.keys() and max(diffs) == 0.0, max(diffs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="BOP dataset (default: generate a synthetic one)")
    parser.add_argument("--images", type=int, default=20, help="test images to generate")
    parser.add_argument("--objects", type=int, default=4, help="objects to generate")
    parser.add_argument("--subset", type=int, default=4, help="images compared with the reference loop")
    parser.add_argument("--max-angle", type=float, default=8.0, help="rotation perturbation, degrees")
    parser.add_argument("--noise-mm", type=float, default=6.0, help="translation noise (std), mm")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--end-to-end", type=int, default=0, metavar="N",
                        help="also time tools/eval_bop.py on the results file N times (wall clock)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None:
            from fastgdr.data.synthetic import SyntheticSpec, generate_dataset

            root = Path(tmp) / "synth"
            spec = SyntheticSpec(num_objects=args.objects, train_images=0, test_images=args.images,
                                 width=640, height=480, seed=args.seed)
            _, seconds = timed(lambda: generate_dataset(root, spec))
            print(f"generated {args.images} test images (640x480, {args.objects} objects) in {seconds:.1f} s")
        dataset = BopDataset(root, detect_card(root))
        name = dataset.card.name if dataset.card is not None else Path(root).resolve().name
        csv = Path(tmp) / f"bench_{name.replace('_', '').replace('-', '')}-test.csv"
        save_results(csv, perturbed_results(dataset, args.max_angle, args.noise_mm, args.seed))
        estimates = load_results(csv)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
              f"device {args.device}; {len(estimates)} estimates")

        full, seconds = timed(lambda: evaluate(dataset, estimates, device=args.device))
        print(f"batched, all targets: {full.num_estimates_used} estimates in {seconds:.2f} s = "
              f"{full.num_estimates_used / seconds:.1f} estimates/s; AR {full.scores['bop19_average_recall']:.4f}")

        if args.end_to_end > 0:
            tool = Path(__file__).resolve().parents[1] / "tools" / "eval_bop.py"
            command = [sys.executable, str(tool), "--results", str(csv), "--data", str(root), "--out", str(Path(tmp) / "eval"),
                       "--overwrite"]
            walls = [timed(lambda: subprocess.run(command, check=True, capture_output=True))[1] for _ in range(args.end_to_end)]
            print(f"end to end (tools/eval_bop.py, {len(estimates)} estimates): "
                  f"{', '.join(f'{w:.2f}' for w in walls)} s; median {float(np.median(walls)):.2f} s")
        if args.subset <= 0:
            return
        targets = dataset.load_test_targets()
        images = sorted({(t.scene_id, t.im_id) for t in targets})[: args.subset]
        subset = [t for t in targets if (t.scene_id, t.im_id) in images]
        fast, fast_s = timed(lambda: evaluate(dataset, estimates, targets=subset, device=args.device))

        from fastgdr.render import Renderer

        width, height = dataset.image_size
        delta = dataset.card.vsd_delta_mm if dataset.card is not None else DEFAULT_VSD_DELTA_MM
        obj_ids = {t.obj_id for t in subset}
        renderer = Renderer({obj_id: load_ply(dataset.model_path(obj_id, eval=True)) for obj_id in obj_ids})
        backend = ReferenceErrors(renderer, width, height, delta)
        slow, slow_s = timed(lambda: evaluate(dataset, estimates, targets=subset, backend=backend))
        renderer.close()
        identical, max_diff = same_scores(fast, slow)
        n = fast.num_estimates_used
        print(f"subset ({len(images)} images, {n} estimates): batched {fast_s:.2f} s "
              f"({n / fast_s:.1f} estimates/s), per-pair reference {slow_s:.2f} s ({n / slow_s:.2f} estimates/s), "
              f"speed-up {slow_s / fast_s:.1f}x")
        print(f"scores identical: {'yes' if identical else 'no'} (largest difference {max_diff:.3g})")
        for key in fast.scores:
            print(f"  {key}: batched {fast.scores[key]:.6f}  reference {slow.scores[key]:.6f}")


if __name__ == "__main__":
    main()
