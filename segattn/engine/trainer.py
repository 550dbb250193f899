"""The training loop (``train``): one function, read top to bottom (torchvision references / nanoGPT shape).

The set-up it starts with (``setup``: distributed, resume, loaders, model, optimizer), the step it
repeats (``train_step``, also what the benchmarks time) and the validation and checkpoints at the
configured iterations (``validate_and_save``) are functions of their own, so the loop itself fits on
one screen.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..config import TrainConfig
from ..data import build_dataset, build_train_transform, seed_worker
from ..data.check import DatasetError
from ..data.sizes import fit_crop
from ..data.sampler import TrainSampler
from ..models import build_model_from_config, residual_scales
from ..plugins import import_plugins, plugin_of
from . import distributed, elastic
from .checkpoint import clean_stale_tmp, load_checkpoint, prune_checkpoints, rng_state, save_checkpoint
from .evaluate import evaluate, val_loader as make_val_loader
from .logging import (LogWindow, iou_table, log_hparams, log_residual_scales, log_train, log_validation,
                      metrics_json, write_json)
from .optim import build_optimizer, build_scheduler
from .preflight import check_numbers, preflight_checks
from .trackers import Trackers, build_trackers, tracker_names
from .weights import save_weights
from .resume import find_resume, load_init_weights, restore
from .stopping import GracefulStop, Interrupted
from ..viz import log_attention_pictures


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def amp_dtype(amp) -> torch.dtype | None:
    if amp in (None, False, "off", "no", "fp32") or str(amp).lower() == "false":
        return None
    if amp in ("bf16", "fp16"):
        return torch.bfloat16 if amp == "bf16" else torch.float16
    raise ValueError(f"trainer.amp={amp!r}; expected off, bf16 or fp16")


def check_writable(run_dir: str) -> None:
    """Fail at start-up, not after the first hour, when the run directory cannot take a checkpoint."""
    probe = os.path.join(run_dir, "checkpoints", ".write_probe")
    try:
        os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 1024)
        os.remove(probe)
    except OSError as e:
        raise OSError(f"the run directory {run_dir!r} is not writable ({e.strerror}); "
                      f"set hydra.run.dir to a writable folder with free space") from None


def build_loaders(cfg: dict | TrainConfig, seed: int, start_iter: int, rank: int = 0, world_size: int = 1):
    """The training loader (``start_iter`` micro-batches in, for resume) and the validation loader."""
    cfg = TrainConfig.from_dict(cfg)
    d, t = cfg.dataset, cfg.trainer
    options = {k: v for k, v in d.items() if k not in ("name", "root")}
    train_set = build_dataset(d["name"], d["root"], d.get("train_split", "train"), **options)
    # dataset.crop_size=auto becomes the size it stands for here, in the config the checkpoints store.
    d["crop_size"] = fit_crop(d, train_set, verbose=rank == 0)
    train_set.transform = build_train_transform(
        d["crop_size"], scale_range=tuple(d.get("scale_range", (0.5, 2.0))), cat_max_ratio=d.get("cat_max_ratio", 0.75),
        flip=d.get("flip", True), photometric=d.get("photometric", True), base_scale=d.get("base_scale"),
        augment=d.get("augment"))
    val_set = build_dataset(d["name"], d["root"], d.get("val_split", "val"), **options)
    if not train_set.has_masks:
        raise ValueError(f"dataset {d['name']} at {d['root']!r}: the training split "
                         f"{d.get('train_split', 'train')!r} has no masks to learn from")
    sampler = TrainSampler(len(train_set), t.batch_size, seed, start_iter, rank, world_size)
    workers = t.num_workers
    # Loaders get generators of their own: creating an iterator draws a worker base seed, and drawing
    # it from the global generator would shift dropout's random numbers on resume.
    train_loader = DataLoader(train_set, batch_size=t.batch_size, sampler=sampler, num_workers=workers,
                              drop_last=True, worker_init_fn=seed_worker, persistent_workers=workers > 0,
                              pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(seed))
    # Validation images keep their own size (full resolution); those of one size are predicted
    # dataset.inference.batch_size at a time. Under DDP each rank predicts every world_size-th image (no
    # padding, so no image counts twice) and the confusion matrices are summed: the mIoU equals the
    # single-process one.
    val_shard = val_set if world_size == 1 else Subset(val_set, range(rank, len(val_set), world_size))
    val_loader = make_val_loader(val_shard, d.get("inference"), workers, generator=torch.Generator().manual_seed(seed))
    return train_set, val_set, train_loader, val_loader


def sync_bn_wanted(sync_bn, world_size: int, device: torch.device) -> bool:
    """``trainer.sync_bn``: null = SyncBN when several GPU processes train, false = never, true = wherever
    PyTorch has it (several CUDA processes)."""
    return world_size > 1 and device.type == "cuda" and sync_bn in (None, True)


def compile_backend(value) -> str | None:
    """``trainer.compile``: false, true (inductor) or a torch.compile backend name."""
    if value in (None, False, "false", "off"):
        return None
    return "inductor" if value is True or value == "true" else str(value)


@dataclass
class Run:
    """What ``setup`` builds for the loop: the parts of one training run."""
    cfg: TrainConfig
    run_dir: str
    ckpt_dir: str
    rank: int
    world_size: int
    device: torch.device
    model: torch.nn.Module  # the Segmentor: its parameters, loss and checkpoints
    net: torch.nn.Module  # what is called in training: the model, or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp: torch.dtype | None
    train_loader: DataLoader
    val_loader: DataLoader
    val_set: torch.utils.data.Dataset
    classes: list[str]
    start_iter: int
    writer: Trackers | None  # logger's experiment trackers (main process only)
    best: float = -1.0
    step: int = 0  # the iteration in progress (0-based), for the message when a rank is lost
    saved: int | None = None  # the iteration of the newest complete last.pt

    @property
    def main_process(self) -> bool:
        return self.rank == 0


def setup_model(cfg: TrainConfig, num_classes: int, device: torch.device, world_size: int,
                pretrained: bool) -> torch.nn.Module:
    """The configured model on ``device``, with the BatchNorm the process count calls for."""
    model = build_model_from_config(cfg.to_dict(), num_classes, pretrained=pretrained)
    # One switch decides, whatever backbone.norm says (a recipe's ``syncbn`` is the GPU default):
    # trainer.sync_bn null means SyncBN exactly when several GPU processes train; false turns it off
    # there too. No SyncBN on the CPU, and with one process it would only be a slower BN.
    if sync_bn_wanted(cfg.trainer.sync_bn, world_size, device):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    else:
        model = distributed.revert_sync_batchnorm(model)
    model.to(device)
    if cfg.trainer.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def resolve_class_weights(model: torch.nn.Module, train_set, classes: list[str], rank: int) -> list[float]:
    """``loss.class_weight=auto``: count the training masks' pixels per class once (rank 0; masks only, no
    cache on disk), give the model's loss ENet's inverse log-frequency weights, print them."""
    counts = None
    if rank == 0:
        if not hasattr(train_set, "class_pixel_counts"):
            raise ValueError(f"loss.class_weight=auto: the training dataset ({type(train_set).__name__}) cannot "
                             f"count its masks' classes; give loss.class_weight as a list of {len(classes)} weights")
        counts = train_set.class_pixel_counts().tolist()
    counts = distributed.broadcast_object(counts)
    weights = model.criterion.set_class_counts(counts)
    if rank == 0:
        total = max(sum(counts), 1)
        width = max(12, *(len(c) for c in classes))
        lines = [f"loss.class_weight=auto (1 / ln(1.02 + share), {total} labelled training pixels):",
                 f"{'class':<{width}}  share %  weight"]
        lines += [f"{c:<{width}} {100 * n / total:8.2f} {w:7.3f}" for c, n, w in zip(classes, counts, weights)]
        print("\n".join(lines), file=sys.stderr)
    return weights


def setup(cfg: TrainConfig, run_dir: str) -> Run:
    """Everything before the first iteration: processes, resume, data, model, optimizer, logging.

    Under torchrun (or Slurm tasks) every process runs this: rank 0 chooses the run directory and
    alone writes checkpoints, metrics and TensorBoard; the others only compute.
    """
    t = cfg.trainer
    rank, world_size, device = distributed.init(t.device, float(t.dist_timeout_s or 1800))
    run_dir = distributed.broadcast_object(run_dir)  # ranks > 0 have no run directory of their own
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    if rank == 0:
        check_writable(run_dir)
        clean_stale_tmp(ckpt_dir)
    seed_everything(cfg.seed + rank)  # dropout differs per rank, as it would across a bigger batch

    resume_path = distributed.broadcast_object(find_resume(cfg.resume, ckpt_dir) if rank == 0 else None)
    if cfg.resume == "auto" and resume_path is None and rank == 0:
        print(f"resume=auto: no checkpoint in {ckpt_dir}, starting from iteration 0", file=sys.stderr)
    ckpt = load_checkpoint(resume_path, key="resume") if resume_path else None
    start_iter = int(ckpt["iter"]) if ckpt else 0

    # The sampler counts micro-batches: with gradient accumulation an iteration (one optimizer
    # step) consumes `grad_accum` of them.
    train_set, val_set, train_loader, val_loader = build_loaders(cfg, cfg.seed, start_iter * t.grad_accum,
                                                                 rank, world_size)
    classes = list(train_set.classes)

    init_from = cfg.model.init_from
    model = setup_model(cfg, len(classes), device, world_size, pretrained=ckpt is None and not init_from)
    if rank == 0:  # dataset.check, memory, free disk space, run_info.json: before the first iteration, not hours in
        # Processes on one machine's CPU share its memory; each GPU process has a device of its own.
        sharing = int(os.environ.get("LOCAL_WORLD_SIZE", world_size)) if device.type == "cpu" else 1
        preflight_checks(cfg, run_dir, train_set, val_set, model, device, sharing)
    if cfg.loss.class_weight == "auto":
        resolve_class_weights(model, train_set, classes, rank)
    optimizer = build_optimizer(model, **cfg.optimizer.to_dict())
    scheduler = build_scheduler(optimizer, t.max_iters, **cfg.scheduler.to_dict())
    best = -1.0
    if ckpt:
        best = restore(ckpt, resume_path, model, optimizer, scheduler, rank, world_size, len(classes), cfg)
    elif init_from:
        load_init_weights(model, init_from)
    net = model
    if world_size > 1:  # DDP starts every rank from rank 0's parameters and buffers
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    backend = compile_backend(t.compile)
    if backend:
        net = torch.compile(net, backend=backend)
    dtype = amp_dtype(t.amp)
    # A resumed run hides what the attempt before it logged after its checkpoint (TensorBoard's purge_step),
    # so a restart continues one curve instead of drawing the lost iterations twice.
    writer = build_trackers(run_dir, cfg, purge_step=start_iter + 1 if start_iter else None) if rank == 0 else None
    return Run(cfg, run_dir, ckpt_dir, rank, world_size, device, model, net, optimizer, scheduler,
               torch.amp.GradScaler(device.type, enabled=dtype == torch.float16), dtype, train_loader,
               val_loader, val_set, classes, start_iter, writer, best, start_iter, start_iter or None)


class Step(NamedTuple):
    loss: torch.Tensor  # the mean over the micro-batches, detached
    parts: dict  # each output's loss (``out``, ``aux``, ...) of the last micro-batch
    finite: bool  # False: the loss was NaN or inf and the optimizer did not step
    lr: float  # the learning rate this step used


def train_step(model: torch.nn.Module, batch: dict | list[dict], optimizer: torch.optim.Optimizer,
               scheduler=None, *, net: torch.nn.Module | None = None, scaler: torch.amp.GradScaler | None = None,
               amp: torch.dtype | None = None, grad_clip: float | None = None, skip_nonfinite: bool = False,
               channels_last: bool = False) -> Step:
    """One optimizer step on ``batch`` (a loader's dict, or a list of micro-batches whose gradients are
    accumulated): forward, loss, backward, clipping, step, schedule. What ``train`` runs every
    iteration and what the benchmarks time.

    ``net`` is what is called (a DDP or compiled wrapper of ``model``; default ``model``); ``model``
    gives the loss and the parameters. With a non-finite loss the optimizer does not step, and with
    ``skip_nonfinite`` BatchNorm's running statistics are put back as they were before the step.
    """
    net = model if net is None else net
    micro_batches = batch if isinstance(batch, (list, tuple)) else [batch]
    accum = len(micro_batches)
    scaler = scaler or torch.amp.GradScaler(enabled=False)
    device = next(model.parameters()).device
    optimizer.zero_grad(set_to_none=True)
    # A skipped step must not leave a NaN batch's statistics in BatchNorm's running buffers.
    saved_buffers = [b.clone() for b in model.buffers()] if skip_nonfinite else None
    loss, finite = 0.0, True
    for i, micro in enumerate(micro_batches):
        images = micro["image"].to(device, non_blocking=True)
        masks = micro["mask"].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        # Only the last micro-batch's backward all-reduces gradients under DDP.
        sync = i == accum - 1 or not isinstance(net, DistributedDataParallel)
        with (contextlib.nullcontext() if sync else net.no_sync()):
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                outputs = net(images)
            micro_loss, parts = model.loss({k: v.float() for k, v in outputs.items()}, masks)
            finite = finite and bool(torch.isfinite(micro_loss))
            # Dividing by accum makes the summed gradients those of one accum-times bigger batch.
            scaler.scale(micro_loss / accum).backward()
        loss += micro_loss.detach() / accum
    if distributed.is_dist():  # every rank takes the same decision, or the others would hang
        flag = torch.tensor([0.0 if finite else 1.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        finite = flag.item() == 0.0
    if not finite:
        optimizer.zero_grad(set_to_none=True)
        if skip_nonfinite:
            with torch.no_grad():
                for b, old in zip(model.buffers(), saved_buffers):
                    b.copy_(old)
    else:
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
        scaler.step(optimizer)
        scaler.update()
    lr = optimizer.param_groups[0]["lr"]
    if scheduler is not None:
        scheduler.step()
    return Step(loss, parts, finite, lr)


def save(run: Run, name: str, step: int, metrics: dict | None = None) -> None:
    """``checkpoints/<name>``. Called by every rank at the same iterations: the random states of all
    ranks are gathered, so a resumed run continues each rank's stream. With ``metrics`` (``best.pt``)
    only what evaluation and fine-tuning need is kept: weights, config, iteration and those metrics,
    not the optimizer state (as large as the weights again with SGD momentum, twice with AdamW), and
    the same weights go to ``best.safetensors`` with ``best.json`` (``segattn.engine.weights``)."""
    rngs = distributed.all_gather_object(rng_state())
    if run.main_process:
        # head_plugin: the module that registered the head, for the message that asks for it (never imported
        # from here: segattn.plugins.require_head)
        config = dict(run.cfg.to_dict(), num_classes=len(run.classes), classes=list(run.classes),
                      head_plugin=plugin_of(run.cfg.head.get("name")))
        if getattr(run.val_set, "palette", None) is not None:  # the class colours, for eval.py and segattn.load
            config["palette"] = np.asarray(run.val_set.palette).tolist()
        ckpt = {"model": run.model.state_dict(), "iter": step, "config": config, "best": run.best}
        if metrics is not None:
            ckpt["metrics"] = metrics_json(metrics, run.classes, iter=step)
        else:
            ckpt.update(optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(), rng=rngs[0],
                        rng_ranks=rngs)
        save_checkpoint(ckpt, os.path.join(run.ckpt_dir, name))
        if metrics is not None:  # and best.safetensors + best.json: the same weights, loadable without pickle
            save_weights(os.path.join(run.ckpt_dir, name), ckpt["model"],
                         {k: ckpt[k] for k in ("config", "iter", "best", "metrics")})


def validate_and_save(run: Run, step: int, stop_at: int, stopping: bool = False) -> dict | None:
    """At the iterations the config names: validation (and ``best.pt`` when the mIoU improves),
    ``iter_<N>.pt`` (the newest ``trainer.keep_ckpts`` kept) and ``last.pt``; ``stopping`` (a signal
    ends the run here, or ``trainer.ckpt_interval_min`` has passed) writes ``last.pt`` too. Returns the
    validation metrics when it validated, else None."""
    t = run.cfg.trainer
    validate = step % t.val_interval == 0 or step == t.max_iters
    keep = bool(t.ckpt_interval) and step % t.ckpt_interval == 0
    if not (validate or keep or step == stop_at or stopping):
        return None
    # Without SyncBN the ranks' BN statistics drift apart: evaluate and save rank 0's.
    distributed.broadcast_buffers(run.model)
    metrics = None
    if validate:
        # Validation predicts as the dataset's benchmark does (whole, slide, multi-scale): conf/dataset/*.yaml.
        metrics, samples = evaluate(run.model, run.val_loader, len(run.classes), run.device,
                                    progress=t.progress and run.main_process, keep=2,
                                    inference=run.cfg.dataset.get("inference"))
        run.model.train()
        if run.main_process:
            log_validation(run.writer, metrics, run.classes, samples, step, getattr(run.val_set, "palette", None))
            # The same image and pixels at every validation, so TensorBoard shows the maps sharpen.
            log_attention_pictures(run.writer, run.model, run.val_set[0]["image"], run.cfg.visualize.points, step,
                                   run.cfg.visualize.max_size)
            write_json(metrics_json(metrics, run.classes, iter=step), os.path.join(run.run_dir, "metrics.json"))
            tqdm.write(f"iter {step}: val mIoU {100 * metrics['mIoU']:.2f}  aAcc {100 * metrics['aAcc']:.2f}")
        if not math.isnan(metrics["mIoU"]) and metrics["mIoU"] > run.best:
            run.best = metrics["mIoU"]
            save(run, "best.pt", step, metrics=metrics)
    if keep:
        save(run, f"iter_{step}.pt", step)
        if run.main_process:
            prune_checkpoints(run.ckpt_dir, t.keep_ckpts)
    save(run, "last.pt", step)
    run.saved = step
    if run.main_process:
        run.writer.flush()  # TensorBoard on disk up to this checkpoint: a restart continues the curve from here
    return metrics


def where_things_are(run: Run) -> str:
    """The lines printed when a run ends: its files and how to look at them (only files that exist)."""
    ckpts = [f"{run.ckpt_dir}/{n}" for n in ("best.pt", "best.safetensors", "last.pt")
             if os.path.isfile(os.path.join(run.ckpt_dir, n))]
    lines = [f"checkpoints: {', '.join(ckpts) or 'none'}"]
    for label, name in (("metrics:", "metrics.json"), ("log:", "train.log")):
        if os.path.isfile(os.path.join(run.run_dir, name)):
            lines.append(f"{label:<12} {run.run_dir}/{name}")
    if run.writer is not None and run.writer.where():  # TensorBoard, MLflow: how to look
        lines.append(run.writer.where())
    return "\n".join(lines)


def _loop(run: Run, bar, batches, stop: GracefulStop, stop_at: int) -> dict | None:
    """The iterations of ``train``; returns the last validation metrics. On SIGINT/SIGTERM/SIGUSR1 it ends
    after the current iteration, with ``last.pt`` written, by raising :class:`Interrupted` (a Slurm job
    is requeued first, when it can be: ``segattn.engine.elastic.slurm_requeue``)."""
    t = run.cfg.trainer
    metrics = None
    t_data = t_step = 0.0
    window = LogWindow()  # time per iteration and data time since the last log line (mmseg's)
    # trainer.ckpt_interval_min: last.pt at least this often, so a lost rank or a killed job loses at most
    # that much work whatever an iteration costs.
    every_s, last_save = 60 * float(t.ckpt_interval_min or 0), time.monotonic()
    for it in bar:
        run.step = it
        tic = time.perf_counter()
        micro_batches = [next(batches) for _ in range(t.grad_accum)]
        waited = time.perf_counter() - tic
        t_data += waited
        out = train_step(run.model, micro_batches, run.optimizer, run.scheduler, net=run.net, scaler=run.scaler,
                         amp=run.amp, grad_clip=t.grad_clip, skip_nonfinite=t.skip_nonfinite,
                         channels_last=t.channels_last)
        t_step += time.perf_counter() - tic
        window.add(time.perf_counter() - tic, waited)
        step = it + 1
        if not out.finite and not t.skip_nonfinite:
            raise FloatingPointError(
                f"iteration {step}: the loss is {float(out.loss)} ({ {k: float(v) for k, v in out.parts.items()} }); "
                f"stopping before anything is saved. The last good checkpoint is in {run.ckpt_dir}. "
                f"Lower optimizer.lr, set trainer.grad_clip, or set trainer.skip_nonfinite=true.")
        if not out.finite:  # the step was skipped; logging, validation and checkpoints go on
            print(f"iteration {step}: non-finite loss {float(out.loss)}, step skipped", file=sys.stderr)
        if run.main_process and (step % t.log_interval == 0 or step == t.max_iters):
            log_train(run.writer, out.loss.item(), out.lr, out.parts, t_data / max(t_step, 1e-9), step)
            log_residual_scales(run.writer, residual_scales(run.model), step)
            bar.set_postfix(loss=f"{out.loss.item():.3f}", lr=f"{out.lr:.2e}")
            tqdm.write(window.line(step, t.max_iters, stop_at, out.loss.item(), out.lr, run.device))
        due = bool(every_s) and time.monotonic() - last_save >= every_s
        signum, due = stop.requested(run.device, due) if step < stop_at else (0, False)
        metrics = validate_and_save(run, step, stop_at, stopping=bool(signum) or due) or metrics
        if run.saved == step:
            last_save = time.monotonic()
        if signum:
            bar.close()
            if run.main_process:
                run.writer.close()
            distributed.barrier()
            distributed.cleanup()
            # Every rank has saved: a Slurm job can be requeued now (rank 0 asks), by submitit's own handler
            # when the signal was its preemption signal (it exits on rank 0), else by us.
            if run.main_process and stop.hands_over(signum):
                print(f"stopped by {signal.Signals(signum).name} after iteration {step}/{t.max_iters}; saved "
                      f"{run.run_dir}/checkpoints/last.pt; the launcher's handler takes over (submitit "
                      f"requeues the job, which resumes from last.pt)", file=sys.stderr)
            stop.hand_over(signum)
            then = elastic.slurm_requeue(signum) if run.main_process else None
            raise Interrupted(signum, step, t.max_iters, run.run_dir, then)
    return metrics


def train(cfg: dict | TrainConfig, run_dir: str) -> dict:
    """Train ``cfg`` (the composed conf/train.yaml as a plain dict, or a ``TrainConfig``) writing into
    ``run_dir``; returns the last validation metrics (as in ``metrics.json``)."""
    cfg = TrainConfig.from_dict(cfg)
    import_plugins(cfg.plugins)  # a user's own heads (plugins=[...]) are registered before anything is built
    check_numbers(cfg)  # a batch of 0 or a negative learning rate: the key named, before anything is built
    tracker_names(cfg.logger)  # an unknown tracker, or one whose package is missing: before anything is built
    t = cfg.trainer
    # From here on SIGINT / SIGTERM finish the current iteration, write last.pt and stop (Interrupted).
    try:
        with GracefulStop() as stop:
            run = setup(cfg, run_dir)
            if run.main_process:
                print(f"run directory: {run.run_dir}", file=sys.stderr)
            # stop_at ends the process early (e.g. a time-limited job) while the schedule still runs over
            # max_iters; resume=auto continues from there.
            stop_at = min(int(t.stop_at or t.max_iters), t.max_iters)
            bar = tqdm(range(run.start_iter, stop_at), initial=run.start_iter, total=t.max_iters, desc="train",
                       disable=not (t.progress and run.main_process), dynamic_ncols=True)
            run.model.train()
            try:
                # Under torchrun a SIGTERM may mean a lost rank: looked into beside the training thread.
                watch = elastic.SigtermWatch(lambda: elastic.on_sigterm(run)) if run.world_size > 1 else None
                with watch or contextlib.nullcontext():
                    metrics = _loop(run, bar, iter(run.train_loader), stop, stop_at)
            except Exception as e:
                if not (run.world_size > 1 and distributed.peer_gone(e)):
                    raise
                bar.close()
                elastic.rank_lost(run, e)
            bar.close()
    except DatasetError as e:
        if cfg.dataset.get("check"):
            raise
        # Found when a sample was first drawn: there may be more, and the next start would stop at the next one.
        raise DatasetError(f"{e}\nOther files may be bad too: dataset.check=true loads every sample of the train "
                           f"and val splits before the first iteration and lists every bad file.") from None
    if metrics is None:  # nothing validated in this process (resumed a finished run, or stopped early)
        metrics, _ = evaluate(run.model, run.val_loader, len(run.classes), run.device,
                              inference=cfg.dataset.get("inference"))
    if run.main_process:
        if run.start_iter < stop_at == t.max_iters:  # this process finished the run: its final mIoU
            log_hparams(run.writer, cfg, metrics, t.max_iters)
        run.writer.close()
        print(iou_table(metrics, run.classes))
        print(where_things_are(run), file=sys.stderr)
    distributed.barrier()  # nobody leaves (and tears the group down) while rank 0 still writes
    distributed.cleanup()
    return metrics_json(metrics, run.classes, iter=max(stop_at, run.start_iter))
