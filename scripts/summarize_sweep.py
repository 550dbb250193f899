"""Collect the runs under a folder into seed-averaged tables: mean ± 95 % confidence interval (n) per configuration.

    python scripts/summarize_sweep.py multirun/2026-11-25/12-00-00              # Markdown tables
    python scripts/summarize_sweep.py multirun/2026-11-25/12-00-00 --csv > table.csv
    python scripts/summarize_sweep.py multirun/2026-11-25/12-00-00 --csv table.csv   # tables, and the CSV
    python scripts/summarize_sweep.py multirun/2026-11-25/12-00-00 --runs         # one row per run instead

A run is a folder holding ``metrics.json`` or ``.hydra/overrides.yaml`` (what train.py writes). Runs are
grouped by their overrides minus ``seed`` (and ``resume``, which does not change what is learnt): each
group gets mIoU, mAcc, aAcc and every class IoU over its finished runs as ``mean ± h (n)``: the mean,
the half width h of its 95 % confidence interval (Student t, n - 1 degrees of freedom: segattn.stats,
the convention of scripts/study.py's report; no ± for n = 1) and the number of runs n. Every number
is a percentage with two decimals, in the Markdown tables and in the CSV alike (the CSV holds the same
rounded values in a mean column and a half-width column each).

Runs that did not count are listed under the tables with the reason: no ``metrics.json`` (it failed,
or stopped before its first validation) or a ``metrics.json`` from before ``trainer.max_iters`` (it was
stopped, is still running, or was interrupted; ``resume=auto`` continues it).
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import math
import os
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from segattn.stats import Interval, mean_ci  # noqa: E402

METRICS = ("mIoU", "mAcc", "aAcc")
NOT_A_SETTING = ("seed", "resume")  # overrides that do not make another configuration


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _load_yaml(path: str):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return yaml.safe_load(f)


def collect(root: str) -> list[dict]:
    """One dict per run below ``root``: ``run`` (its folder, relative), ``overrides`` (space-joined),
    ``group`` (the overrides minus seed and resume), ``seed``, ``status`` (``done``, ``unfinished``,
    ``failed``), ``reason``, ``iter``, ``max_iters``, ``mIoU`` / ``mAcc`` / ``aAcc`` (fractions, None
    when missing) and ``IoU`` (class name -> fraction or None)."""
    folders = {os.path.dirname(p) for p in glob.glob(os.path.join(root, "**", "metrics.json"), recursive=True)}
    folders |= {os.path.dirname(os.path.dirname(p))
                for p in glob.glob(os.path.join(root, "**", ".hydra", "overrides.yaml"), recursive=True)}
    rows = []
    for run in sorted(folders):
        overrides = [str(o) for o in (_load_yaml(os.path.join(run, ".hydra", "overrides.yaml")) or [])]
        config = _load_yaml(os.path.join(run, ".hydra", "config.yaml")) or {}
        seed = next((o.split("=", 1)[1] for o in overrides if _override_key(o) == "seed"), config.get("seed", 0))
        max_iters = (config.get("trainer") or {}).get("max_iters")
        row = {"run": os.path.relpath(run, root), "overrides": " ".join(overrides),
               "group": " ".join(o for o in overrides if _override_key(o) not in NOT_A_SETTING),
               "seed": str(seed), "max_iters": max_iters, "iter": None, "IoU": {}, **{k: None for k in METRICS}}
        metrics_path = os.path.join(run, "metrics.json")
        if not os.path.isfile(metrics_path):
            row.update(status="failed", reason="no metrics.json (it failed, or stopped before its first validation)")
        else:
            with open(metrics_path) as f:
                m = json.load(f)
            row.update({k: m.get(k) for k in METRICS}, iter=m.get("iter"), IoU=dict(m.get("IoU") or {}))
            if max_iters is not None and row["iter"] is not None and int(row["iter"]) < int(max_iters):
                row.update(status="unfinished", reason=f"metrics.json of iteration {row['iter']} of {max_iters} "
                                                       f"(stopped or still running; resume=auto continues it)")
            else:
                row.update(status="done", reason="")
        rows.append(row)
    return rows


def aggregate(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """(groups, class names). Each group: ``group``, ``n``, ``seeds``, ``runs``, ``<metric>`` = segattn.stats's
    Interval (mean, 95 % CI half width, n) as fractions for mIoU, mAcc, aAcc, and ``IoU`` = {class: Interval},
    over its ``done`` runs (a class missing from a run counts in its n only where present)."""
    classes: list[str] = []
    for r in rows:
        classes += [c for c in r["IoU"] if c not in classes]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["status"] == "done":
            groups.setdefault(r["group"], []).append(r)
    out = []
    for name, runs in groups.items():
        g = {"group": name, "n": len(runs), "seeds": sorted({r["seed"] for r in runs}, key=_seed_order),
             "runs": [r["run"] for r in runs]}
        g.update({k: mean_ci([r[k] for r in runs]) for k in METRICS})
        g["IoU"] = {c: mean_ci([r["IoU"].get(c) for r in runs]) for c in classes}
        out.append(g)
    return out, classes


def _seed_order(seed: str):
    return (0, int(seed)) if str(seed).lstrip("-").isdigit() else (1, str(seed))


def pct(v) -> str:
    """A fraction as a percentage with two decimals ('' when missing): the one formatting of every number."""
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def pm(interval: Interval) -> str:
    """``mean ± h (n)`` in percent: h the half width of the 95 % confidence interval (none for n = 1)."""
    return interval.text(digits=2)


def sort_groups(groups: list[dict], key: str = "mIoU") -> list[dict]:
    if key == "run":
        return sorted(groups, key=lambda g: g["group"])
    return sorted(groups, key=lambda g: (g[key].n == 0, -(g[key].mean if g[key].n else 0)))


def markdown_groups(groups: list[dict], classes: list[str]) -> str:
    """The seed-averaged table, then the per-class IoU table (mean ± 95 % CI half width (n), %)."""
    lines = ["| overrides (minus seed) | n | seeds | mIoU % (95 % CI, n) | mAcc % (95 % CI, n) | aAcc % (95 % CI, n) |",
             "|---|---:|---|---:|---:|---:|"]
    lines += [f"| {g['group'] or '(defaults)'} | {g['n']} | {','.join(g['seeds'])} | {pm(g['mIoU'])} | "
              f"{pm(g['mAcc'])} | {pm(g['aAcc'])} |" for g in groups]
    if classes:
        lines += ["", "Per-class IoU % (mean over seeds ± 95 % CI half width (n)):", "",
                  "| overrides (minus seed) | " + " | ".join(classes) + " |",
                  "|---|" + "---:|" * len(classes)]
        lines += [f"| {g['group'] or '(defaults)'} | " + " | ".join(pm(g["IoU"][c]) for c in classes) + " |"
                  for g in groups]
    return "\n".join(lines)


def not_counted(rows: list[dict]) -> str:
    """The runs left out of the means, one line each with the reason ('' when all counted)."""
    bad = [r for r in rows if r["status"] != "done"]
    if not bad:
        return ""
    return "\n".join([f"Not counted ({len(bad)} of {len(rows)} runs):"] +
                     [f"- {r['run']} ({r['overrides'] or 'defaults'}): {r['status']}: {r['reason']}" for r in bad])


def group_csv_rows(groups: list[dict], classes: list[str]) -> tuple[list[str], list[list[str]]]:
    headers = ["overrides", "n", "seeds"]
    for k in (*METRICS, *(f"IoU {c}" for c in classes)):
        headers += [f"{k} mean %", f"{k} 95% CI half width %"]
    rows = []
    for g in groups:
        row = [g["group"], str(g["n"]), " ".join(g["seeds"])]
        for ci in [g[k] for k in METRICS] + [g["IoU"][c] for c in classes]:
            row += [pct(ci.mean), pct(ci.half_width)]
        rows.append(row)
    return headers, rows


def markdown(rows: list[dict]) -> str:
    """One row per run (``--runs``): overrides, status, mIoU / mAcc / aAcc %, the iteration."""
    lines = ["| run | overrides | status | mIoU % | mAcc % | aAcc % | iter |", "|---|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['run']} | {r['overrides']} | {r['status']} | {pct(r['mIoU'])} | {pct(r['mAcc'])} | "
              f"{pct(r['aAcc'])} | {'' if r['iter'] is None else r['iter']} |" for r in rows]
    return "\n".join(lines)


def run_csv_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    headers = ["run", "overrides", "seed", "status", "mIoU %", "mAcc %", "aAcc %", "iter"]
    return headers, [[r["run"], r["overrides"], r["seed"], r["status"], pct(r["mIoU"]), pct(r["mAcc"]),
                      pct(r["aAcc"]), "" if r["iter"] is None else str(r["iter"])] for r in rows]


def csv_text(headers: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(headers)
    w.writerows(rows)
    return buf.getvalue()


def sort_runs(rows: list[dict], key: str) -> list[dict]:
    if key == "run":
        return sorted(rows, key=lambda r: r["run"])
    return sorted(rows, key=lambda r: (r[key] is None, -(r[key] or 0)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="a sweep directory (hydra.sweep.dir) or any folder of runs")
    p.add_argument("--csv", nargs="?", const="-", metavar="PATH",
                   help="also write the table as CSV to PATH; without PATH (or '-'): the CSV to stdout, no table")
    p.add_argument("--runs", action="store_true", help="one row per run instead of the seed-averaged groups")
    p.add_argument("--sort", default="mIoU", choices=["mIoU", "mAcc", "aAcc", "run"])
    args = p.parse_args(argv)
    rows = collect(args.root)
    if not rows:
        raise SystemExit(f"{args.root}: no runs below it (no metrics.json nor .hydra/overrides.yaml)")
    if args.runs:
        rows = sort_runs(rows, args.sort)
        table, (headers, csv_rows) = markdown(rows), run_csv_rows(rows)
    else:
        groups, classes = aggregate(rows)
        groups = sort_groups(groups, args.sort)
        table, (headers, csv_rows) = markdown_groups(groups, classes), group_csv_rows(groups, classes)
    if args.csv == "-":
        sys.stdout.write(csv_text(headers, csv_rows))
        return
    print(table)
    notes = not_counted(rows)
    if notes:
        print("\n" + notes)
    if args.csv:
        from segattn.io import atomic_write

        with atomic_write(args.csv, "w") as f:
            f.write(csv_text(headers, csv_rows))


if __name__ == "__main__":
    main()
