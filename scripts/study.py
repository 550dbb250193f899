"""A head study in one command: train every head with several seeds, then write one report folder.

    python scripts/study.py heads=[fcn,cc,da,ema] seeds=3
    python scripts/study.py heads=[fcn,cc,da] seeds=2 +experiment=cityscapes_r50_d8_80k dataset.root=/data/cs
    python scripts/study.py heads=[fcn,cc,da,ema] seeds=3 hydra/launcher=slurm hydra.launcher.partition=gpu

Study keys (everything else is a train.py override, applied to every run):
  heads=[a,b,...]   the heads to compare (conf/head names); the first is the baseline unless baseline= says.
                    A plugin's head (plugins=[my_attention.py], imported first) needs its yaml in a config
                    folder of one's own: hydra.searchpath=[file:///path/to/conf] with head/<name>.yaml
  seeds=N | [s,..]  seeds 0..N-1, or these seeds
  baseline=NAME     the head the others are compared with (default: fcn when studied, else the first)
  out=DIR           the study folder (default: studies/<heads>_<overrides>)
  speed_steps=N     timed training steps per head for images/s (default 5; 0: no speed column)
  points=N          pixels marked in the attention pictures (default 3, one per large class)

The runs go through train.py's Hydra multirun (``python train.py --multirun ...`` in a process of its
own; a ``hydra/launcher=...`` override reaches it unchanged), into ``<out>/runs/<head>_seed<seed>``. Running the same command again trains
only what is missing: finished runs are collected as they are, unfinished ones continue from their
``last.pt`` (``resume=auto``). Then ``<out>/report/`` gets:

- ``README.md``: mmsegmentation's results layout (head | backbone | crop | iters | params | GFLOPs |
  train memory | images/s | mIoU mean ± 95 % confidence interval (n) | vs baseline with Welch's p),
  the per-class IoU deltas, the runs that did not count;
- ``summary.csv`` (the same numbers), ``miou.png`` (bars with 95 % CI error bars and each seed's dot),
  ``class_iou_delta.png`` (per-class IoU of each head minus the baseline's, a heat map);
- ``attention/``: every head's attention pictures at the same pixels of the first validation image
  (seed 0's model).

Cost columns come from benchmarks/ at the study's crop size and batch: parameters of the whole
model; forward GFLOPs of one crop and the activation memory of a training step (forward + backward of
one batch, counted on the ``meta`` device: benchmarks/common.py); images/s of the trainer's own step
on this machine's CPU (benchmarks/train_speed.py). matplotlib draws the charts
(``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))

import summarize_sweep  # noqa: E402

from segattn.stats import p_text, welch_p  # noqa: E402

STUDY_KEYS = ("heads", "seeds", "baseline", "out", "speed_steps", "points")


def _list(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    return [v.strip() for v in value.split(",") if v.strip()]


def parse(argv: list[str]) -> tuple[dict, list[str]]:
    """(study settings, train.py overrides) from ``key=value`` arguments."""
    study, overrides = {}, []
    for arg in argv:
        key = arg.split("=", 1)[0]
        if key in STUDY_KEYS:
            if "=" not in arg:
                raise SystemExit(f"study.py: {arg!r}: expected {key}=VALUE")
            study[key] = arg.split("=", 1)[1]
        elif key.lstrip("+~") in ("head", "seed") or key.startswith("hydra.sweep"):
            raise SystemExit(f"study.py: {arg!r}: the study sets {key.lstrip('+~')} per run; use heads=[...] and "
                             f"seeds=N (head.<key>=... applies to every head)")
        elif arg in ("--multirun", "-m"):
            continue
        else:
            overrides.append(arg)
    # plugins=[...] (a train.py key, passed on to every run) registers heads of one's own: imported here too,
    # before the heads are looked up and the cost columns build them (README: Bring your own head).
    from segattn.plugins import import_plugins

    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+") == "plugins":
            try:
                import_plugins(_list(value))
            except ValueError as e:
                raise SystemExit(f"study.py: {e}") from None
    from benchmarks.common import head_names

    if "heads" not in study:
        raise SystemExit("study.py: heads=[...] is required, e.g. heads=[fcn,cc,da,ema] seeds=3")
    heads = _list(study["heads"])
    bad = [h for h in heads if h not in head_names()]
    if not heads or bad:
        raise SystemExit(f"study.py: heads={study['heads']}: unknown {bad or 'empty list'}; expected names from "
                         f"{', '.join(head_names())}")
    seeds_text = study.get("seeds", "3")
    try:
        seeds = [int(s) for s in _list(seeds_text)] if "[" in seeds_text else list(range(int(seeds_text)))
    except ValueError:
        raise SystemExit(f"study.py: seeds={seeds_text}: expected a count (seeds=3) or a list (seeds=[0,1,2])") from None
    if not seeds:
        raise SystemExit(f"study.py: seeds={seeds_text}: expected at least one seed")
    baseline = study.get("baseline") or ("fcn" if "fcn" in heads else heads[0])
    if baseline not in heads:
        raise SystemExit(f"study.py: baseline={baseline} is not one of heads={heads}")
    settings = {"heads": heads, "seeds": seeds, "baseline": baseline, "out": study.get("out"),
                "speed_steps": int(study.get("speed_steps", 5)), "points": int(study.get("points", 3))}
    if not settings["out"]:
        # The folder becomes part of the hydra.sweep.dir override, where '=' (and brackets, quotes, commas)
        # would have to be quoted: "trainer.max_iters=8" is named "trainer.max_iters-8".
        slug = re.sub(r"[^A-Za-z0-9._+-]+", "-", "_".join(o.replace("=", "-") for o in overrides))[:60]
        digest = hashlib.sha1(" ".join(overrides).encode()).hexdigest()[:6] if overrides else ""
        settings["out"] = os.path.join("studies", "-".join(heads) + (f"_{slug}_{digest}" if slug else ""))
    return settings, overrides


# ----------------------------------------------------------------------------- training


def run_dir(out: str, head: str, seed: int) -> str:
    return os.path.join(out, "runs", f"{head}_seed{seed}")


def is_finished(path: str) -> bool:
    rows = [r for r in summarize_sweep.collect(path) if r["run"] == "."]
    return bool(rows) and rows[0]["status"] == "done"


def check_same_study(out: str, heads: list[str], seeds: list[int], overrides: list[str]) -> None:
    """A study folder holds one configuration: refuse to mix runs of other overrides into it."""
    from segattn.io import atomic_write

    path = os.path.join(out, "study.json")
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        if old.get("overrides") != overrides:
            raise SystemExit(f"study.py: {out} holds a study with the overrides {old.get('overrides')}, not "
                             f"{overrides}; choose another out=DIR")
        heads = list(dict.fromkeys(old.get("heads", []) + heads))
        seeds = sorted(set(old.get("seeds", [])) | set(seeds))
    with atomic_write(path, "w") as f:
        json.dump({"heads": heads, "seeds": seeds, "overrides": overrides}, f, indent=2)


def launch(out: str, heads: list[str], seeds: list[int], overrides: list[str]) -> list[str]:
    """train.py --multirun for the (head, seed) pairs without a finished run; returns the errors of
    launches that failed (the runs are then listed in the report as failed, not dropped)."""
    missing = {}
    for head in heads:
        todo = tuple(s for s in seeds if not is_finished(run_dir(out, head, s)))
        if todo:
            missing.setdefault(todo, []).append(head)
    if not missing:
        print(f"study: all {len(heads) * len(seeds)} runs of {out} are finished; collecting them", file=sys.stderr)
    errors = []
    for todo, todo_heads in missing.items():  # one multirun per set of missing seeds (usually one in all)
        argv = ["--multirun", f"head={','.join(todo_heads)}", f"seed={','.join(str(s) for s in todo)}", *overrides,
                f"hydra.sweep.dir={os.path.abspath(os.path.join(out, 'runs'))}",
                "hydra.sweep.subdir=${head.name}_seed${seed}", "resume=auto"]
        print(f"study: training {len(todo_heads) * len(todo)} runs: train.py {' '.join(argv)}", file=sys.stderr)
        try:
            _train_main(argv)
        except Exception as e:  # noqa: BLE001  (report and go on: the others are collected)
            errors.append(f"train.py --multirun head={','.join(todo_heads)}: {type(e).__name__}: {e}")
            print(f"study: {errors[-1]}", file=sys.stderr)
    return errors


def _train_main(argv: list[str]) -> None:
    """``python train.py <argv>`` in a process of its own, as from the shell: with ``--multirun`` Hydra's launcher
    (``hydra/launcher=...``) runs the jobs, one after another here or as cluster jobs. Raises on failure. A
    Ctrl-C (the terminal sends it to both processes) or a SIGTERM of the study (passed on) lets the training
    finish its iteration and save ``last.pt``; then the study stops too (exit 130 / 143)."""
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), *argv])
    old = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                continue  # train.py got the same Ctrl-C: wait for it to save and exit
    finally:
        signal.signal(signal.SIGTERM, old)
    if code in (130, 143, -signal.SIGINT, -signal.SIGTERM):
        raise SystemExit(143 if code in (143, -signal.SIGTERM) else 130)
    if code:
        raise RuntimeError(f"exit status {code} (train.py's message is above)")


# ----------------------------------------------------------------------------- costs


def costs(heads: list[str], overrides: list[str], num_classes: int, speed_steps: int) -> dict[str, dict]:
    """Per head: params, forward GFLOPs of one crop, training activation MiB of one batch (meta device),
    images/s of the trainer's step on the CPU (0 steps: None)."""
    import torch

    from benchmarks import common, train_speed
    from segattn.models import build_model_from_config

    out = {}
    for head in heads:
        cfg = common.compose_config([*overrides, f"head={head}"])
        crop = [int(c) for c in cfg["dataset"]["crop_size"]]
        batch = int(cfg["trainer"]["batch_size"])
        with torch.device("meta"):
            model = build_model_from_config(cfg, num_classes, pretrained=False)
        model.eval()
        with common.cpu_emulation(), torch.no_grad():
            flops = common.count_flops(lambda: model(torch.empty(1, 3, *crop, device="meta")))
        mem = common.activation_memory(model, lambda: [torch.empty(batch, 3, *crop, device="meta")], "meta")
        out[head] = {"params": common.count_params(model), "gflops": flops.total / 1e9,
                     "train_mib": mem["train"] / common.MiB, "crop": crop, "batch": batch,
                     "backbone": cfg["backbone"]["name"], "max_iters": int(cfg["trainer"]["max_iters"]),
                     "images_per_s": None}
    if speed_steps > 0:
        args = argparse.Namespace(overrides=[], workers=0, dataset=None, root=None)
        states = {h: train_speed.setup_config(h, [*overrides, f"head={h}", "trainer.num_workers=0"], args)
                  for h in heads}
        for st in states.values():  # the trainer resolves class_weight=auto at set-up; so must we
            if (st["cfg"].get("loss") or {}).get("class_weight") == "auto":
                st["model"].criterion.set_class_counts(st["train_set"].class_pixel_counts())
        for step in range(speed_steps + 1):  # one untimed step first; heads take their steps in turn
            for h in heads[step % len(heads):] + heads[:step % len(heads)]:
                train_speed.timed_step(states[h], step > 0, {}, 0)
        for h, st in states.items():
            out[h]["images_per_s"] = st["cfg"]["trainer"]["batch_size"] * len(st["step_s"]) / sum(st["step_s"])
            st["batches"] = None
    return out


# ----------------------------------------------------------------------------- report


def head_stats(rows: list[dict], heads: list[str]) -> tuple[dict, list[str]]:
    """{head: {n, seeds, mIoU, IoU {class: ...}, values [mIoU per seed]}}, classes: mIoU and each class IoU as
    segattn.stats's Interval (mean, 95 % CI half width, n), summarize_sweep's convention."""
    by_head = {h: [r for r in rows if r["status"] == "done" and re.fullmatch(rf"{re.escape(h)}_seed-?\d+", r["run"])]
               for h in heads}
    groups, classes = summarize_sweep.aggregate([dict(r, group=h) for h, rs in by_head.items() for r in rs])
    stats = {g["group"]: dict(g, values=[r["mIoU"] for r in by_head[g["group"]]]) for g in groups}
    return stats, classes


def compare(stat: dict | None, base: dict | None) -> tuple[str, float]:
    """'vs baseline' cell and Welch's p: the difference of the means, and the two-sided p-value of Welch's
    t-test over the seeds (segattn.stats), with the verdict at p < 0.05."""
    if not stat or not base or not stat["mIoU"].n or not base["mIoU"].n:
        return "—", math.nan
    delta = 100 * (stat["mIoU"].mean - base["mIoU"].mean)
    p = welch_p(stat["values"], base["values"])
    if math.isnan(p):
        return f"{delta:+.2f} (Welch p needs 2 seeds a side)", p
    verdict = "a real difference" if p < 0.05 else "not told apart from the seed noise"
    return f"{delta:+.2f} (Welch p {p_text(p)}: {verdict})", p


def ci_text(stat: dict | None) -> str:
    """``mean ± 95 % CI half width (n)`` of a head's mIoU, in percent (summarize_sweep's convention)."""
    return summarize_sweep.pm(stat["mIoU"]) if stat else "— (0)"


def _fmt(v, digits=2, scale=1.0) -> str:
    return "—" if v is None else f"{v * scale:.{digits}f}"


def report(out: str, heads: list[str], seeds: list[int], baseline: str, overrides: list[str], cost: dict,
           errors: list[str], n_points: int) -> str:
    """Write ``<out>/report/``; returns the path of its README.md."""
    from benchmarks.common import write_atomic, write_csv

    rdir = os.path.join(out, "report")
    os.makedirs(rdir, exist_ok=True)
    rows = summarize_sweep.collect(os.path.join(out, "runs"))
    stats, classes = head_stats(rows, heads)
    base = stats.get(baseline)

    table = ["| head | backbone | crop | iters | params (M) | GFLOPs | train MiB | images/s | mIoU % (95 % CI, n) "
             f"| vs {baseline} |", "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    csv_rows = []
    for h in heads:
        c, st = cost.get(h, {}), stats.get(h)
        crop = "x".join(str(v) for v in c.get("crop", [])) or "—"
        ci = st["mIoU"] if st else None
        vs, p = ("baseline", math.nan) if h == baseline else compare(st, base)
        table.append(f"| {h} | {c.get('backbone', '—')} | {crop} | {c.get('max_iters', '—')} | "
                     f"{_fmt(c.get('params'), 3, 1e-6)} | {_fmt(c.get('gflops'))} | {_fmt(c.get('train_mib'), 1)} | "
                     f"{_fmt(c.get('images_per_s'), 1)} | {ci_text(st)} | {vs} |")
        csv_rows.append([h, c.get("backbone", ""), crop, c.get("max_iters", ""), c.get("params", ""),
                         _fmt(c.get("gflops")), _fmt(c.get("train_mib"), 1), _fmt(c.get("images_per_s"), 1),
                         st["n"] if st else 0, summarize_sweep.pct(ci.mean) if st else "",
                         summarize_sweep.pct(ci.half_width) if st else "",
                         "" if h == baseline or not st or not base else f"{100 * (ci.mean - base['mIoU'].mean):.2f}",
                         "" if math.isnan(p) else f"{p:.4g}"]
                        + [summarize_sweep.pct(st["IoU"][k].mean) if st else "" for k in classes])
    write_csv(os.path.join(rdir, "summary.csv"),
              ["head", "backbone", "crop", "iters", "params", "GFLOPs", "train MiB", "images/s", "n", "mIoU mean %",
               "mIoU 95% CI half width %", f"mIoU - {baseline} %", f"Welch p vs {baseline}"]
              + [f"IoU {k} mean %" for k in classes], csv_rows)

    charts = []
    try:
        charts = draw_charts(rdir, heads, baseline, stats, classes)
    except ImportError:
        print("study: matplotlib is missing, so no charts: pip install -e '.[bench]'", file=sys.stderr)
    pictures = draw_attention(out, rdir, heads, seeds, n_points)

    delta_rows = []
    if base:
        delta_rows = ["| head | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
        for h in heads:
            if h == baseline or h not in stats:
                continue
            cells = []
            for k in classes:
                a, b = stats[h]["IoU"][k].mean, base["IoU"][k].mean
                cells.append("—" if math.isnan(a) or math.isnan(b) else f"{100 * (a - b):+.2f}")
            delta_rows.append(f"| {h} | " + " | ".join(cells) + " |")
    notes = summarize_sweep.not_counted(rows)
    lines = [f"# Head study: {', '.join(heads)} x {len(seeds)} seeds", "",
             f"`python scripts/study.py heads=[{','.join(heads)}] seeds=[{','.join(map(str, seeds))}] "
             f"{' '.join(overrides)}`".replace(" `", "`"), "",
             f"Runs: `{os.path.join(out, 'runs')}`; written {time.strftime('%Y-%m-%d %H:%M')}. mIoU is the final "
             f"validation mIoU (metrics.json) as the mean over seeds ± the half width of its 95 % confidence "
             f"interval (Student t, n - 1 degrees of freedom), n = finished runs. Costs at the "
             f"study's crop: parameters of the whole model, forward GFLOPs of one crop, activation memory of a "
             f"training step of one batch (meta device, benchmarks/common.py), images/s of the trainer's step on "
             f"this machine's CPU (benchmarks/train_speed.py).", "", *table, "",
             f"vs {baseline}: the difference of the means and the two-sided p-value of Welch's t-test (unequal "
             "variances) over the seeds; p < 0.05 is called a real difference. With few seeds the test has little "
             "power: 'not told apart' means these runs cannot tell, not that the heads are equal.", ""]
    if charts:
        lines += [f"![{os.path.splitext(c)[0]}]({c})" for c in charts] + [""]
    if delta_rows:
        lines += [f"Per-class IoU, head minus {baseline} (percentage points, means over seeds):", "", *delta_rows, ""]
    if pictures:
        lines += ["Attention at the same pixels of the first validation image (seed 0's model):", ""]
        lines += [f"![{os.path.basename(p)}]({os.path.relpath(p, rdir)})" for p in pictures] + [""]
    if notes or errors:
        lines += [notes] if notes else []
        lines += [f"- launch error: {e}" for e in errors]
        lines += [""]
    path = os.path.join(rdir, "README.md")
    write_atomic(path, "\n".join(lines))
    return path


def draw_charts(rdir: str, heads: list[str], baseline: str, stats: dict, classes: list[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from benchmarks.common import save_figure

    shown = [h for h in heads if h in stats]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(shown), 3.2))
    means = [100 * stats[h]["mIoU"].mean for h in shown]
    cis = [stats[h]["mIoU"].half_width for h in shown]
    errs = [0.0 if math.isnan(v) else 100 * v for v in cis]
    ax.bar(range(len(shown)), means, yerr=errs, capsize=6, color=["#999999" if h == baseline else "#4477aa" for h in shown])
    for i, h in enumerate(shown):
        vals = [100 * v for v in stats[h]["values"] if v is not None]
        ax.plot([i] * len(vals), vals, "k.", ms=5)
        ax.annotate(f"n={stats[h]['n']}", (i, 0), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8,
                    color="white")
    ax.set_xticks(range(len(shown)), shown)
    ax.set_ylabel("val mIoU % (mean, 95 % CI, dots: seeds)")
    ax.set_title("mIoU per head")
    files = [os.path.basename(save_figure(fig, os.path.join(rdir, "miou.png")))]
    plt.close(fig)

    others = [h for h in shown if h != baseline]
    if baseline in stats and others and classes:
        delta = np.array([[100 * (stats[h]["IoU"][k].mean - stats[baseline]["IoU"][k].mean) for k in classes]
                          for h in others])
        lim = max(1.0, float(np.nanmax(np.abs(delta))) if np.isfinite(delta).any() else 1.0)
        fig, ax = plt.subplots(figsize=(1.5 + 0.45 * len(classes), 1.2 + 0.45 * len(others)))
        im = ax.imshow(np.ma.masked_invalid(delta), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        for (i, j), v in np.ndenumerate(delta):
            if np.isfinite(v):
                ax.text(j, i, f"{v:+.0f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(others)), others)
        ax.set_title(f"per-class IoU minus {baseline} (points)")
        fig.colorbar(im, ax=ax, fraction=0.03)
        files.append(os.path.basename(save_figure(fig, os.path.join(rdir, "class_iou_delta.png"))))
        plt.close(fig)
    return files


def draw_attention(out: str, rdir: str, heads: list[str], seeds: list[int], n_points: int) -> list[str]:
    """scripts/attention_pictures.py's pictures of each head's first seed, at the same pixels."""
    import attention_pictures

    from segattn.data import build_dataset
    from segattn.engine.checkpoint import load_checkpoint

    written, points = [], None
    for h in heads:
        ckpt_dir = os.path.join(run_dir(out, h, seeds[0]), "checkpoints")
        ckpt = next((os.path.join(ckpt_dir, n) for n in ("best.pt", "last.pt")
                     if os.path.isfile(os.path.join(ckpt_dir, n))), None)
        if ckpt is None:
            continue
        if points is None:  # the pixels come from the first validation label, the same for every head
            d = load_checkpoint(ckpt)["config"]["dataset"]
            val = build_dataset(d["name"], d["root"], d.get("val_split", "val"),
                                **{k: v for k, v in d.items() if k not in ("name", "root")})
            points = attention_pictures.pick_points(val[0]["mask"].numpy(), n_points)
        written += attention_pictures.draw(ckpt, os.path.join(rdir, "attention"), points, n_points, 128, 0.5)
    return written


def main(argv=None) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return ""
    settings, overrides = parse(argv)
    out, heads, seeds = settings["out"], settings["heads"], settings["seeds"]
    created = not os.path.exists(out)
    os.makedirs(out, exist_ok=True)
    check_same_study(out, heads, seeds, overrides)
    errors = launch(out, heads, seeds, overrides)
    rows = summarize_sweep.collect(os.path.join(out, "runs")) if os.path.isdir(os.path.join(out, "runs")) else []
    done = [r for r in rows if r["status"] == "done"]
    if not done:
        if created:  # nothing to collect or continue: leave no folder behind
            shutil.rmtree(out, ignore_errors=True)
            if os.path.dirname(out) == "studies":  # the default folder's parent, only when empty
                with contextlib.suppress(OSError):
                    os.rmdir("studies")
        raise SystemExit(f"study.py: no run of {out} finished; see the errors above")
    num_classes = len(done[0]["IoU"])
    cost = costs(heads, overrides, num_classes, settings["speed_steps"])
    path = report(out, heads, seeds, settings["baseline"], overrides, cost, errors, settings["points"])
    print(f"study report: {path}")
    return path


if __name__ == "__main__":
    main()
