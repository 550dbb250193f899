"""scripts/summarize_sweep.py: runs grouped by their overrides minus seed, mean ± 95 % confidence interval (n)
in percent (scripts/study.py's convention), Markdown and CSV alike, failed and unfinished runs listed rather than
dropped."""

import csv
import importlib.util
import io
import json
import math
import os

import pytest
from scipy import stats

from conftest import REPO


def _summarize():
    spec = importlib.util.spec_from_file_location("summarize", os.path.join(REPO, "scripts", "summarize_sweep.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(root, name, overrides, miou=None, it=4, max_iters=4, iou=None):
    run = root / name
    os.makedirs(run / ".hydra")
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (run / ".hydra" / "config.yaml").write_text(f"seed: 0\ntrainer:\n  max_iters: {max_iters}\n")
    if miou is not None:
        (run / "metrics.json").write_text(json.dumps({"mIoU": miou, "mAcc": miou + 0.1, "aAcc": 0.9, "iter": it,
                                                      "IoU": iou or {"road": miou, "car": None}}))


@pytest.fixture
def sweep(tmp_path):
    _run(tmp_path, "0_head=fcn,seed=0", ["head=fcn", "seed=0"], 0.30, iou={"road": 0.5, "car": 0.1})
    _run(tmp_path, "1_head=fcn,seed=1", ["head=fcn", "seed=1"], 0.34, iou={"road": 0.6, "car": 0.1})
    _run(tmp_path, "2_head=cc,seed=0", ["head=cc", "seed=0"], 0.40, iou={"road": 0.7, "car": 0.2})
    _run(tmp_path, "3_head=cc,seed=1", ["head=cc", "seed=1"])  # crashed: no metrics.json
    _run(tmp_path, "4_head=cc,seed=2", ["head=cc", "seed=2", "resume=auto"], 0.10, it=2)  # stopped half-way
    return tmp_path


def test_groups_mean_interval_n_and_the_runs_not_counted(sweep, capsys):
    s = _summarize()
    rows = s.collect(str(sweep))
    assert {r["run"]: r["status"] for r in rows} == {
        "0_head=fcn,seed=0": "done", "1_head=fcn,seed=1": "done", "2_head=cc,seed=0": "done",
        "3_head=cc,seed=1": "failed", "4_head=cc,seed=2": "unfinished"}
    groups, classes = s.aggregate(rows)
    by = {g["group"]: g for g in groups}
    assert set(by) == {"head=fcn", "head=cc"} and classes == ["road", "car"]
    fcn = by["head=fcn"]
    assert fcn["n"] == 2 and fcn["seeds"] == ["0", "1"]
    # Two seeds 0.30, 0.34: sample std 0.02 * sqrt(2), the half width t(0.975, 1) * std / sqrt(2).
    t = stats.t.ppf(0.975, 1)
    assert fcn["mIoU"].mean == pytest.approx(0.32) and fcn["mIoU"].half_width == pytest.approx(t * 0.02)
    assert fcn["mIoU"].n == 2
    cc = by["head=cc"]["mIoU"]
    assert by["head=cc"]["n"] == 1 and cc.mean == pytest.approx(0.40) and math.isnan(cc.half_width) and cc.n == 1

    s.main([str(sweep)])
    out = capsys.readouterr().out
    assert "| overrides (minus seed) | n | seeds | mIoU % (95 % CI, n) | mAcc % (95 % CI, n) | aAcc % (95 % CI, n) |" \
        in out  # the convention said in the header
    assert "| head=fcn | 2 | 0,1 | 32.00 ± 25.41 (2) | 42.00 ± 25.41 (2) | 90.00 ± 0.00 (2) |" in out
    assert "| head=cc | 1 | 0 | 40.00 (1) | 50.00 (1) | 90.00 (1) |" in out  # one run: no interval
    assert "| head=fcn | 55.00 ± 63.53 (2) | 10.00 ± 0.00 (2) |" in out  # per-class IoU
    assert "Not counted (2 of 5 runs):" in out
    assert "3_head=cc,seed=1 (head=cc seed=1): failed: no metrics.json" in out
    assert "4_head=cc,seed=2 (head=cc seed=2 resume=auto): unfinished: metrics.json of iteration 2 of 4" in out


def test_csv_and_markdown_agree(sweep, capsys):
    s = _summarize()
    s.main([str(sweep), "--csv"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    s.main([str(sweep)])
    table = capsys.readouterr().out
    assert [r["overrides"] for r in rows] == ["head=cc", "head=fcn"]  # by mIoU
    def cell(r, key):
        half = r[f"{key} 95% CI half width %"]
        return f"{r[f'{key} mean %']}{f' ± {half}' if half else ''} ({r['n']})"

    for r in rows:
        assert f"| {r['overrides']} | {r['n']} | {r['seeds'].replace(' ', ',')} | {cell(r, 'mIoU')} |" in table
        assert cell(r, "IoU road") in table
