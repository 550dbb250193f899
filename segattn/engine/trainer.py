"""The training loop: one function, read top to bottom (torchvision references / nanoGPT shape)."""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset

from ..data import build_dataset, build_train_transform, seed_worker
from ..data.sampler import TrainSampler
from ..models.segmentor import build_model
from . import distributed
from .checkpoint import clean_stale_tmp, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .evaluate import evaluate
from .logging import iou_table, log_hparams, log_validation, metrics_json, write_json
from .optim import build_optimizer, build_scheduler
from .preflight import preflight_checks
from ..viz import log_attention_pictures


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def amp_dtype(amp) -> torch.dtype | None:
    if amp in (None, False, "off", "no", "fp32"):
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


def find_resume(resume, ckpt_dir: str) -> str | None:
    if resume in (None, False, ""):
        return None
    if resume == "auto":
        last = os.path.join(ckpt_dir, "last.pt")
        return last if os.path.isfile(last) else None
    if not os.path.isfile(str(resume)):
        raise FileNotFoundError(f"resume={resume!r}: no such checkpoint (resume=auto continues this run "
                                f"directory's checkpoints/last.pt and starts fresh where there is none)")
    return str(resume)


def make_model(cfg: dict, num_classes: int, pretrained: bool = True):
    """The model the config describes (``backbone``, ``head``, ``model.*``). ``pretrained=False`` skips
    ``backbone.pretrained``: the weights come from a checkpoint (resume, eval.py), and the ImageNet file
    need not exist on the machine that resumes or evaluates."""
    backbone = dict(cfg["backbone"]) if pretrained else dict(cfg["backbone"], pretrained=None)
    m = cfg.get("model") or {}
    return build_model(backbone, cfg["head"], num_classes, m.get("aux_head"), m.get("scale_attention"))


def load_init_weights(model, path: str) -> list[str]:
    """``model.init_from``: a new run starting from a checkpoint's weights only (fine-tuning: fresh
    optimizer, schedule and iteration count). Weights whose shape differs -- the classifiers, when the
    class count changes -- are skipped with a warning; any other mismatch is an error, since
    fine-tuning half a network silently is worse than stopping. Returns the skipped keys."""
    weights = load_checkpoint(path)["model"]
    own = model.state_dict()
    skipped = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    result = model.load_state_dict({k: v for k, v in weights.items() if k not in skipped}, strict=False)
    missing = [k for k in result.missing_keys if k not in skipped]
    if missing or result.unexpected_keys:
        raise ValueError(f"model.init_from={path!r} does not fit this model (another head or backbone?): "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                         f"{result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}; "
                         f"to start only the backbone from it, use backbone.pretrained={path}")
    if skipped:
        warnings.warn(f"model.init_from={path!r}: {len(skipped)} weights have another shape here and start "
                      f"fresh: {', '.join(skipped)}", stacklevel=2)
    return skipped


def build_loaders(cfg: dict, seed: int, start_iter: int, rank: int = 0, world_size: int = 1):
    d, t = cfg["dataset"], cfg["trainer"]
    train_tf = build_train_transform(d["crop_size"], scale_range=tuple(d.get("scale_range", (0.5, 2.0))),
                                     cat_max_ratio=d.get("cat_max_ratio", 0.75), flip=d.get("flip", True),
                                     photometric=d.get("photometric", True), base_scale=d.get("base_scale"))
    options = {k: v for k, v in d.items() if k not in ("name", "root")}
    train_set = build_dataset(d["name"], d["root"], d.get("train_split", "train"), train_tf, **options)
    val_set = build_dataset(d["name"], d["root"], d.get("val_split", "val"), **options)
    if not train_set.has_masks:
        raise ValueError(f"dataset {d['name']} at {d['root']!r}: the training split "
                         f"{d.get('train_split', 'train')!r} has no masks to learn from")
    sampler = TrainSampler(len(train_set), t["batch_size"], seed, start_iter, rank, world_size)
    workers = t.get("num_workers", 0)
    # Loaders get generators of their own: creating an iterator draws a worker base seed, and drawing
    # it from the global generator would shift dropout's random numbers on resume.
    train_loader = DataLoader(train_set, batch_size=t["batch_size"], sampler=sampler, num_workers=workers,
                              drop_last=True, worker_init_fn=seed_worker, persistent_workers=workers > 0,
                              pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(seed))
    # Validation images keep their own size (full resolution), so one per batch. Under DDP each rank
    # predicts every world_size-th image (no padding, so no image counts twice) and the confusion
    # matrices are summed: the mIoU equals the single-process one.
    val_shard = val_set if world_size == 1 else Subset(val_set, range(rank, len(val_set), world_size))
    val_loader = DataLoader(val_shard, batch_size=1, shuffle=False, num_workers=workers,
                            generator=torch.Generator().manual_seed(seed))
    return train_set, val_set, train_loader, val_loader


def revert_sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """SyncBatchNorm -> BatchNorm2d (same parameters and statistics): PyTorch has no SyncBN on the CPU."""
    out = module
    if isinstance(module, torch.nn.SyncBatchNorm):
        out = torch.nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
        out.load_state_dict(module.state_dict())
    for name, child in module.named_children():
        out.add_module(name, revert_sync_batchnorm(child))
    return out


def sync_bn_wanted(sync_bn, world_size: int, device: torch.device) -> bool:
    """``trainer.sync_bn``: null = SyncBN when several GPU processes train, false = never, true = wherever
    PyTorch has it (several CUDA processes)."""
    return world_size > 1 and device.type == "cuda" and sync_bn in (None, True)


def compile_backend(value) -> str | None:
    """``trainer.compile``: false, true (inductor) or a torch.compile backend name."""
    if value in (None, False, "false", "off"):
        return None
    return "inductor" if value is True or value == "true" else str(value)


def train(cfg: dict, run_dir: str) -> dict:
    """Train ``cfg`` (a plain dict: the composed Hydra config) writing into ``run_dir``; returns the last
    validation metrics (as in ``metrics.json``).

    Under torchrun (or Slurm tasks) every process runs this function: rank 0 chooses the run directory
    and alone writes checkpoints, metrics and TensorBoard; the others only compute.
    """
    t = cfg["trainer"]
    max_iters = int(t["max_iters"])
    rank, world_size, device = distributed.init(t.get("device", "auto"), float(t.get("dist_timeout_s") or 1800))
    main_process = rank == 0
    run_dir = distributed.broadcast_object(run_dir)  # ranks > 0 have no run directory of their own
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    if main_process:
        check_writable(run_dir)
        clean_stale_tmp(ckpt_dir)
    seed = int(cfg.get("seed", 0))
    seed_everything(seed + rank)  # dropout differs per rank, as it would across a bigger batch
    accum = int(t.get("grad_accum") or 1)

    resume_path = distributed.broadcast_object(find_resume(cfg.get("resume"), ckpt_dir) if main_process else None)
    ckpt = load_checkpoint(resume_path) if resume_path else None
    start_iter = int(ckpt["iter"]) if ckpt else 0

    # The sampler counts micro-batches: with gradient accumulation an iteration (one optimizer
    # step) consumes `accum` of them.
    train_set, val_set, train_loader, val_loader = build_loaders(cfg, seed, start_iter * accum, rank, world_size)
    if main_process:  # dataset.check, free disk space, run_info.json: before the first iteration, not hours in
        preflight_checks(cfg, run_dir, train_set, val_set)
    classes = train_set.classes
    num_classes = len(classes)

    init_from = (cfg.get("model") or {}).get("init_from")
    model = make_model(cfg, num_classes, pretrained=ckpt is None and not init_from)
    # One switch decides, whatever backbone.norm says (a recipe's ``syncbn`` is the GPU default):
    # trainer.sync_bn null means SyncBN exactly when several GPU processes train; false turns it off
    # there too. No SyncBN on the CPU, and with one process it would only be a slower BN.
    if sync_bn_wanted(t.get("sync_bn"), world_size, device):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    else:
        model = revert_sync_batchnorm(model)
    model.to(device)
    channels_last = bool(t.get("channels_last"))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, **cfg["optimizer"])
    scheduler = build_scheduler(optimizer, max_iters, **cfg["scheduler"])
    best = -1.0
    if ckpt:
        if ckpt["config"].get("num_classes", num_classes) != num_classes:
            raise ValueError(f"resume={resume_path!r} has {ckpt['config'].get('num_classes')} classes, "
                             f"the dataset {num_classes}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        # Each rank continues its own random stream (dropout differs per rank), so resume is exact under DDP too.
        ranks = ckpt.get("rng_ranks") or []
        set_rng_state(ranks[rank] if len(ranks) == world_size else ckpt["rng"])
        best = ckpt.get("best", best)
        print(f"resumed from {resume_path} at iteration {start_iter}", file=sys.stderr)
    elif init_from:
        load_init_weights(model, init_from)
    net = model
    if world_size > 1:  # DDP starts every rank from rank 0's parameters and buffers
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    backend = compile_backend(t.get("compile"))
    if backend:
        net = torch.compile(net, backend=backend)

    dtype = amp_dtype(t.get("amp"))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    writer = SummaryWriter(run_dir) if main_process else None
    saved_cfg = dict(cfg, num_classes=num_classes, classes=list(classes))

    def checkpoint(name: str, it: int):
        """Called by every rank at the same iterations: the random states of all ranks are gathered."""
        rngs = distributed.all_gather_object(rng_state())
        if main_process:
            save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "iter": it, "config": saved_cfg,
                             "best": best, "rng": rngs[0], "rng_ranks": rngs}, os.path.join(ckpt_dir, name))

    # Validation predicts as the dataset's benchmark does (whole, slide, multi-scale): conf/dataset/*.yaml.
    val_inference = cfg["dataset"].get("inference")
    metrics = None
    batches = iter(train_loader)
    model.train()
    # stop_at ends the process early (e.g. a time-limited job) while the schedule still runs over
    # max_iters; resume=auto continues from there.
    stop_at = min(int(t.get("stop_at") or max_iters), max_iters)
    show = t.get("progress", True) and main_process
    bar = tqdm(range(start_iter, stop_at), initial=start_iter, total=max_iters, desc="train",
               disable=not show, dynamic_ncols=True)
    t_data = t_step = 0.0
    for it in bar:
        tic = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        skip_nonfinite = t.get("skip_nonfinite", False)
        # A skipped step must not leave a NaN batch's statistics in BatchNorm's running buffers.
        saved_buffers = [b.clone() for b in model.buffers()] if skip_nonfinite else None
        loss = 0.0
        finite = True
        for micro in range(accum):
            batch = next(batches)
            images = batch["image"].to(device, non_blocking=True)
            masks = batch["mask"].to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            t_data += time.perf_counter() - tic if micro == 0 else 0.0
            # Only the last micro-batch's backward all-reduces gradients under DDP.
            sync = micro == accum - 1 or not isinstance(net, DistributedDataParallel)
            with (contextlib.nullcontext() if sync else net.no_sync()):
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
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
        if not finite and not skip_nonfinite:
            raise FloatingPointError(
                f"iteration {it + 1}: the loss is {float(loss)} ({ {k: float(v) for k, v in parts.items()} }); "
                f"stopping before anything is saved. The last good checkpoint is in {ckpt_dir}. "
                f"Lower optimizer.lr, set trainer.grad_clip, or set trainer.skip_nonfinite=true.")
        if not finite:  # skip only the optimizer step: logging, validation and checkpoints go on
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for b, old in zip(model.buffers(), saved_buffers):
                    b.copy_(old)
            print(f"iteration {it + 1}: non-finite loss {float(loss)}, step skipped", file=sys.stderr)
        else:
            if t.get("grad_clip"):
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(t["grad_clip"]))
            scaler.step(optimizer)
            scaler.update()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        t_step += time.perf_counter() - tic
        step = it + 1

        if main_process and (step % t.get("log_interval", 10) == 0 or step == max_iters):
            writer.add_scalar("train/loss", loss.item(), step)
            writer.add_scalar("train/lr", lr, step)
            for k, v in parts.items():
                writer.add_scalar(f"train/loss_{k}", float(v), step)
            writer.add_scalar("train/data_time_share", t_data / max(t_step, 1e-9), step)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")

        validate = step % t.get("val_interval", max_iters) == 0 or step == max_iters
        ckpt_interval = t.get("ckpt_interval") or 0
        if validate or (ckpt_interval and step % ckpt_interval == 0) or step == stop_at:
            # Without SyncBN the ranks' BN statistics drift apart: evaluate and save rank 0's.
            distributed.broadcast_buffers(model)
        if validate:
            metrics, samples = evaluate(model, val_loader, num_classes, device, progress=show,
                                        keep=2, inference=val_inference)
            model.train()
            if main_process:
                log_validation(writer, metrics, classes, samples, step)
                # The same image and pixels at every validation, so TensorBoard shows the maps sharpen.
                vis = cfg.get("visualize") or {}
                log_attention_pictures(writer, model, val_set[0]["image"], vis.get("points"), step,
                                       vis.get("max_size", 512))
                write_json(metrics_json(metrics, classes, iter=step), os.path.join(run_dir, "metrics.json"))
                tqdm.write(f"iter {step}: val mIoU {100 * metrics['mIoU']:.2f}  aAcc {100 * metrics['aAcc']:.2f}")
            if not math.isnan(metrics["mIoU"]) and metrics["mIoU"] > best:
                best = metrics["mIoU"]
                checkpoint("best.pt", step)

        if ckpt_interval and step % ckpt_interval == 0:
            checkpoint(f"iter_{step}.pt", step)
            keep = t.get("keep_ckpts") or 0
            if main_process and keep:
                old = sorted(int(f[5:-3]) for f in os.listdir(ckpt_dir) if f.startswith("iter_") and f.endswith(".pt"))
                for n in old[:-keep]:
                    os.remove(os.path.join(ckpt_dir, f"iter_{n}.pt"))
        if (ckpt_interval and step % ckpt_interval == 0) or step % t.get("val_interval", max_iters) == 0 \
                or step in (stop_at, max_iters):
            checkpoint("last.pt", step)
    bar.close()
    if metrics is None:  # nothing validated in this process (resumed a finished run, or stopped early)
        metrics, _ = evaluate(model, val_loader, num_classes, device, inference=val_inference)
    if main_process:
        if start_iter < stop_at == max_iters:  # this process finished the run: its final mIoU
            log_hparams(writer, cfg, metrics, max_iters)
        writer.close()
        print(iou_table(metrics, classes))
    distributed.barrier()  # nobody leaves (and tears the group down) while rank 0 still writes
    distributed.cleanup()
    return metrics_json(metrics, classes, iter=max(stop_at, start_iter))
