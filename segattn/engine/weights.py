"""The best model's weights without pickle: ``best.safetensors`` and ``best.json`` beside it.

A ``.pt`` checkpoint is a pickle; it is read with ``torch.load(weights_only=True)``, which refuses
Python objects but still runs the unpickler, and whose default and accepted types changed between
torch releases. A safetensors file is a JSON header and raw tensor bytes: reading it runs no code,
and any safetensors reader in any language can open it. So the weights a run hands on for
evaluation, export and fine-tuning are also written that way, with what a model is rebuilt from
(the training config, its iteration and metrics) in the file's header and, readable by people and
tools, in a JSON file of the same name. ``last.pt`` (optimizer, random states, sampler position)
stays a ``.pt``: only resuming reads it.
"""

from __future__ import annotations

import json
import os

from ..io import atomic_write

SUFFIX = ".safetensors"
# The header key holding the record (config, iter, best, metrics) as JSON.
META_KEY = "segattn"


def is_safetensors(path: str) -> bool:
    """Whether ``path`` holds safetensors data (an 8-byte little-endian header length, then the JSON
    header), whatever its name; a torch ``.pt`` file is a zip archive and starts with ``PK``."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and head[:2] != b"PK"


def weights_paths(path: str) -> tuple[str, str]:
    """``checkpoints/best.pt`` -> (``checkpoints/best.safetensors``, ``checkpoints/best.json``)."""
    stem = os.path.splitext(path)[0]
    return stem + SUFFIX, stem + ".json"


def save_weights(path: str, state_dict: dict, record: dict) -> tuple[str, str]:
    """Write ``state_dict`` to ``<stem>.safetensors`` with ``record`` (a plain, JSON-able dict: config,
    iter, best, metrics) in its header, and ``record`` again to ``<stem>.json``; each to a temporary
    file renamed when complete. Returns the two paths."""
    from safetensors.torch import save

    weights, meta = weights_paths(path)
    # safetensors refuses tensors that share memory (tied weights) and wants them contiguous: a copy each.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    text = json.dumps(record)
    data = save(tensors, metadata={"format": "pt", META_KEY: text})
    with atomic_write(weights, fsync=True) as f:
        f.write(data)
    with atomic_write(meta, "w") as f:
        json.dump(record, f, indent=2)
    return weights, meta


def load_weights(path: str) -> dict:
    """A ``.safetensors`` file segattn wrote, as a checkpoint dict (``model``, ``iter``, ``config`` and,
    when recorded, ``best`` and ``metrics``). The record is read from the file's header, else from the
    JSON of the same name beside it (weights written by another tool). Nothing is unpickled."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
        weights = load_file(path)
    except Exception as e:  # truncated, or not safetensors after all
        raise ValueError(f"checkpoint={path!r} cannot be read as safetensors weights (truncated, or not written "
                         f"by segattn): {type(e).__name__}: {str(e)[:200]}") from None
    beside = weights_paths(path)[1]
    if META_KEY in header:
        record = json.loads(header[META_KEY])
    elif os.path.isfile(beside):
        try:
            with open(beside) as f:
                record = json.load(f)
        except ValueError as e:
            raise ValueError(f"{beside}: not valid JSON ({e}); it should hold the config of the weights in "
                             f"{path}") from None
    else:
        raise ValueError(f"checkpoint={path!r} holds weights but not the config to rebuild their model from: "
                         f"its header has no {META_KEY!r} entry and there is no {beside} beside it (segattn "
                         f"writes both with every best.safetensors)")
    if not isinstance(record, dict) or "config" not in record:
        raise ValueError(f"checkpoint={path!r}: the record of its config ({beside} or the header) has no "
                         f"'config' key; expected the JSON segattn writes: config, iter, metrics")
    return {"model": weights, "iter": int(record.get("iter", 0)), "config": record["config"],
            **{k: record[k] for k in ("best", "metrics") if k in record}}

