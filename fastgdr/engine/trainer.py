"""GDRNPP training loop: one process or many (torchrun + DistributedDataParallel).

``train`` builds the data and the model from a :class:`~fastgdr.config.Config`, runs the
iteration-based schedule and writes into the run folder:

- ``config.yaml`` — the resolved config;
- ``last_checkpoint.pth`` — everything needed to resume (model, optimizer, scheduler,
  iteration, RNG states), written atomically every ``train.checkpoint_period`` iterations;
- ``model_final.pth`` — the trained weights and the model config, written at the end;
- ``metrics.csv`` and ``tensorboard/`` — every loss term, the learning rate, timing.

With distillation weights in ``cfg.kd`` the teachers it names join the run
(:mod:`fastgdr.engine.distiller`): their terms are added to the loss and logged, the
feature adapter is trained and checkpointed for resuming, and ``model_final.pth`` holds the
student alone.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from fastgdr._compat import cpu_has_native_bf16
from fastgdr.checkpoint import load_weights, read_checkpoint, save_checkpoint
from fastgdr.config import Config, KDConfig, LossWeights, save_config, to_dict
from fastgdr.data.bop import BopDataset
from fastgdr.data.cards import DATASET_CARDS, detect_card
from fastgdr.data.mesh import load_ply
from fastgdr.data.train_dataset import (
    CollateTargets,
    GDRNTrainDataset,
    TrainSampler,
    build_object_assets,
    index_train_instances,
)
from fastgdr.engine.distiller import Distiller, build_distiller
from fastgdr.engine.divergence import check_loss, check_step
from fastgdr.engine.logger import MetricLogger
from fastgdr.engine.optim import build_optimizer, flat_and_anneal_factor
from fastgdr.errors import CheckpointError, ConfigError, OutputError
from fastgdr.losses.gdrn import GDRNTargets, gdrn_losses, teacher_forced_pnp_inputs, total_loss
from fastgdr.models import GDRNPoseNet, PoseNetOutput
from fastgdr.outputs import check_out_dir, claim_outputs, remove_outputs, remove_stale_temporaries
from fastgdr.pruning import check_init_widths

BACKBONE_STRIDE = 32  # every preset; the model checks its own feature stride
LAST_CHECKPOINT = "last_checkpoint.pth"
FINAL_MODEL = "model_final.pth"


@dataclass
class DistInfo:
    """Where this process sits in the job (world_size 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(choice: str, local_rank: int) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device is 'cuda' but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def open_dataset(cfg: Config, data_root: str | Path) -> BopDataset:
    """The BOP dataset at ``data_root`` with its card (from the config or the folder name)."""
    card = DATASET_CARDS.get(cfg.data.dataset) if cfg.data.dataset else detect_card(data_root)
    return BopDataset(data_root, card)


def train_splits(cfg: Config, dataset: BopDataset) -> tuple[str, ...]:
    if cfg.data.train_splits:
        return tuple(cfg.data.train_splits)
    if dataset.card is not None:
        return tuple(dataset.card.train_splits)
    return ("train_pbr",)


def build_train_dataset(cfg: Config, dataset: BopDataset, splits: Sequence[str]) -> GDRNTrainDataset:
    """The training samples ``cfg`` describes (crops of ``model.input_res`` px, stride-32 targets)."""
    instances = index_train_instances(dataset, splits, cfg.data.visib_threshold)[: cfg.data.max_instances]
    meshes = {obj_id: load_ply(dataset.model_path(obj_id)) for obj_id in dataset.obj_ids}
    assets = build_object_assets(meshes, dataset, cfg.model.num_regions, cfg.data.num_model_points, cfg.train.seed)
    return GDRNTrainDataset(
        dataset, instances, meshes, assets, cfg.data.augment, cfg.model.input_res,
        cfg.model.input_res // BACKBONE_STRIDE * 8, cfg.model.input.channel_order,
        cfg.data.min_mask_pixels, cfg.train.seed, cfg.data.canonical_symmetry,
    )


# Upper bound on the iterations of a run that only a time budget ends.
UNBOUNDED_ITERATIONS = 10**9


def total_iterations(cfg: Config, num_instances: int) -> int:
    """``train.iterations``; else, without a time budget, ``epochs`` passes over the
    instances at ``batch_size``; else :data:`UNBOUNDED_ITERATIONS` (the budget ends the run)."""
    if cfg.train.iterations is not None:
        return cfg.train.iterations
    if cfg.train.time_budget_minutes is not None:
        return UNBOUNDED_ITERATIONS
    return max(1, math.ceil(cfg.train.epochs * num_instances / cfg.train.batch_size))


DEPTH_INIT_SAMPLES = 64


def mean_depth_target(data: GDRNTrainDataset, count: int = DEPTH_INIT_SAMPLES) -> float:
    """Mean δz (the SITE depth target) over the first ``count`` training samples."""
    return float(np.mean([data[k]["site"][2] for k in range(min(count, len(data)))]))


def amp_enabled(cfg: Config, device: torch.device) -> bool:
    """Whether training runs under bf16 autocast: ``train.amp`` on CUDA, or on a CPU with
    native bf16 arithmetic (elsewhere bf16 would be emulated and slower than fp32)."""
    return cfg.train.amp and (device.type == "cuda" or cpu_has_native_bf16())


def targets_to(targets: GDRNTargets, device: torch.device) -> GDRNTargets:
    return replace(targets, **{f.name: getattr(targets, f.name).to(device, non_blocking=True) for f in fields(targets)})


def _rng_state() -> dict:
    """Global RNG states as plain types (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def teacher_forcing_losses(
    pnp_net: torch.nn.Module, out: PoseNetOutput, targets: GDRNTargets, coord_2d: torch.Tensor,
    extents: torch.Tensor, weights: LossWeights, factor: float,
) -> dict[str, torch.Tensor]:
    """The pose terms of a second Patch-PnP pass on ground-truth correspondences.

    Patch-PnP learns from the geometric head's predictions, which are noise for most of a
    short run, so its rotation and translation learn late. This pass feeds it the GT
    coordinates and regions on the object (the predictions, detached, elsewhere, so that
    what it sees around the object stays what it sees at test time; see
    :func:`~fastgdr.losses.gdrn.teacher_forced_pnp_inputs`) and adds its point-matching,
    rotation, centroid and depth terms × ``factor`` as ``loss_tf_*``. Not in GDRNPP.
    """
    xyz, region_prob = teacher_forced_pnp_inputs(out, targets)
    rot6d, site = pnp_net(xyz, coord_2d, region_prob, extents)
    pose_only = replace(weights, xyz=0.0, mask_visible=0.0, mask_amodal=0.0, region=0.0)
    forced = gdrn_losses(replace(out, rot6d=rot6d, site=site), targets, pose_only)
    return {f"loss_tf_{name.removeprefix('loss_')}": factor * value for name, value in forced.items()}


class RunClock:
    """Training progress, by iterations and, for a run with a time budget, by wall clock.

    ``progress(it)`` is the fraction of the run done: ``it / iterations``, or the larger of
    that and the fraction of the budget used. Time counts from :meth:`start` (the
    training loop, data loading included) plus what a resumed run had used before. With
    several processes, :meth:`sync` makes every rank use rank 0's clock, so that all stop
    at the same iteration.
    """

    def __init__(self, iterations: int, budget_minutes: float | None) -> None:
        self.iterations = iterations
        self.budget_seconds = None if budget_minutes is None else 60.0 * budget_minutes
        self.elapsed_before = 0.0
        self._started: float | None = None
        self._synced: float | None = None

    def start(self) -> None:
        self._started = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds of training so far (including earlier runs of a resumed job)."""
        if self._synced is not None:
            return self._synced
        running = time.perf_counter() - self._started if self._started is not None else 0.0
        return self.elapsed_before + running

    def sync(self, dist_info: DistInfo, device: torch.device) -> None:
        if dist_info.world_size == 1 or self.budget_seconds is None:
            return
        self._synced = None
        value = torch.tensor([self.elapsed()], dtype=torch.float64, device=device)
        dist.broadcast(value, src=0)
        self._synced = float(value.item())

    def progress(self, iteration: int) -> float:
        done = iteration / max(self.iterations, 1)
        if self.budget_seconds is not None:
            done = max(done, self.elapsed() / self.budget_seconds)
        return done


class SnapshotWriter:
    """Saves the weights as ``snapshots/model_<percent>.pth`` when the run passes each of
    ``fractions`` (those already passed at the start, when resuming, are not rewritten)."""

    def __init__(self, out_dir: Path, fractions: Sequence[float], progress: float) -> None:
        self.folder = out_dir / "snapshots"
        self.pending = sorted(f for f in set(fractions) if f > progress)

    def write_due(self, model: torch.nn.Module, progress: float, iteration: int, elapsed: float, config: dict) -> None:
        while self.pending and progress >= self.pending[0]:
            fraction = self.pending.pop(0)
            save_checkpoint(
                self.folder / f"model_{round(100 * fraction):03d}.pth", model, config=config,
                iteration=iteration, elapsed_seconds=elapsed, fraction=fraction,
            )


# Everything a run writes into its folder (``--overwrite`` clears these, and only these).
RUN_OUTPUTS = ("config.yaml", "metrics.csv", "tensorboard", "snapshots", LAST_CHECKPOINT, FINAL_MODEL)


def check_run_folder(
    out_dir: Path, resume: bool, overwrite: bool, inputs: dict[str, str | Path | None]
) -> None:
    """Refuse to start a run that would replace an earlier run's results or an input.

    A folder holding a finished run (``model_final.pth``) or an unfinished one
    (``last_checkpoint.pth``) or other run outputs is only reused with ``resume``
    (continue the unfinished run) or ``overwrite`` (start again; the earlier outputs are
    removed when training starts). No option lets a run write over its own inputs
    (``--init``, teachers). Files that are not run outputs (a pruned ``--init`` beside
    it) are left alone.

    Raises:
        OutputError: naming the folder, what it holds and the option to pass.
    """
    check_out_dir(out_dir)
    if resume and overwrite:
        raise OutputError("--resume continues the run in --out and --overwrite starts it again: pass one of them")
    outputs = [out_dir / name for name in RUN_OUTPUTS]
    claim_outputs(outputs, inputs=inputs, overwrite=True)  # inputs are never overwritten
    if resume or overwrite:
        return
    if (out_dir / FINAL_MODEL).exists():
        held = f"a finished run ({FINAL_MODEL})"
        hint = "pass --overwrite to train again from scratch, or choose another --out"
    elif (out_dir / LAST_CHECKPOINT).exists():
        held = f"an unfinished run ({LAST_CHECKPOINT})"
        hint = "continue it with --resume, start it again with --overwrite, or choose another --out"
    else:
        existing = [p.name for p in outputs if p.exists()]
        if not existing:
            return
        held = f"outputs of an earlier run ({', '.join(existing)})"
        hint = "pass --overwrite to replace them, or choose another --out"
    raise OutputError(f"{out_dir} holds {held}: {hint}")


@dataclass
class TrainResult:
    """What a finished :func:`train` call produced."""

    final_checkpoint: Path
    iterations: int
    last_losses: dict[str, float]


def train(
    cfg: Config,
    data_root: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    init: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> TrainResult:
    """Train the pose network on a BOP dataset.

    Args:
        cfg: the resolved config (``model.num_classes`` is set from the dataset when the
            head is class-aware).
        data_root: BOP dataset folder.
        out_dir: run folder (created).
        resume: continue from ``out_dir/last_checkpoint.pth`` with the same schedule.
        init: checkpoint whose weights initialise the model (fine-tuning), loaded strictly.
        progress: show a progress bar (main process only).
        overwrite: start again in a folder that holds an earlier run (its outputs are
            removed once training starts); without it or ``resume`` such a folder is
            refused (:func:`check_run_folder`).
    """
    out_dir = Path(out_dir)
    device_type = "cuda" if cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available()) else "cpu"
    dist_info = setup_distributed(device_type)
    device = resolve_device(cfg.train.device, dist_info.local_rank)
    if dist_info.is_main:
        teachers = cfg.kd.teachers
        inputs = {"--init": init, **{"--teacher" + (f" #{i + 1}" if len(teachers) > 1 else ""): path
                                     for i, path in enumerate(teachers)}}
        check_run_folder(out_dir, resume, overwrite, inputs)

    dataset = open_dataset(cfg, data_root)
    splits = train_splits(cfg, dataset)
    dataset.check(splits, masks=True)
    if cfg.model.class_aware:
        cfg = replace(cfg, model=replace(cfg.model, num_classes=len(dataset.obj_ids)))
    data = build_train_dataset(cfg, dataset, splits)
    iterations = total_iterations(cfg, len(data))

    torch.manual_seed(cfg.train.seed)
    model = GDRNPoseNet.from_config(cfg.model)
    if cfg.train.head_init == "torch":
        model.geo_head_net.reset_to_torch_init()
        model.pnp_net.reset_to_torch_init()
    if cfg.train.init_depth_from_data and init is None:
        with torch.no_grad():
            model.pnp_net.fc_t.bias[2] = mean_depth_target(data)
    model = model.to(device)
    if model.backbone_info.stride != BACKBONE_STRIDE:
        raise ConfigError(
            f"backbone {cfg.model.backbone.name} has stride {model.backbone_info.stride}; "
            f"training needs a stride-{BACKBONE_STRIDE} feature level (model.backbone.out_index)"
        )
    pruning_record = None  # a pruned init's record travels on, so later pruning counts from the base
    if init is not None:
        init_state = read_checkpoint(init)
        check_init_widths(init_state, cfg.model, source=str(init))  # gn_groups don't show in shapes
        load_weights(model, init_state, strict=True)
        pruning_record = init_state.get("pruning")
    use_cuda_extras = device.type == "cuda"
    if use_cuda_extras and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    distiller: Distiller | None = build_distiller(cfg, model, device) if cfg.kd.active else None
    param_groups = [{"params": list(model.parameters())}]
    if distiller is not None and any(True for _ in distiller.parameters()):
        param_groups.append({"params": list(distiller.parameters()), "lr": cfg.kd.feature.adapter_lr, "weight_decay": 0.0})
    optimizer = build_optimizer(cfg.train.optimizer, param_groups, cfg.train.scaled_lr, cfg.train.weight_decay)
    clock = RunClock(iterations, cfg.train.time_budget_minutes)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda it: flat_and_anneal_factor(it, clock.progress(it), cfg.train.warmup_iters, cfg.train.warmup_factor, cfg.train.anneal_point),
    )

    start_iter = 0
    checkpoint_path = out_dir / LAST_CHECKPOINT
    if resume:
        if not checkpoint_path.exists():
            raise CheckpointError(
                f"cannot resume: {checkpoint_path} does not exist (start again with --overwrite instead of --resume)"
            )
        state = read_checkpoint(checkpoint_path)
        if state.get("config") != to_dict(cfg):
            raise ConfigError(
                f"cannot resume {out_dir}: the config differs from the one the run started with "
                f"({out_dir / 'config.yaml'})"
            )
        load_weights(model, state, strict=True)
        if distiller is not None:
            distiller.load_state_dict(state["distiller"])
        optimizer.load_state_dict(state["optimizer"])
        clock.elapsed_before = float(state.get("elapsed_seconds", 0.0))
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start_iter = int(state["iteration"])

    if dist_info.is_main:
        if overwrite:
            remove_outputs(out_dir / name for name in RUN_OUTPUTS)
        remove_stale_temporaries(out_dir, RUN_OUTPUTS)  # left by a killed save
        remove_stale_temporaries(out_dir / "snapshots", ["model_*.pth"])
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    train_model = DistributedDataParallel(model) if dist_info.world_size > 1 else model
    distill_step = distiller
    if distiller is not None and dist_info.world_size > 1 and any(True for _ in distiller.parameters()):
        distill_step = DistributedDataParallel(distiller)  # the adapter's gradients are averaged too

    sampler = TrainSampler(iterations, cfg.train.batch_size, dist_info.rank, dist_info.world_size, start_iter)
    loader = DataLoader(
        data, batch_size=sampler.local_batch, sampler=sampler, num_workers=cfg.data.num_workers,
        collate_fn=CollateTargets(data.assets), pin_memory=use_cuda_extras,
        prefetch_factor=4 if cfg.data.num_workers > 0 else None,
        # spawn: a forked child of a process that has rendered cannot use EGL
        multiprocessing_context="spawn" if cfg.data.num_workers > 0 else None,
    )
    logger = MetricLogger(out_dir, start_iter) if dist_info.is_main else None
    total_for_bar = iterations if iterations != UNBOUNDED_ITERATIONS else None
    bar = tqdm(total=total_for_bar, initial=start_iter, disable=not (progress and dist_info.is_main), desc="train", dynamic_ncols=True)
    snapshots = SnapshotWriter(out_dir, cfg.train.snapshots, clock.progress(start_iter)) if dist_info.is_main else None
    use_amp = amp_enabled(cfg, device)
    losses_float: dict[str, float] = {}
    model.train()
    clock.start()
    tick, last_logged = time.perf_counter(), start_iter
    iteration = start_iter
    for batch in loader:
        images = batch["images"].to(device, non_blocking=True)
        if use_cuda_extras and cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets_to(batch["targets"], device)
        roi_classes = batch["roi_classes"].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = train_model(images, roi_classes, batch["roi_coord_2d"].to(device), batch["roi_extents"].to(device))
        out = replace(out, **{f.name: getattr(out, f.name).float() for f in fields(out)})
        losses = gdrn_losses(out, targets, cfg.train.loss_weights)
        if cfg.train.pnp_teacher_forcing > 0:
            losses.update(teacher_forcing_losses(
                model.pnp_net, out, targets, batch["roi_coord_2d"].to(device), batch["roi_extents"].to(device),
                cfg.train.loss_weights, cfg.train.pnp_teacher_forcing,
            ))
        if distill_step is not None:
            losses.update(distill_step(images, roi_classes, out, batch["roi_coord_2d"].to(device)))
        loss = total_loss(losses)
        check_loss(loss, losses, iteration + 1, checkpoint_path)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm)
        optimizer.step()
        check_step((model, distiller), losses, iteration + 1, checkpoint_path)  # before anything saves them
        iteration += 1
        clock.sync(dist_info, device)
        scheduler.step()
        finished = clock.progress(iteration) >= 1.0

        if dist_info.is_main:
            losses_float = {k: v.item() for k, v in losses.items()}
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            bar.update(1)
            if iteration % cfg.train.log_period == 0 or finished:
                now = time.perf_counter()
                logger.log(iteration, {
                    "loss": loss.item(), **losses_float, "lr": scheduler.get_last_lr()[0],
                    "sec_per_iter": (now - tick) / (iteration - last_logged), "minutes": clock.elapsed() / 60.0,
                })
                tick, last_logged = now, iteration
            snapshots.write_due(model, clock.progress(iteration), iteration, clock.elapsed(), to_dict(cfg))
            if iteration % cfg.train.checkpoint_period == 0 or finished:
                distiller_state = {"distiller": distiller.state_dict()} if distiller is not None else {}
                save_checkpoint(
                    checkpoint_path, model, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                    iteration=iteration, rng=_rng_state(), config=to_dict(cfg), elapsed_seconds=clock.elapsed(),
                    **distiller_state,
                )
        if finished:
            break
    bar.close()
    final = out_dir / FINAL_MODEL
    if dist_info.is_main:
        logger.close()
        extra = {"pruning": pruning_record} if pruning_record is not None else {}
        if cfg.kd.active:  # a record of how it was trained; the student's own config distils nothing
            extra["distillation"] = to_dict(cfg.kd)
        student_cfg = replace(cfg, kd=KDConfig())
        save_checkpoint(final, model, config=to_dict(student_cfg), iteration=iteration,
                        elapsed_seconds=clock.elapsed(), **extra)
    if dist_info.world_size > 1:
        dist.barrier()
    return TrainResult(final, iteration, losses_float)
