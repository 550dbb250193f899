"""Collect the metrics.json of every run under a folder into one table.

    python scripts/summarize_sweep.py multirun/2026-11-25/12-00-00 [--csv out.csv] [--sort mIoU]
    python scripts/summarize_sweep.py multirun/2026-11-25/12-00-00 --csv > table.csv

Each row: the run's overrides (from .hydra/overrides.yaml), mIoU / mAcc / aAcc (%), the iteration.
The Markdown table goes to stdout; ``--csv PATH`` also writes the rows as CSV to PATH, and ``--csv``
alone (or ``--csv -``) writes the CSV to stdout instead of the table (the CSV keeps fractions, not %).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys

import yaml


def collect(root: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(root, "**", "metrics.json"), recursive=True)):
        run = os.path.dirname(path)
        with open(path) as f:
            m = json.load(f)
        overrides_file = os.path.join(run, ".hydra", "overrides.yaml")
        overrides = []
        if os.path.isfile(overrides_file):
            with open(overrides_file) as f:
                overrides = yaml.safe_load(f) or []
        rows.append({"run": os.path.relpath(run, root), "overrides": " ".join(overrides),
                     "mIoU": m.get("mIoU"), "mAcc": m.get("mAcc"), "aAcc": m.get("aAcc"), "iter": m.get("iter")})
    return rows


def markdown(rows: list[dict]) -> str:
    def pct(v):
        return "" if v is None else f"{100 * v:.2f}"

    lines = ["| run | overrides | mIoU | mAcc | aAcc | iter |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['overrides']} | {pct(r['mIoU'])} | {pct(r['mAcc'])} | {pct(r['aAcc'])} | {r['iter']} |"
              for r in rows]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="a sweep directory (hydra.sweep.dir) or any folder of runs")
    p.add_argument("--csv", nargs="?", const="-", metavar="PATH",
                   help="also write the table as CSV to PATH; without PATH (or '-'): the CSV to stdout, no table")
    p.add_argument("--sort", default="mIoU", choices=["mIoU", "mAcc", "aAcc", "run"])
    args = p.parse_args(argv)
    rows = collect(args.root)
    if not rows:
        raise SystemExit(f"{args.root}: no metrics.json found below it")
    rows.sort(key=lambda r: (r[args.sort] is None, -(r[args.sort] or 0) if args.sort != "run" else r["run"]))
    if args.csv == "-":
        write_csv(rows, sys.stdout)
        return
    print(markdown(rows))
    if args.csv:
        with open(args.csv + ".tmp", "w", newline="") as f:
            write_csv(rows, f)
        os.replace(args.csv + ".tmp", args.csv)


def write_csv(rows: list[dict], f) -> None:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)


if __name__ == "__main__":
    main()
