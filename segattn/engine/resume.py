"""Where a run starts from: ``resume`` (this run's own checkpoint: weights, optimizer, schedule and random
streams, exactly) or ``model.init_from`` (another run's weights only, for fine-tuning)."""

from __future__ import annotations

import os
import sys
import warnings

from ..config import TrainConfig
from .checkpoint import load_checkpoint, set_rng_state


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


def load_init_weights(model, path: str) -> list[str]:
    """``model.init_from``: a new run starting from a checkpoint's weights only (fine-tuning: fresh
    optimizer, schedule and iteration count). Weights whose shape differs -- the classifiers, when the
    class count changes -- are skipped with a warning; any other mismatch is an error, since
    fine-tuning half a network silently is worse than stopping. Returns the skipped keys."""
    weights = load_checkpoint(path, key="model.init_from")["model"]
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


def _model_differences(saved: dict, cfg: TrainConfig) -> str:
    """What the checkpoint's stored config builds differently from ``cfg``: ``head=fcn there, da here``."""
    own = cfg.to_dict()
    diffs = []
    for node in ("head", "backbone", "model", "optimizer"):
        a, b = saved.get(node) or {}, own.get(node) or {}
        keys = ["name"] if a.get("name") != b.get("name") else sorted(set(a) | set(b))
        for key in keys:
            if key in ("pretrained", "init_from") or a.get(key) == b.get(key) or isinstance(a.get(key), dict):
                continue
            name = f"{node}={b.get(key)}" if key == "name" else f"{node}.{key}={b.get(key)}"
            diffs.append(f"{name} here, {a.get(key)} in the checkpoint")
    return "; ".join(diffs[:4]) or "its weights have other shapes"


def restore(ckpt: dict, path: str, model, optimizer, scheduler, rank: int, world_size: int,
            num_classes: int, cfg: TrainConfig | None = None) -> float:
    """Continue from a checkpoint of this run (``resume``): weights, optimizer, schedule and the random
    streams; returns the best mIoU so far."""
    if ckpt["config"].get("num_classes", num_classes) != num_classes:
        raise ValueError(f"resume={path!r} has {ckpt['config'].get('num_classes')} classes, "
                         f"the dataset {num_classes}")
    if "optimizer" not in ckpt:
        raise ValueError(f"resume={path!r} holds the weights only (best.pt keeps no optimizer state); resume from "
                         f"{os.path.join(os.path.dirname(path), 'last.pt')} or an iter_<N>.pt, or start a new run "
                         f"from these weights with model.init_from={path}")
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:  # another head, backbone or optimizer
        differs = _model_differences(ckpt["config"], cfg) if cfg else "its weights have other shapes"
        raise ValueError(f"resume={path!r} does not fit this run: {differs} "
                         f"({str(e).splitlines()[0][:160]}). resume continues a run with its own settings; to start "
                         f"a new run from these weights use model.init_from={path} (the backbone alone: "
                         f"backbone.pretrained={path})") from None
    scheduler.load_state_dict(ckpt["scheduler"])
    # Each rank continues its own random stream (dropout differs per rank), so resume is exact under DDP too.
    ranks = ckpt.get("rng_ranks") or []
    set_rng_state(ranks[rank] if len(ranks) == world_size else ckpt["rng"])
    if rank == 0:
        print(f"resumed from {path} at iteration {int(ckpt['iter'])}", file=sys.stderr)
    return ckpt.get("best", -1.0)
