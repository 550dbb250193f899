"""What attention buys: every head on tasks that only long-range context solves, over seeds.

    python benchmarks/context.py                 # every head x 3 tasks x 3 seeds -> results/context.{md,csv,png}
    python benchmarks/context.py --heads nl,se --tasks global_cue --seeds 0   # some cells -> results/partial/
    python benchmarks/context.py --quick         # a smoke run (fcn, nl, cc, se; tiny budget; a minute or two) -> results/quick/
    python benchmarks/context.py --settle        # + seeds for open cells (95 % CI wider than +-10 points), up to 8
    python benchmarks/context.py --heads da,cc --tasks far_marker --residual-init 0.1   # the zero-start test
    python benchmarks/context.py --heads da,sk --budget 2,4       # longer budgets (iterations x 2, x 4)
    python benchmarks/context.py --plugins my_attention.py --heads my_att   # your own head's rows (README: Bring your own head)

The tasks (``benchmarks/context_tasks.py``) put the objects' class in a cue beyond the FCN's receptive
field: a far marker, a global statistic of many dots, and a marker per lane. Each (task, head, seed)
cell trains through the real trainer on the task's data, written in the Cityscapes layout, and its
record is kept (``benchmarks/results/context_cells/<settings>/<task>/<head>_seed<N>.json``, committed
with the report: the raw numbers behind it; ``--quick`` and other settings keep theirs in the ignored
``benchmarks/.cache/context/``), so a second run trains only what is missing, also in a fresh clone;
``--force`` retrains the chosen cells. Every cell trains in a fresh process of one thread (``--jobs`` at a time),
which makes its numbers a function of its task, head and seed alone, so a rerun of a cell on this
machine type reproduces it exactly. (A process that trains several cells in turn gives the same numbers
too, bit for bit: tests/test_sweep_order.py. The fresh process keeps a crash or a leak of one cell from
reaching the next.)

Only a run of the full grid with the default settings writes ``benchmarks/results/context.*``; any
other run writes its report under ``results/partial/`` or ``results/quick/`` (or ``--out``), so a quick
or partial run never overwrites the committed results.

Every head starts from ``model.init=pytorch``: with mmseg's start (N(0, 0.01) classifiers) no head
learns to read a far cue in a few hundred iterations from scratch (non-local: 54.7 mIoU against 91.2),
which would measure the start, not the heads. The published recipes keep mmseg's start.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import io
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from benchmarks import context_tasks as tasks  # noqa: E402

CITY = {"train": "contextville", "val": "contexttown"}
CACHE = os.path.join(common.REPO, "benchmarks", ".cache", "context")  # task data, and cells of other settings
CELLS = os.path.join(common.RESULTS, "context_cells")  # the full settings' cells, committed
FULL = dict(iters=160, batch=8, size="48x344", train_images=96, val_images=24, width=8, channels=32, lr=2e-3,
            seeds="0,1,2", init="pytorch")
QUICK = dict(FULL, iters=6, batch=2, train_images=8, val_images=4, seeds="0,1")
QUICK_HEADS = "nl,cc,se"  # a query-key head, criss-cross and a channel gate (and the FCN): minutes, not the grid
SETTLE_WIDTH = 0.10  # --settle: a cell is open while its 95 % interval of object mIoU is wider than +-10 points
MAX_SEEDS = 8  # ... and it gets seeds until then, or until it has this many


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", default=None, help="comma-separated (default: fcn and every registered head)")
    p.add_argument("--tasks", default=None, help=f"comma-separated (default: {','.join(tasks.TASKS)})")
    p.add_argument("--seeds", default=None, help=f"comma-separated (default {FULL['seeds']}; --quick {QUICK['seeds']})")
    p.add_argument("--iters", type=int, default=None, help=f"iterations per cell (default {FULL['iters']})")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--size", default=None, help=f"image HxW (default {FULL['size']}); the width must leave room "
                                                "beyond the receptive field")
    p.add_argument("--train-images", type=int, default=None)
    p.add_argument("--val-images", type=int, default=None)
    p.add_argument("--width", type=int, default=None, help="backbone.width (ResNet-18-D8; 8: c5 has 64 channels)")
    p.add_argument("--channels", type=int, default=None, help="head.channels")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate")
    p.add_argument("--init", default=None, choices=["pytorch", "mmseg"], help="model.init (default pytorch)")
    p.add_argument("--residual-init", type=float, default=0.0,
                   help="model.residual_init: start the heads' zero-initialised residual scales (DANet's and "
                        "CCNet's gamma, GCNet's last conv, Non-local's BN, ...) here instead of the papers' 0; heads "
                        "without one (the FCN, SE, ...) reuse their cells of the default start")
    p.add_argument("--budget", default="1", help="comma-separated multipliers of the iterations (--iters x B, "
                                                 "default 1): each budget's cells are kept in their own settings "
                                                 "folder, and several budgets add curves of object mIoU against "
                                                 "iterations")
    p.add_argument("--settle", action="store_true",
                   help=f"after the seeds asked for, add seeds to every open cell (95 %% interval of object mIoU "
                        f"wider than +-{100 * SETTLE_WIDTH:.0f} points) until it closes or has {MAX_SEEDS} seeds; "
                        "seeds already trained are reused")
    p.add_argument("--dry-run", action="store_true", help="say which cells would be trained (before --settle's "
                                                          "rounds) and stop")
    p.add_argument("--max-seeds", type=int, default=MAX_SEEDS, help=f"--settle's limit (default {MAX_SEEDS})")
    p.add_argument("--jobs", type=int, default=2, help="cells trained at once, one thread each")
    p.add_argument("--force", action="store_true", help="retrain the chosen cells even when cached")
    p.add_argument("--cache", default=CACHE, help="where task data (and the cells of non-default settings) are kept")
    p.add_argument("--cells", default=None, help="where the cells' records are kept (default: results/context_cells "
                                                 "for the full settings, <cache>/cells otherwise)")
    p.add_argument("--quick", action="store_true", help=f"a smoke run: the FCN and {QUICK_HEADS} (unless --heads), "
                                                       "tiny budget, two seeds")
    p.add_argument("--out", default=None, help="folder for the report (default: results/ for the full grid, "
                                               "results/partial/ or results/quick/ otherwise; <cache>/plugin_reports/ "
                                               "with --plugins)")
    p.add_argument("--plugins", default=None, help="comma-separated modules or .py files registering heads of your "
                                                   "own (README: Bring your own head); their cells and report stay "
                                                   "in --cache, out of results/")
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick and args.heads is None:
        args.heads = QUICK_HEADS
    try:
        args.budgets = [float(b) for b in str(args.budget).split(",") if b.strip()]
    except ValueError:
        raise SystemExit(f"--budget must be comma-separated numbers (multipliers of --iters), got {args.budget!r}") \
            from None
    if not args.budgets or any(b <= 0 or round(args.iters * b) < 1 for b in args.budgets):
        raise SystemExit(f"--budget must be positive multipliers of --iters {args.iters}, got {args.budget!r}")
    return args


def settings(args, budget: float = 1.0) -> dict:
    """What a cell's numbers depend on besides its task, head and seed (the cache key). ``budget``
    multiplies the iterations; a non-zero ``residual_init`` is a key of its own (absent at the papers'
    0, which keeps the committed cells' key)."""
    s = {**{k: getattr(args, k) for k in FULL if k != "seeds"}, "tasks_version": tasks.VERSION}
    s["iters"] = int(round(s["iters"] * budget))
    if getattr(args, "residual_init", 0.0):
        s["residual_init"] = float(args.residual_init)
    return s


def default_settings() -> dict:
    return settings(argparse.Namespace(**FULL))


def committed_settings(s: dict) -> bool:
    """The full settings, or a variant of them this suite's findings rest on (another budget, another
    start of the residual scales): their cells are committed under ``results/context_cells``."""
    rest = {k: v for k, v in s.items() if k not in ("iters", "residual_init")}
    base = default_settings()
    return rest == {k: v for k, v in base.items() if k != "iters"} and s["iters"] % base["iters"] == 0


def settings_key(s: dict) -> str:
    return hashlib.sha1(json.dumps(s, sort_keys=True).encode()).hexdigest()[:10]


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--size must look like 48x344, got {text!r}") from None
    return h, w


# ----------------------------------------------------------------------------- the receptive field


def fcn_model(width: int, channels: int, num_classes: int = 19) -> torch.nn.Module:
    from segattn.models import build_model

    backbone = dict(common.compose_config([])["backbone"], width=width)
    return build_model(backbone, dict(common.head_config("fcn"), channels=channels), num_classes, {"weight": 0.0})


def receptive_radius(model: torch.nn.Module, size: tuple[int, int]) -> int:
    """How far (in input columns) the prediction at a pixel can depend on the input, measured by
    the gradient of the upsampled logits, as the evaluation upsamples them."""
    import torch.nn.functional as F

    h, w = size
    model.eval()
    x = torch.randn(1, 3, h, w, requires_grad=True)
    logits = F.interpolate(model(x)["out"], size=(h, w), mode="bilinear", align_corners=False)
    col = w - 1
    (g,) = torch.autograd.grad(logits[0, :, h // 2, col].sum(), x)
    cols = (g.abs().sum(dim=(0, 1, 2)) > 0).nonzero().flatten()
    return int(col - cols.min())


def objects_from(radius: int) -> int:
    """The first object column: the far zone, then the receptive field, then a margin of 8 columns."""
    return tasks.FAR + radius + 8


def cue_influence(model: torch.nn.Module, images: torch.Tensor, x0: int) -> float:
    """Largest |d logits[columns >= x0] / d far-zone pixels| over ``images``: zero means the model's
    predictions for the objects cannot depend on the cue."""
    import torch.nn.functional as F

    model.eval()
    x = images.clone().requires_grad_(True)
    logits = F.interpolate(model(x)["out"], size=x.shape[-2:], mode="bilinear", align_corners=False)
    (g,) = torch.autograd.grad(logits[..., x0:].sum(), x)
    return float(g[..., :tasks.FAR].abs().max())


# ----------------------------------------------------------------------------- the data


def generate(root: str, task: str, size: tuple[int, int], x0: int, n_train: int, n_val: int) -> str:
    """Write ``task`` in the Cityscapes layout (atomically: a temporary folder renamed)."""
    from PIL import Image

    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".context.", dir=parent)
    try:
        for i, (split, n) in enumerate((("train", n_train), ("val", n_val))):
            rng = np.random.default_rng([tasks.TASKS.index(task), i])
            city = CITY[split]
            img_dir = os.path.join(tmp, "leftImg8bit", split, city)
            gt_dir = os.path.join(tmp, "gtFine", split, city)
            os.makedirs(img_dir)
            os.makedirs(gt_dir)
            for k in range(n):
                img, lab, _ = tasks.scene(task, rng, *size, x0)
                stem = f"{city}_{k:06d}_000019"
                Image.fromarray(img).save(os.path.join(img_dir, f"{stem}_leftImg8bit.png"))
                Image.fromarray(lab).save(os.path.join(gt_dir, f"{stem}_gtFine_labelTrainIds.png"))
        with open(os.path.join(tmp, "task.json"), "w") as f:
            json.dump({"task": task, "size": list(size), "objects_from_column": x0, "far_zone": tasks.FAR}, f)
        if os.path.isdir(root):
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def task_data(args, task: str, size, x0: int) -> str:
    root = os.path.join(args.cache, "data", f"{task}_v{tasks.VERSION}_{size[0]}x{size[1]}_x{x0}_{args.train_images}_"
                                            f"{args.val_images}")
    if not os.path.isfile(os.path.join(root, "task.json")):
        generate(root, task, size, x0, args.train_images, args.val_images)
    return root


# ----------------------------------------------------------------------------- one cell


def width_overrides(head: str, channels: int) -> list[str]:
    """Groups that cannot split the suite's narrow head are scaled with its width: SGE's 64 groups of a
    512-wide head hold 8 channels each, so 4 groups at width 32. Groups that divide it stay as configured."""
    cfg = common.head_config(head)
    groups = cfg.get("groups")
    if groups and cfg.get("channels") and channels % int(groups):
        return [f"head.groups={max(1, int(groups) * channels // int(cfg['channels']))}"]
    return []


def overrides(head: str, seed: int, s: dict, root: str) -> list[str]:
    h, w = parse_size(s["size"])
    it = s["iters"]
    residual = [f"model.residual_init={s['residual_init']}"] if s.get("residual_init") else []
    # A plugin's head: imported by the trainer in the cell's own process, run in the generic head's config
    choice = [f"plugins=[{s['plugin']}]", "head=custom", f"head.name={head}"] if s.get("plugin") else [f"head={head}"]
    return [
        *choice, f"head.channels={s['channels']}", *width_overrides(head, s["channels"]), f"backbone.width={s['width']}", f"model.init={s['init']}",
        *residual,
        "model.aux_head.channels=32", "dataset=cityscapes", f"dataset.root={root}", f"dataset.crop_size=[{h},{w}]",
        # The whole image, unaugmented: a crop could cut the cue off, a flip would move it.
        "dataset.scale_range=[1.0,1.0]", "dataset.cat_max_ratio=1.0", "dataset.flip=false",
        "dataset.photometric=false", "dataset.inference.mode=whole", "dataset.inference.crop_size=null",
        "dataset.inference.stride=null", "optimizer=adamw", f"optimizer.lr={s['lr']}",
        f"trainer.batch_size={s['batch']}", f"trainer.max_iters={it}", f"trainer.val_interval={it}",
        f"trainer.log_interval={max(1, it // 8)}", "trainer.num_workers=0", "trainer.progress=false",
        "trainer.device=cpu", f"seed={seed}",
    ]


def _mean(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def train_cell(task: str, head: str, seed: int, s: dict, root: str, work: str) -> dict:
    """Train one cell in this process (one thread) and return its record."""
    from segattn.engine.checkpoint import model_from_checkpoint
    from segattn.engine.trainer import train
    from segattn.models import residual_scales

    torch.set_num_threads(1)
    if s.get("plugin"):  # this process's own import: its overrides read the plugin head's config
        from segattn.plugins import import_plugins

        import_plugins([s["plugin"]], key="--plugins")
    run_dir = os.path.join(work, f"{task}_{head}_seed{seed}")
    cfg = common.compose_config(overrides(head, seed, s, root))
    tic = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        metrics = train(cfg, run_dir)
    seconds = time.perf_counter() - tic
    model, _ = model_from_checkpoint(os.path.join(run_dir, "checkpoints", "last.pt"))
    shutil.rmtree(run_dir, ignore_errors=True)
    iou, acc = metrics["IoU"], metrics["Acc"]
    return {
        "task": task, "head": head, "seed": seed, "mIoU": metrics["mIoU"],
        # Classes absent from a (tiny) validation set are None: averaged over those present.
        "object_mIoU": _mean([iou[c] for c in tasks.OBJECTS]),
        "object_recall": _mean([acc[c] for c in tasks.OBJECTS]),
        **{f"IoU_{c}": iou[c] for c in (*tasks.OBJECTS, "road", "traffic light", "traffic sign")},
        "head_params": common.count_params(model.head), "seconds": seconds,
        "residual_scales": residual_scales(model),
    }


@functools.lru_cache(maxsize=None)
def has_residual_scales(head: str, channels: int = FULL["channels"], width: int = FULL["width"]) -> bool:
    """Whether ``head`` has zero-initialised residual scales (``model.residual_init`` changes it at all)."""
    from segattn.models import build_model

    cfg = dict(common.head_config(head), channels=channels)
    for o in width_overrides(head, channels):
        key, value = o.split("=")
        cfg[key.split(".")[1]] = int(value)
    model = build_model({"depth": 18, "width": width}, cfg, 19, {"weight": 0.0}, init="pytorch")
    return bool(model.head.residual_scale_names)


def cell_settings(s: dict, head: str) -> dict:
    """The settings ``head``'s cell is trained with: a head without residual scales is the same model
    whatever ``residual_init`` says, so it reuses the cells of the papers' start. A plugin's head adds its
    plugin and a hash of the plugin's source: an edited module gets new cells, not the old module's."""
    if s.get("residual_init") and not has_residual_scales(head, s["channels"], s["width"]):
        s = {k: v for k, v in s.items() if k != "residual_init"}
    from segattn.plugins import plugin_of

    plugin = plugin_of(head)
    if plugin:
        s = {**s, "plugin": plugin, "plugin_source": plugin_source_hash(plugin)}
    return s


def plugin_source_hash(plugin: str) -> str:
    """The first 10 hex digits of the SHA-1 of the plugin's source file."""
    from segattn.plugins import _IMPORTED

    path = getattr(_IMPORTED.get(plugin), "__file__", None) or plugin
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()[:10]


def cells_root(args, s: dict) -> str:
    """The folder of the settings ``s``: committed for the full settings and their budget and start
    variants, the ignored cache otherwise (or ``--cells``)."""
    if args.cells:
        root = args.cells
    elif s.get("plugin"):  # a user's head: never among the committed results
        root = os.path.join(args.cache, "plugin_cells")
    elif committed_settings(s):
        root = CELLS
    else:
        root = os.path.join(args.cache, "cells")
    return os.path.join(root, settings_key(s))


def _cell_path(args, s: dict, task: str, head: str, seed: int) -> str:
    return os.path.join(cells_root(args, s), task, f"{head}_seed{seed}.json")


def load_cells(args, s: dict, task_list: list[str], heads: list[str], seeds: list[int] | None = None) -> list[dict]:
    """The records of the settings ``s`` for these tasks and heads: ``seeds``, or every seed trained."""
    out = []
    for task in task_list:
        for head in heads:
            cs = cell_settings(s, head)
            folder = os.path.join(cells_root(args, cs), task)
            found = sorted((int(f[len(head) + 5:-5]) for f in os.listdir(folder) if f.startswith(f"{head}_seed")
                            and f.endswith(".json") and f[len(head) + 5:-5].isdigit()) if os.path.isdir(folder) else [])
            for seed in (found if seeds is None else seeds):
                path = _cell_path(args, cs, task, head, seed)
                if os.path.isfile(path):
                    rec = json.load(open(path))
                    out.append(rec)
    return out


def open_cells(cells: list[dict], max_seeds: int = MAX_SEEDS, width: float = SETTLE_WIDTH) -> list[tuple[str, str]]:
    """(task, head) whose 95 % interval of object mIoU is wider than +-``width`` with fewer than
    ``max_seeds`` seeds: where another seed can still change the verdict."""
    from segattn.stats import mean_ci

    by = {}
    for c in cells:
        by.setdefault((c["task"], c["head"]), []).append(c["object_mIoU"])
    out = []
    for key, values in by.items():
        ci = mean_ci(values)
        if ci.n < max_seeds and (ci.n < 2 or math.isnan(ci.half_width) or ci.half_width > width):
            out.append(key)
    return out


def _run_one(job) -> dict:
    task, head, seed, s, root, work, path = job
    rec = train_cell(task, head, seed, s, root, work)
    folder = os.path.dirname(os.path.dirname(path))
    if not os.path.isfile(os.path.join(folder, "settings.json")):  # what the folder's key stands for
        common.write_atomic(os.path.join(folder, "settings.json"), json.dumps(s, indent=1, sort_keys=True))
    common.write_atomic(path, json.dumps(rec, indent=1))
    return rec


def _worker_init() -> None:
    """A worker dies with the suite, and only the suite hears Ctrl-C. The worker leaves the terminal's
    process group (a Ctrl-C reaches the whole group, and the trainer would turn it into "finish this
    iteration, save and stop" in every worker); the suite kills its workers when it stops, and the kernel
    kills a worker whose parent died (which would otherwise go on taking cells from the queue's buffer)."""
    if sys.platform.startswith("linux"):
        import ctypes

        os.setsid()
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        # The worker started with SIGINT blocked (see train_cells): a Ctrl-C that reached it while it was
        # still starting is pending. Dropped here (ignored, then unblocked), the default handler restored.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, signal.default_int_handler)


def train_cells(jobs: list[tuple], at_once: int = 1) -> list[dict]:
    """Train ``jobs`` ((task, head, seed, settings, data root, work folder, record path) each), each in a
    fresh one-thread process, ``at_once`` at a time, with a progress bar; each record is written to its
    path as soon as its cell is done. Ctrl-C (KeyboardInterrupt) kills the workers before it propagates:
    finished cells stay written, the unfinished ones leave nothing behind."""
    import multiprocessing

    from tqdm import tqdm

    records = []
    if not jobs:
        return records
    bar = tqdm(total=len(jobs), desc="context cells", dynamic_ncols=True)
    # One fresh process per cell (max_tasks_per_child=1): reproducible whatever ran before it.
    pool = ProcessPoolExecutor(max(1, at_once), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init, max_tasks_per_child=1)
    try:
        # The workers start with SIGINT blocked until they leave the terminal's process group
        # (_worker_init): a Ctrl-C while one is importing would otherwise print its traceback. The mask is
        # inherited by the processes started here and by the pool's threads, which start the later ones.
        blocked = hasattr(signal, "pthread_sigmask")
        if blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            pending = {pool.submit(_run_one, job): job for job in jobs}
        finally:
            if blocked:  # a Ctrl-C that came meanwhile is delivered here, to this thread
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        while pending:
            # A short wait, not as_completed: the main thread stays responsive to Ctrl-C.
            done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for fut in done:
                task, head, seed = pending.pop(fut)[:3]
                records.append(fut.result())
                bar.set_postfix_str(f"done {task} {head} seed {seed}")
                bar.update(1)
    except BaseException:  # Ctrl-C or a failed cell: no worker goes on training in the background
        procs = list((getattr(pool, "_processes", None) or {}).values())
        for proc in procs:
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        # A worker the pool was still starting (max_tasks_per_child replaces each finished one) is in none of the
        # lists above and has no death signal yet: left alone, it reads its start-up data from a closed pipe and
        # prints an EOFError traceback. Every child still alive is killed for a moment longer.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            alive = multiprocessing.active_children()
            if not alive:
                break
            for child in alive:
                child.kill()
            time.sleep(0.05)
        bar.close()
        raise
    pool.shutdown()
    bar.close()
    return records


def run_cells(args, jobs: list[tuple]) -> None:
    """Train ``jobs`` ``args.jobs`` at a time (:func:`train_cells`)."""
    train_cells(jobs, args.jobs)


# ----------------------------------------------------------------------------- the suite


def cell_job(args, s: dict, task: str, head: str, seed: int, root: str, work: str) -> tuple:
    """One job for :func:`train_cells`: the cell (task, head, seed) of the settings ``s`` on the task data in
    ``root``, its record written where :func:`load_cells` finds it."""
    cs = cell_settings(s, head)
    return (task, head, seed, cs, root, work, _cell_path(args, cs, task, head, seed))


def next_seed(have: set[int]) -> int:
    """The smallest seed not trained yet."""
    return min(set(range(len(have) + 1)) - have)


def variant_cells(args, task_list: list[str], heads: list[str]) -> dict:
    """The committed cells of the full settings' variants for these tasks and heads: ``{"budgets": {iters:
    records}, "residual_init": {value: records}}`` (each settings folder says what it is in its
    ``settings.json``)."""
    out = {"budgets": {}, "residual_init": {}}
    root = args.cells or CELLS
    if not os.path.isdir(root):
        return out
    for key in sorted(os.listdir(root)):
        path = os.path.join(root, key, "settings.json")
        if not os.path.isfile(path):
            continue
        s = json.load(open(path))
        if not committed_settings(s) or settings_key(s) != key:
            continue
        base = default_settings()
        if s.get("residual_init") and s["iters"] == base["iters"]:
            wanted = [h for h in heads if has_residual_scales(h, s["channels"], s["width"])]
            cells = load_cells(args, s, task_list, wanted)
            if cells:
                out["residual_init"][s["residual_init"]] = cells
        elif not s.get("residual_init"):
            cells = load_cells(args, s, task_list, heads)
            if cells:
                out["budgets"][s["iters"]] = cells
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    from segattn.plugins import import_plugins, plugin_of

    # A plugin's path is kept absolute: the cells train in other processes, and records name it.
    args.plugins = [os.path.abspath(p) if p.endswith(".py") else p
                    for p in (args.plugins or "").split(",") if p.strip()]
    import_plugins(args.plugins, key="--plugins")
    head_list = common.head_names()
    if args.plugins and not args.heads:
        raise SystemExit(f"--plugins {','.join(args.plugins)}: name the heads to measure with --heads (registered by "
                         f"them: {', '.join(h for h in head_list if plugin_of(h)) or 'none'})")
    heads = common.parse_names(args.heads, head_list)
    if "fcn" not in heads:
        heads = ["fcn", *heads]  # the baseline every p-value is against
    task_list = common.parse_names(args.tasks, list(tasks.TASKS), "--tasks")
    try:
        seeds = [int(v) for v in str(args.seeds).split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    size = parse_size(args.size)
    base = settings(args)
    full_grid = (not args.quick and not args.plugins and heads == head_list and task_list == list(tasks.TASKS) and len(seeds) >= 3
                 and base == default_settings() and args.budgets == [1.0])
    mine = [h for h in heads if plugin_of(h)]
    out = args.out or (os.path.join(args.cache, "plugin_reports", "+".join(mine)) if mine else
                       os.path.join(common.RESULTS, "" if full_grid else ("quick" if args.quick else "partial")))

    torch.manual_seed(0)
    radius = receptive_radius(fcn_model(args.width, args.channels), size)
    x0 = objects_from(radius)
    if x0 + 48 > size[1]:
        raise SystemExit(f"--size {args.size}: objects must start at column {x0} (far zone {tasks.FAR} + receptive "
                         f"field {radius} + 8), which leaves no room; use a width of at least {x0 + 64}")
    roots = {t: task_data(args, t, size, x0) for t in task_list}
    work = tempfile.mkdtemp(prefix="segattn_context.")
    trained, tic = 0, time.perf_counter()
    by_budget = {}
    try:
        for budget in args.budgets:
            s = settings(args, budget)

            def job(task, head, seed):
                return cell_job(args, s, task, head, seed, roots[task], work)

            jobs = []  # seed by seed: a first picture of every head on every task comes early
            for seed in seeds:
                for task in task_list:
                    for head in heads:
                        j = job(task, head, seed)
                        if (args.force or not os.path.isfile(j[-1])) and j not in jobs:
                            jobs.append(j)
            variant = f", {s['iters']} iterations" + (f", residual_init {s['residual_init']}"
                                                      if s.get("residual_init") else "")
            print(f"context suite: {len(task_list)} tasks x {len(heads)} heads x {len(seeds)} seeds{variant}, "
                  f"{len(jobs)} cells to train ({args.jobs} at a time), report -> {os.path.relpath(out)}",
                  file=sys.stderr)
            if args.dry_run:
                for j in jobs:
                    print(f"would train {j[0]} {j[1]} seed {j[2]} -> {os.path.relpath(j[-1])}", file=sys.stderr)
                continue
            run_cells(args, jobs)
            trained += len(jobs)
            while args.settle:  # a round at a time: each round's cells decide which cells are still open
                cells = load_cells(args, s, task_list, heads)
                jobs = []
                for task, head in open_cells(cells, args.max_seeds):
                    have = {c["seed"] for c in cells if c["task"] == task and c["head"] == head}
                    jobs.append(job(task, head, next_seed(have)))
                if not jobs:
                    break
                print(f"settling: {len(jobs)} open cells (95 % CI wider than +-{100 * SETTLE_WIDTH:.0f} points, fewer "
                      f"than {args.max_seeds} seeds) get a seed each: "
                      + ", ".join(f"{t} {h} seed {k}" for t, h, k in (j[:3] for j in jobs)), file=sys.stderr)
                run_cells(args, jobs)
                trained += len(jobs)
            by_budget[s["iters"]] = load_cells(args, s, task_list, heads,
                                               None if (args.settle or full_grid) else seeds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.dry_run:
        return {"cells": [], "info": {}, "paths": [], "out": out, "variants": {}}
    wall = time.perf_counter() - tic
    cells = by_budget[settings(args, args.budgets[0])["iters"]]
    variants = variant_cells(args, task_list, heads) if full_grid else {"budgets": {}, "residual_init": {}}
    if args.budgets != [1.0]:
        variants["budgets"].update(by_budget)
    if variants["budgets"]:  # the curves start at the default budget
        one = settings(args)
        variants["budgets"].setdefault(one["iters"], load_cells(args, one, task_list, heads))
        variants["budgets"] = {k: v for k, v in variants["budgets"].items() if v}
    if base.get("residual_init"):
        default = load_cells(args, {k: v for k, v in base.items() if k != "residual_init"}, task_list, heads)
        variants["residual_init"] = {base["residual_init"]: [
            c for c in cells if has_residual_scales(c["head"], base["channels"], base["width"])]}
        cells = default
    info = {"size": size, "radius": radius, "x0": x0, "wall_s": wall, "trained": trained,
            "seeds": sorted({c["seed"] for c in cells}), "quick": args.quick, "jobs": args.jobs, "full": full_grid,
            "settings": settings(args, args.budgets[0])}
    from benchmarks import context_report

    paths = context_report.write(cells, args, info, out, variants)
    if mine:  # the plugin's rows against the built-in heads' cells of the same settings (never trained for it)
        builtin = [h for h in common.head_names() if not plugin_of(h)]
        known = load_cells(args, settings(args, args.budgets[0]), task_list, builtin)
        paths.append(context_report.placement(cells, known, mine, task_list, out, info))
    for p in paths:
        print(f"wrote {os.path.relpath(p)}")
    return {"cells": cells, "info": info, "paths": paths, "out": out, "variants": variants}


def cli(argv=None) -> int:
    """``main`` for the command line: Ctrl-C stops the suite with one line (finished cells are kept)."""
    try:
        main(argv)
    except KeyboardInterrupt:
        sys.stderr.write("\ncontext suite: interrupted (Ctrl-C); the cells finished so far are kept, and the same "
                         "command continues from them\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
