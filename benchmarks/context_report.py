"""The context suite's report: per task and head, the mean over seeds with a 95 % confidence interval,
Welch's p against the FCN, a heat map heads x tasks and a chart of the intervals (``context.py``)."""

from __future__ import annotations

import json
import math
import os

from benchmarks import common
from benchmarks import context_tasks as tasks
from segattn.stats import fisher_p, mean_ci, p_text, welch_p, wilson_ci

ALPHA = 0.05
# Some committed cells of 2026-12-03 come from the code before commit 041931a: its pre-flight disk check built
# the model on the meta device, failed there (the residual scales read values) and built real weights after
# the run was seeded, which shifted every later random draw. The cells cached then were kept (a cell's key has
# no code version). Training a cell after others in one process changes nothing (tests/test_sweep_order.py).
# Empty once a full run has retrained them.
REPRO_NOTE = ("Some committed cells were trained by the code before commit 041931a, whose start-up check drew "
              "from the seeded random generator (it built the model's weights once more): a rerun differs from "
              "them (FCN, which_marker, seed 1: mIoU 70.39 committed, 70.89 rerun; that code reproduces 70.39 "
              "exactly), a draw from the same seed spread; a full rerun (`--force`) replaces them. A cell trained "
              "after others in one process equals the same cell alone.")


def t_quantile(n: int) -> float:
    """Student's t at 97.5 % with n - 1 degrees of freedom: the 95 % interval's half width in standard errors."""
    from scipy import stats

    return float(stats.t.ppf(0.975, max(n - 1, 1)))


def family(head: str) -> str:
    """The survey's taxonomy of a head's mechanism: weights / applied / domain."""
    from segattn.models.attention import ATTENTIONS

    if head not in ATTENTIONS:
        return "— (convolutions only)"
    t = ATTENTIONS[head].taxonomy
    return f"{t['weights']} / {t['applied']} / {t['domain']}"


def cue_threshold(cells: list[dict], task: str) -> float:
    """The rule for "this seed reads the cue" on ``task``: its object mIoU lies above the upper end of
    the FCN's 95 % prediction interval on that task, where a new FCN seed would fall with probability
    0.95 (mean + t * sd * sqrt(1 + 1/n); the FCN cannot see the cue). The interval of the FCN's *mean* would
    be the wrong yardstick for a single seed: it shrinks with the FCN's seeds while one seed's spread does
    not. NaN with fewer than two FCN seeds."""
    ci = mean_ci([c["object_mIoU"] for c in cells if c["task"] == task and c["head"] == "fcn"])
    return ci.mean + ci.half_width * math.sqrt(ci.n + 1) if ci.n > 1 else math.nan


def reads_cue(cell: dict, threshold: float) -> bool | None:
    """Whether ``cell`` (one seed) reads the cue by :func:`cue_threshold`'s rule; None without a threshold."""
    if math.isnan(threshold) or cell["object_mIoU"] is None:
        return None
    return bool(cell["object_mIoU"] > threshold)


def summarize(cells: list[dict], baseline: list[dict] | None = None) -> dict[tuple[str, str], dict]:
    """(task, head) -> intervals of object mIoU / recall / mIoU, Welch p of object mIoU against the FCN,
    the verdict, the success rate (seeds that read the cue, k of n with Wilson's 95 % interval), mean
    seconds and the head's parameters. The FCN's cells come from ``cells`` or, when given, ``baseline``."""
    by = {}
    for c in cells:
        by.setdefault((c["task"], c["head"]), []).append(c)
    fcn = {}
    for c in (baseline if baseline is not None else cells):
        if c["head"] == "fcn":
            fcn.setdefault(c["task"], []).append(c)
    out = {}
    for (task, head), group in by.items():
        base = fcn.get(task, [])
        threshold = cue_threshold(base, task)
        flags = [reads_cue(c, threshold) for c in group]
        known = [f for f in flags if f is not None]
        obj = [c["object_mIoU"] for c in group]
        p = math.nan if head == "fcn" else welch_p(obj, [c["object_mIoU"] for c in base])
        ci = mean_ci(obj)
        base_ci = mean_ci([c["object_mIoU"] for c in base])
        if head == "fcn" or math.isnan(p):
            verdict = "baseline" if head == "fcn" else "—"
        elif p < ALPHA:
            verdict = "reads the cue" if ci.mean > base_ci.mean else "below the FCN"
        else:
            verdict = "indistinguishable from the FCN"
        out[(task, head)] = {
            "object_mIoU": ci, "object_recall": mean_ci([c["object_recall"] for c in group]),
            "mIoU": mean_ci([c["mIoU"] for c in group]), "p": p, "verdict": verdict,
            "delta": ci.mean - base_ci.mean if base else math.nan, "threshold": threshold,
            "rate": wilson_ci(sum(known), len(known)),
            "seconds": sum(c["seconds"] for c in group) / len(group), "head_params": group[0]["head_params"],
        }
    return out


def task_table(task: str, heads: list[str], summary: dict) -> str:
    rows = []
    for head in heads:
        r = summary[(task, head)]
        delta = "" if head == "fcn" else f"{100 * r['delta']:+.1f}"
        rows.append([f"`{head}`", family(head), common.fmt(r["head_params"] / 1e3, 1), r["object_mIoU"].text(),
                     r["rate"].text(), r["object_recall"].text(), delta, p_text(r["p"]), r["verdict"],
                     r["mIoU"].text(), common.fmt(r["seconds"], 0)])
    return common.markdown_table(
        ["head", "weights / applied / domain", "head params (k)", "object mIoU % (95 % CI, n)",
         "reads the cue: seeds (Wilson 95 %)", "object recall %", "vs fcn", "Welch p", "verdict (p < 0.05)",
         "mIoU %", "train s"], rows)


def residual_scale_table(cells: list[dict], heads: list[str], task_list: list[str], start: float = 0.0) -> str:
    """Final value of each zero-initialised residual scale, mean over seeds, per task."""
    rows = []
    for head in heads:
        names = sorted({n for c in cells if c["head"] == head for n in c["residual_scales"]})
        for name in names:
            vals = []
            for task in task_list:
                xs = [c["residual_scales"][name] for c in cells if c["head"] == head and c["task"] == task]
                ci = mean_ci(xs)
                vals.append("—" if not xs else f"{ci.mean:.3g}" + ("" if math.isnan(ci.half_width)
                                                                   else f" ± {ci.half_width:.2g}"))
            rows.append([f"`{head}`", f"`{name}`", *vals])
    return common.markdown_table(["head", f"residual scale (start {start:g})", *task_list], rows) if rows else ""


def write_csv(path: str, cells: list[dict], summary: dict) -> str:
    keys = ["task", "head", "seed", "mIoU", "object_mIoU", "object_recall", "IoU_car", "IoU_truck", "IoU_road",
            "IoU_traffic light", "IoU_traffic sign", "head_params", "seconds"]
    extra = ["object_mIoU_mean", "object_mIoU_ci95", "object_recall_mean", "object_recall_ci95", "n",
             "welch_p_vs_fcn", "verdict", "reads_cue", "cue_threshold", "reads_k", "reads_n", "reads_rate",
             "reads_wilson_low", "reads_wilson_high", "residual_scales"]
    rows = []
    for c in cells:
        r = summary[(c["task"], c["head"])]
        rate = r["rate"]
        flag = reads_cue(c, r["threshold"])
        rows.append([c[k] for k in keys] + [r["object_mIoU"].mean, r["object_mIoU"].half_width,
                                            r["object_recall"].mean, r["object_recall"].half_width,
                                            r["object_mIoU"].n, r["p"], r["verdict"],
                                            "" if flag is None else int(flag), r["threshold"], rate.k, rate.n,
                                            rate.k / rate.n if rate.n else math.nan, rate.low, rate.high,
                                            json.dumps(c["residual_scales"], sort_keys=True)])
    return common.write_csv(path, keys + extra, rows)


def heatmap(path: str, heads: list[str], task_list: list[str], summary: dict) -> str:
    """Two maps side by side: object mIoU (mean over seeds) and the success rate (seeds that read the
    cue, k/n written in each cell)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.array([[100 * summary[(t, h)]["object_mIoU"].mean for t in task_list] for h in heads])
    rates = np.array([[100 * summary[(t, h)]["rate"].k / summary[(t, h)]["rate"].n if summary[(t, h)]["rate"].n
                       else np.nan for t in task_list] for h in heads])
    fig, axes = plt.subplots(1, 2, figsize=(2 * (1.6 + 1.5 * len(task_list)), 0.9 + 0.3 * len(heads)))
    for ax, grid, title in ((axes[0], values, "object mIoU %, mean over seeds\n(* above the FCN, Welch p < 0.05)"),
                            (axes[1], rates, "seeds that read the cue (k/n)\n(object mIoU above the FCN's 95 % prediction interval)")):
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        ax.set_xticks(range(len(task_list)), task_list)
        ax.set_yticks(range(len(heads)), heads)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    for i, h in enumerate(heads):
        for j, t in enumerate(task_list):
            r = summary[(t, h)]
            star = "*" if r["verdict"] == "reads the cue" else ""
            axes[0].text(j, i, f"{values[i, j]:.0f}{star}", ha="center", va="center", fontsize=8,
                         color="black" if values[i, j] > 60 else "white")
            rate = r["rate"]
            axes[1].text(j, i, f"{rate.k}/{rate.n}" if rate.n else "—", ha="center", va="center", fontsize=8,
                         color="black" if rate.n and rate.k / rate.n > 0.6 else "white")
    fig.tight_layout()
    try:
        return common.save_figure(fig, path)
    finally:
        plt.close(fig)


def interval_chart(path: str, heads: list[str], task_list: list[str], summary: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(task_list), figsize=(3.6 * len(task_list), 0.9 + 0.28 * len(heads)),
                             sharey=True, squeeze=False)
    ys = list(range(len(heads)))[::-1]
    for ax, task in zip(axes[0], task_list):
        base = summary[(task, "fcn")]["object_mIoU"]
        if base.n > 1 and not math.isnan(base.half_width):
            ax.axvspan(100 * (base.mean - base.half_width), 100 * (base.mean + base.half_width), color="0.85",
                       label="FCN's 95 % CI")
        for y, head in zip(ys, heads):
            r = summary[(task, head)]
            ci = r["object_mIoU"]
            err = 0 if math.isnan(ci.half_width) else 100 * ci.half_width
            colour = {"reads the cue": "tab:green", "below the FCN": "tab:red"}.get(r["verdict"], "tab:gray")
            ax.errorbar(100 * ci.mean, y, xerr=err, fmt="o", color=colour, capsize=3, markersize=4)
        ax.set_title(task, fontsize=10)
        ax.set_xlim(0, 100)
        ax.set_xlabel("object mIoU % (95 % CI)")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(ys, heads)
    axes[0][0].legend(loc="lower right", fontsize=7)
    fig.suptitle("green: above the FCN (Welch p < 0.05), red: below, grey: indistinguishable", fontsize=9)
    fig.tight_layout()
    try:
        return common.save_figure(fig, path)
    finally:
        plt.close(fig)


def _ci_rate(r: dict | None) -> list[str]:
    return ["—", "—"] if r is None else [r["object_mIoU"].text(), r["rate"].text()]


def zero_start_section(cells: list[dict], variants: dict, task_list: list[str]) -> list[str]:
    """The zero-start experiment: the heads with zero-initialised residual scales, started at the papers'
    0 (``cells``) and at ``model.residual_init`` (``variants``: value -> records), against the same FCN."""
    lines = []
    base = summarize(cells)
    for value, vcells in sorted(variants.items()):
        heads = list(dict.fromkeys(c["head"] for c in vcells))
        other = summarize(vcells, baseline=cells)
        rows = []
        for task in task_list:
            for head in heads:
                a, b = base.get((task, head)), other.get((task, head))
                if b is None:
                    continue
                p = welch_p([c["object_mIoU"] for c in cells if c["task"] == task and c["head"] == head],
                            [c["object_mIoU"] for c in vcells if c["task"] == task and c["head"] == head])
                fp = fisher_p(a["rate"].k, a["rate"].n, b["rate"].k, b["rate"].n) if a else math.nan
                rows.append([task, f"`{head}`", *_ci_rate(a), *_ci_rate(b), p_text(p), p_text(fp)])
        lines += [f"## The zero start: residual scales started at {value:g} instead of 0", "",
                  "The same cells with `model.residual_init=" + f"{value:g}" + "`: DANet's and CCNet's gamma, the "
                  "Non-local block's output BN scale and the other zero-initialised residual scales start at "
                  f"{value:g} (a convolution's weight, GCNet's last one, from N(0, ({value:g}/sqrt(fan in))^2)), "
                  "everything else as above; \"reads the cue\" against the same FCN. Welch p: the two starts' "
                  "object mIoU; Fisher p: Fisher's exact test of their success rates (two-sided).", "",
                  common.markdown_table(["task", "head", "object mIoU %, start 0", "reads the cue, start 0",
                                         f"object mIoU %, start {value:g}", f"reads the cue, start {value:g}",
                                         "Welch p", "Fisher p"], rows), ""]
        scales = residual_scale_table(vcells, heads, task_list, value)
        if scales:
            lines += [f"Residual scales at the end of training, start {value:g}:", "", scales, ""]
    return lines


def seeds_verdict(rate) -> str:
    """A success rate in words: the cue read in every seed, in some or in none ("—" without seeds)."""
    if rate.n == 0:
        return "—"
    return "every seed" if rate.k == rate.n else "no seed" if rate.k == 0 else "some seeds"


def budget_verdict(rates: list) -> str:
    """Whether the verdict of :func:`seeds_verdict` holds over the budgets (``rates`` in order of iterations):
    ``"holds: every seed"``, or ``"changes: some seeds → every seed"`` with each verdict as it changed."""
    words = [seeds_verdict(r) for r in rates if r.n]
    if len(words) < 2:
        return "—"  # one budget says nothing about the budget
    steps = [w for k, w in enumerate(words) if k == 0 or w != words[k - 1]]
    return f"holds: {words[0]}" if len(steps) == 1 else "changes: " + " → ".join(steps)


def budget_section(by_iters: dict[int, list[dict]], task_list: list[str], out: str) -> tuple[list[str], list[str]]:
    """Longer budgets: per task and head, object mIoU and the success rate at each number of iterations
    (each budget against its own FCN), and a picture per task of object mIoU against iterations."""
    iters = sorted(by_iters)
    summaries = {it: summarize(by_iters[it]) for it in iters}
    heads = list(dict.fromkeys(c["head"] for it in iters for c in by_iters[it]
                               if all((c["task"], c["head"]) in summaries[j] for j in iters)))
    lines = ["## Longer budgets", "",
             "The same cells trained for more iterations (`--budget`: the schedule, validation and everything "
             "else scale with them); at each budget a seed reads the cue when its object mIoU is above that "
             "budget's FCN interval.", "", "![object mIoU against iterations](context_budget.png)", ""]
    lines += [f"*With the budget*: whether a head reads the cue in every seed, in some or in none at each budget, "
              f"and whether that verdict holds from {iters[0]} to {iters[-1]} iterations; Fisher p: Fisher's exact "
              f"test of the success rates at {iters[0]} and {iters[-1]} iterations (two-sided).", ""]
    for task in task_list:
        rows = []
        for head in heads:
            row = [f"`{head}`"]
            for it in iters:
                row += _ci_rate(summaries[it].get((task, head)))
            rates = [summaries[it][(task, head)]["rate"] for it in iters if (task, head) in summaries[it]
                     and summaries[it][(task, head)]["rate"].n]
            row += [budget_verdict(rates), p_text(fisher_p(rates[0].k, rates[0].n, rates[-1].k, rates[-1].n))
                    if len(rates) > 1 and head != "fcn" else "—"]
            rows.append(row)
        lines += [f"### {task}", "", common.markdown_table(
            ["head", *[f"{label}, {it} it." for it in iters for label in ("object mIoU %", "reads the cue")],
             "with the budget", "Fisher p"], rows), ""]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(task_list), figsize=(4.2 * len(task_list), 3.6), sharey=True, squeeze=False)
    for ax, task in zip(axes[0], task_list):
        for k, head in enumerate(heads):
            pts = [(it, summaries[it][(task, head)]["object_mIoU"]) for it in iters if (task, head) in summaries[it]]
            xs = [it * (1 + 0.02 * (k - len(heads) / 2)) for it, _ in pts]  # a little apart, to see each bar
            ax.errorbar(xs, [100 * ci.mean for _, ci in pts],
                        yerr=[0 if math.isnan(ci.half_width) else 100 * ci.half_width for _, ci in pts],
                        marker="o", markersize=3, capsize=2, label=head, linestyle="-" if head != "fcn" else "--",
                        color="black" if head == "fcn" else None)
        ax.set_xscale("log")
        ax.set_xticks(iters, [str(i) for i in iters])
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("iterations")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("object mIoU % (95 % CI)")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    try:
        path = common.save_figure(fig, os.path.join(out, "context_budget.png"))
    finally:
        plt.close(fig)
    return lines, [path]


def open_summary(summary: dict, max_seeds: int = 8, width: float = 0.10) -> str:
    """How many (task, head) cells are still open: interval wider than +-``width`` with fewer than
    ``max_seeds`` seeds."""
    open_ = [k for k, r in summary.items() if r["object_mIoU"].n < max_seeds
             and (math.isnan(r["object_mIoU"].half_width) or r["object_mIoU"].half_width > width)]
    return (f"{len(open_)} of the {len(summary)} (task, head) cells are open (95 % interval of object mIoU wider "
            f"than ±{100 * width:.0f} points with fewer than {max_seeds} seeds)"
            + (": " + ", ".join(f"{t} `{h}`" for t, h in sorted(open_)) if 0 < len(open_) <= 40 else "") + ".")


def write(cells: list[dict], args, info: dict, out: str, variants: dict | None = None) -> list[str]:
    os.makedirs(out, exist_ok=True)
    task_list = list(dict.fromkeys(c["task"] for c in cells))
    heads = list(dict.fromkeys(c["head"] for c in cells))
    summary = summarize(cells)
    h, w = info["size"]
    probes = {t: tasks.global_probe_accuracy(t, h, w, info["x0"], n=100 if info["quick"] else 400) for t in task_list}
    cmd = "python benchmarks/context.py" + (" --quick" if info["quick"] else "")
    cpu_s = sum(c["seconds"] for c in cells)
    min_n = min((r["object_mIoU"].n for r in summary.values()), default=0)
    lines = [
        "# What attention buys: the context suite",
        "",
        f"Produced by `{cmd}` on: {common.machine_line('cpu')}. {len(cells)} cells ({len(task_list)} tasks x "
        f"{len(heads)} heads x seeds {', '.join(map(str, info['seeds']))}); the cells' training times add up to "
        f"{cpu_s / 60:.0f} minutes, measured while they ran {info['jobs']} at a time, one thread each, on cores "
        f"shared with other work (this run trained {info['trained']} cells in {info['wall_s'] / 60:.1f} min; the "
        "others came from `results/context_cells/`).",
        "",
        f"**Tasks** (`benchmarks/context_tasks.py`): images of {h}x{w} in the Cityscapes layout, "
        f"{args.train_images} for training and {args.val_images} for validation per task; the cue lies in the "
        f"far zone (columns 0-{tasks.FAR - 1}), the objects from column {info['x0']} on. The receptive field of "
        f"ResNet-18-D8 + FCN reaches {info['radius']} columns, so the gradient of every object pixel's FCN logits "
        "with respect to every cue pixel is exactly zero (tests/test_context_suite.py checks it on each task). "
        "All objects look alike; guessing gives them about 50 % recall.",
        "",
    ]
    for t in task_list:
        lines.append(f"- `{t}`: {tasks.DESCRIPTIONS[t]}. A linear probe on globally pooled pixels "
                     f"(each channel's mean and std) predicts the objects' class with {100 * probes[t]:.0f} % "
                     "accuracy on held-out images.")
    lines += [
        "",
        f"**Training**, the same for every cell: the trainer of train.py, ResNet-18-D8 of width {args.width} from "
        f"scratch, head width {args.channels} with each head's conf/head hyper-parameters, auxiliary FCN head, "
        f"`model.init={args.init}` (PyTorch's default start for the heads' convolutions: from mmseg's start, "
        "N(0, 0.01) classifiers, no head learns to read a far cue in a few hundred iterations from scratch, which "
        f"would measure the start instead of the heads), AdamW lr {args.lr}, {info.get('settings', {}).get('iters', args.iters)} iterations of batch "
        f"{args.batch}, whole images without augmentation. Validation: whole images.",
        "",
        "**Statistics**: object mIoU is the mean IoU of car and truck; each cell of the tables is the mean over "
        "seeds with the half width of its 95 % confidence interval (Student t, n - 1 degrees of freedom) and n. "
        "Welch p: two-sided Welch's t-test of the head's object mIoU against the FCN's on the same task; "
        f"'reads the cue' means above the FCN with p < {ALPHA}. With {min_n} seeds an interval is wide "
        f"(t = {t_quantile(min_n):.2f}): "
        "'indistinguishable' means these runs cannot tell, not that the heads are equal.",
        "",
        "**Success rate**: a head that switches its long-range branch on in some seeds and not in others has a "
        "wide interval and no verdict, so each seed is also judged alone: it *reads the cue* when its object "
        "mIoU lies above the upper end of the FCN's 95 % prediction interval on that task, where a new FCN seed "
        "would fall with probability 0.95 (mean + t sd sqrt(1 + 1/n); the FCN cannot see the cue): "
        + ", ".join(f"{t} {100 * cue_threshold(cells, t):.1f}" for t in task_list) + " % object mIoU. "
        "The tables give k of n seeds with the Wilson 95 % interval of the rate. `--settle` adds seeds to every "
        f"open cell (interval wider than ±10 points) until it closes or has 8. {open_summary(summary)}",
        "",
        "**Reproducibility**: each cell trains in a fresh process with one thread, so on this machine type a rerun "
        "of a cell (`--tasks T --heads H --seeds S --force`) gives the same numbers to the last digit (two fresh "
        "runs of a cell agree exactly). " + (REPRO_NOTE if info.get("full") else ""),
        "",
        "![heads x tasks](context.png)",
        "",
        "![intervals](context_ci.png)",
        "",
    ]
    for t in task_list:
        lines += [f"## {t}", "", tasks.DESCRIPTIONS[t][0].upper() + tasks.DESCRIPTIONS[t][1:] + ".", "",
                  task_table(t, heads, summary), ""]
    scales = residual_scale_table(cells, heads, task_list)
    if scales:
        lines += ["## Residual scales at the end of training", "",
                  "The zero-initialised scales that decide how much each attention branch adds to its input "
                  "(scalars: their value; tensors: their root mean square), mean ± 95 % CI over seeds. Training "
                  "logs them as `train/gamma/<parameter>` in TensorBoard.", "", scales, ""]
    variants = variants or {}
    figures = []
    if variants.get("residual_init"):
        lines += zero_start_section(cells, variants["residual_init"], task_list)
    if len(variants.get("budgets") or {}) > 1:  # iterations -> records, the default budget's included
        more, figures = budget_section(variants["budgets"], task_list, out)
        lines += more
    paths = [common.write_atomic(os.path.join(out, "context.md"), "\n".join(lines)), *figures]
    paths.append(write_csv(os.path.join(out, "context.csv"), cells, summary))
    paths.append(heatmap(os.path.join(out, "context.png"), heads, task_list, summary))
    paths.append(interval_chart(os.path.join(out, "context_ci.png"), heads, task_list, summary))
    return paths


def placement(cells: list[dict], known: list[dict], mine: list[str], task_list: list[str], out: str,
              info: dict) -> str:
    """``placement.md``: each plugin head's rows (``mine``) against the built-in heads' cells of the same
    settings (``known``: the committed ones for the suite's settings): its interval of object mIoU, success
    rate and Welch p against the FCN, and the built-in head of the same taxonomy nearest to it."""
    from segattn.models.attention import ATTENTIONS

    fcn = [c for c in cells + known if c["head"] == "fcn"]
    fcn = list({(c["task"], c["seed"]): c for c in fcn}.values())
    ours = summarize([c for c in cells if c["head"] in mine], fcn)
    theirs = summarize([c for c in known if c["head"] not in mine], fcn)

    def taxonomy(head):
        return getattr(ATTENTIONS.get(head), "taxonomy", None)

    lines = [f"# Your heads in the context suite: {', '.join(f'`{h}`' for h in mine)}", "",
             f"Trained with the suite's settings ({info['settings']['iters']} iterations, seeds "
             f"{', '.join(map(str, info['seeds']))}), each cell in a fresh one-thread process; placed against "
             f"{len({c['head'] for c in known})} built-in heads' cells of the same settings "
             f"({len(known)} cells{', the committed ones' if not info.get('quick') else ''}). A seed reads the "
             "cue when its object mIoU lies above the FCN's 95 % prediction interval on that task.", "",
             "| head | task | taxonomy | object mIoU (95 % CI, n) | reads the cue | Welch p vs FCN | verdict | "
             "nearest built-in head of its taxonomy |", "|---|---|---|---|---|---|---|---|"]
    for head in mine:
        t = taxonomy(head)
        family_text = f"{t['weights']} / {t['applied']} / {t['domain']}" if t else "not declared"
        for task in task_list:
            r = ours.get((task, head))
            if r is None:
                continue
            peers = [(h, v) for (tk, h), v in theirs.items() if tk == task and h != "fcn"
                     and (t is None or taxonomy(h) == t)]
            if peers:
                near, v = min(peers, key=lambda hv: abs(hv[1]["object_mIoU"].mean - r["object_mIoU"].mean))
                nearest = f"`{near}` {v['object_mIoU'].text()}, {v['rate'].text()}"
            else:
                nearest = "none with cells at these settings"
            lines.append(f"| `{head}` | {task} | {family_text} | {r['object_mIoU'].text()} | {r['rate'].text()} | "
                         f"{p_text(r['p'])} | {r['verdict']} | {nearest} |")
    os.makedirs(out, exist_ok=True)
    return common.write_atomic(os.path.join(out, "placement.md"), "\n".join(lines) + "\n")
