"""The context suite (benchmarks/context.py): each task has the property it claims, the statistics are
right, and ``--quick`` runs end to end with its cache."""

import csv
import math
import os

import numpy as np
import pytest
import torch

from benchmarks import common, context
from benchmarks import context_tasks as tasks
from segattn.stats import mean_ci, p_text, welch_p

H, W = (int(v) for v in context.FULL["size"].split("x"))


@pytest.fixture(scope="module")
def geometry():
    """The suite's FCN (fresh), its measured receptive radius and the first object column."""
    torch.manual_seed(0)
    fcn = context.fcn_model(context.FULL["width"], context.FULL["channels"])
    radius = context.receptive_radius(fcn, (H, W))
    return fcn, radius, context.objects_from(radius)


@pytest.fixture(scope="module")
def nonlocal_model():
    """A non-local head whose zero-initialised residual is opened, so its attention path carries a gradient."""
    from segattn.models import build_model

    torch.manual_seed(0)
    nl = build_model({"depth": 18, "width": 8}, {"name": "nl", "channels": 32}, 19, {"weight": 0.0}, init="pytorch")
    with torch.no_grad():
        nl.head.attention.conv_out[1].weight.fill_(1.0)
    return nl


def _images(task: str, x0: int, n: int = 2, seed: int = 0) -> tuple[torch.Tensor, list, list]:
    rng = np.random.default_rng(seed)
    imgs, labs, facts = zip(*(tasks.scene(task, rng, H, W, x0) for _ in range(n)))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
    return x, list(labs), list(facts)


@pytest.mark.parametrize("task", tasks.TASKS)
def test_the_fcn_cannot_see_the_cue(task, geometry, nonlocal_model):
    """The gradient of every object-zone logit of the FCN with respect to every cue pixel is exactly zero,
    while pixels within its reach do move those logits, and a non-local head does reach the cue."""
    fcn, radius, x0 = geometry
    assert x0 + 48 <= W and radius > 100  # the objects' zone fits, and the receptive field is real
    images, labs, _ = _images(task, x0)
    assert all(((lab == tasks.CAR) | (lab == tasks.TRUCK))[:, :x0].sum() == 0 for lab in labs)
    assert context.cue_influence(fcn, images, x0) == 0.0
    x = images.clone().requires_grad_(True)
    out = torch.nn.functional.interpolate(fcn(x)["out"], size=(H, W), mode="bilinear", align_corners=False)
    (g,) = torch.autograd.grad(out[..., x0:].sum(), x)
    assert g[..., x0 - radius + 8:x0].abs().max() > 0  # within reach: a nonzero gradient
    assert context.cue_influence(nonlocal_model, images, x0) > 0  # attention reaches the cue


def test_global_statistics_carry_the_cue_except_in_which_marker(geometry):
    """A linear probe on globally pooled pixels reads far_marker and global_cue, and is at chance on
    which_marker, where one red and one blue marker appear in every image."""
    _, _, x0 = geometry
    acc = {t: tasks.global_probe_accuracy(t, H, W, x0, n=240 if t == "which_marker" else 100) for t in tasks.TASKS}
    assert acc["far_marker"] > 0.95 and acc["global_cue"] > 0.95, acc
    assert abs(acc["which_marker"] - 0.5) < 0.12, acc


def test_each_task_draws_what_it_claims(geometry):
    _, _, x0 = geometry
    rng = np.random.default_rng(3)
    for _ in range(5):
        img, lab, facts = tasks.scene("which_marker", rng, H, W, x0)
        top, bottom = lab[: H // 2], lab[H // 2:]
        assert sorted(facts["classes"]) == [tasks.CAR, tasks.TRUCK]
        for half, cls in zip((top, bottom), facts["classes"]):
            assert (half[:, : tasks.MARKER_W] == tasks.MARKER[cls]).all()  # its own marker
            present = set(np.unique(half[:, x0:])) - {tasks.ROAD}
            assert present == {cls}  # its objects follow its own marker
        img, lab, facts = tasks.scene("global_cue", rng, H, W, x0)
        cls = facts["classes"][0]
        other = tasks.TRUCK if cls == tasks.CAR else tasks.CAR
        dot = tasks.DOT ** 2  # the dots are labelled by colour, 9 of the class's and 3 of the other's
        assert (lab == tasks.MARKER[cls]).sum() == tasks.DOTS_MAJORITY * dot
        assert (lab == tasks.MARKER[other]).sum() == (tasks.DOTS - tasks.DOTS_MAJORITY) * dot
        zone = img[:, : tasks.FAR].astype(int)
        red = ((zone[..., 0] > 180) & (zone[..., 2] < 90)).sum()
        blue = ((zone[..., 2] > 180) & (zone[..., 0] < 90)).sum()
        major, minor = (red, blue) if cls == tasks.CAR else (blue, red)
        assert major > minor > 0 and abs(major / dot - tasks.DOTS_MAJORITY) <= 1.5, (red, blue)


def test_statistics():
    ci = mean_ci([0.1, 0.2, 0.3])
    # t(0.975, 2) = 4.302653 (tables); sd = 0.1.
    assert ci.n == 3 and ci.mean == pytest.approx(0.2) and ci.half_width == pytest.approx(4.302653 * 0.1 / 3 ** 0.5)
    assert ci.text() == "20.0 ± 24.8 (3)"
    assert mean_ci([0.5, None, float("nan")]).n == 1 and math.isnan(mean_ci([0.5]).half_width)
    assert mean_ci([]).text() == "—"
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    # Welch: t from the unequal variances, Welch-Satterthwaite degrees of freedom (not the pooled test's 7).
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    from scipy import stats

    assert welch_p(a, b) == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert welch_p(a, b) != pytest.approx(stats.ttest_ind(a, b).pvalue)  # not the pooled-variance test
    assert welch_p([0.5, 0.5], [0.5, 0.5]) == 1.0 and welch_p([0.5, 0.5], [0.7, 0.7]) == 0.0
    assert math.isnan(welch_p([0.5], [0.1, 0.2]))
    assert welch_p([0.80, 0.82, 0.81], [0.50, 0.52, 0.49]) < 0.001
    assert p_text(0.0004) == "<0.001" and p_text(0.004) == "0.004" and p_text(0.3) == "0.30" and p_text(math.nan) == "—"


def test_quick_suite_runs_end_to_end_and_caches(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", str(tmp_path / "results"))
    argv = ["--quick", "--heads", "nl", "--tasks", "which_marker", "--jobs", "2", "--cache", str(tmp_path / "cache")]
    first = context.main(argv)
    # A quick run never writes the committed results' place.
    assert first["out"] == os.path.join(str(tmp_path / "results"), "quick")
    assert not os.path.exists(tmp_path / "results" / "context.md")
    assert first["info"]["trained"] == 4  # fcn and nl, seeds 0 and 1
    rows = list(csv.DictReader(open(os.path.join(first["out"], "context.csv"))))
    assert [(r["head"], r["seed"]) for r in rows] == [("fcn", "0"), ("fcn", "1"), ("nl", "0"), ("nl", "1")]
    assert all(r["n"] == "2" for r in rows) and rows[0]["verdict"] == "baseline"
    assert 0 <= float(rows[2]["welch_p_vs_fcn"]) <= 1
    assert "conv_out.1.weight_rms" in rows[2]["residual_scales"]
    text = open(os.path.join(first["out"], "context.md")).read()
    assert "| `nl` | matmul / matmul / spatial |" in text and "(2) |" in text
    assert "model.init=pytorch" in text and "![heads x tasks](context.png)" in text
    for name in ("context.png", "context_ci.png"):
        assert os.path.getsize(os.path.join(first["out"], name)) > 1000
    # Again: every cell comes from the cache, with the same numbers.
    again = context.main(argv)
    assert again["info"]["trained"] == 0 and again["cells"] == first["cells"]
    with pytest.raises(SystemExit, match="no room"):
        context.main(argv + ["--size", "48x300"])
    # The full settings' cells are the committed raw results; other settings' stay in the ignored cache.
    full = context.parse_args([])
    assert context._cell_path(full, context.settings(full), "far_marker", "nl", 0) == os.path.join(
        context.CELLS, context.settings_key(context.settings(full)), "far_marker", "nl_seed0.json")
    assert first["cells"][0]["seed"] == 0 and os.path.isfile(os.path.join(
        str(tmp_path / "cache"), "cells", context.settings_key(context.settings(context.parse_args(argv))),
        "which_marker", "fcn_seed0.json"))


@pytest.mark.parametrize("head", common.head_names())
def test_every_head_trains_at_the_suite_width(head):
    """Every registered head builds and takes a training step at the suite's narrow width, with the
    overrides the suite gives it (groups that cannot split 32 channels are scaled: SGE's 64 -> 4)."""
    from segattn.models import build_model

    s = context.settings(context.parse_args([]))
    cfg = dict(common.head_config(head), channels=s["channels"])
    for o in context.width_overrides(head, s["channels"]):
        key, value = o.split("=")
        cfg[key.split(".")[1]] = int(value)
    torch.manual_seed(0)
    model = build_model({"depth": 18, "width": s["width"]}, cfg, 19, {"channels": 32}, init=s["init"]).train()
    out = model(torch.randn(2, 3, H, W))
    loss, _ = model.loss(out, torch.randint(0, 19, (2, H, W)))
    loss.backward()
    assert torch.isfinite(loss)
    assert context.width_overrides("sge", 32) == ["head.groups=4"] and context.width_overrides("axial", 32) == []


def _children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process table from /proc")
@pytest.mark.parametrize("target", ["suite", "group"])
def test_ctrl_c_stops_the_suite_with_one_line(tmp_path, target):
    """SIGINT to the suite's own process (``suite``), or to its whole process group as a terminal's Ctrl-C
    does, the moment its first worker starts (``group``: the worker is still importing), stops it within
    seconds: its workers are killed, it exits 130 with one line and no traceback."""
    import signal
    import subprocess
    import sys
    import time

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        pytest.skip("SIGINT is ignored in this process (a background job), and so in the suite it starts")
    cmd = [sys.executable, os.path.join(common.REPO, "benchmarks", "context.py"), "--quick", "--heads", "nl",
           "--tasks", "which_marker", "--seeds", "0,1,2,3,4,5", "--jobs", "1", "--cache", str(tmp_path / "cache"),
           "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=common.REPO,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    deadline = time.monotonic() + 120
    workers = []
    while not workers and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        workers = [p for p in _children(proc.pid) if "--multiprocessing-fork" in open(f"/proc/{p}/cmdline").read()]
    assert workers, "no worker started"
    tic = time.monotonic()
    if target == "suite":
        time.sleep(1.0)  # the worker is training a cell
        proc.send_signal(signal.SIGINT)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - tic < 10
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Error" not in err, err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    assert lines[-1].startswith("context suite: interrupted (Ctrl-C)"), lines
    time.sleep(0.5)
    assert not [p for p in workers if os.path.exists(f"/proc/{p}") and
                open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"], "a worker outlived the suite"

def test_settings_keys_variants_and_where_their_cells_live(tmp_path):
    """The default settings keep the committed cells' key; a budget or a residual start is a key of its own,
    committed with them; other settings stay in the cache; a head without residual scales reuses its cells of
    the papers' start."""
    full = context.parse_args([])
    assert context.settings_key(context.settings(full)) == "00d288a886"  # the committed cells' folder
    assert full.budgets == [1.0] and context.parse_args(["--budget", "2,4"]).budgets == [2.0, 4.0]
    with pytest.raises(SystemExit, match="--budget"):
        context.parse_args(["--budget", "0"])
    doubled = context.settings(full, 2.0)
    zero = context.settings(context.parse_args(["--residual-init", "0.1"]))
    assert doubled["iters"] == 320 and "residual_init" not in doubled and zero["residual_init"] == 0.1
    keys = {context.settings_key(s) for s in (context.settings(full), doubled, zero)}
    assert len(keys) == 3
    assert context.committed_settings(doubled) and context.committed_settings(zero)
    quick = context.parse_args(["--quick"])
    assert not context.committed_settings(context.settings(quick))
    assert context.cells_root(quick, context.settings(quick)).startswith(context.CACHE)
    assert quick.heads == "nl,cc,se"  # --quick is a few heads, not the grid
    assert context.has_residual_scales("da") and not context.has_residual_scales("se")
    assert context.cell_settings(zero, "se") == context.settings(full) and context.cell_settings(zero, "da") == zero


def test_help_prints(capsys):
    """--help is the user's first call; a bare '%' in a help string made argparse raise TypeError instead."""
    with pytest.raises(SystemExit) as stop:
        context.parse_args(["--help"])
    assert stop.value.code == 0 and "95 % interval" in " ".join(capsys.readouterr().out.split())


def _cell(task, head, seed, obj, scales=None):
    return {"task": task, "head": head, "seed": seed, "mIoU": obj, "object_mIoU": obj, "object_recall": obj,
            "IoU_car": obj, "IoU_truck": obj, "IoU_road": 0.9, "IoU_traffic light": 0.9, "IoU_traffic sign": 0.9,
            "head_params": 1000, "seconds": 1.0, "residual_scales": scales or {}}


def test_settling_opens_and_closes_cells():
    """A cell is open while its interval is wider than +-10 points and it has fewer than 8 seeds; the next
    seed is the smallest untrained one."""
    bimodal = [_cell("t", "da", k, v) for k, v in enumerate([0.3, 0.8, 0.8])]
    tight = [_cell("t", "nl", k, v) for k, v in enumerate([0.80, 0.81, 0.79])]
    eight = [_cell("t", "cc", k, v) for k, v in enumerate([0.3, 0.8] * 4)]
    one = [_cell("t", "se", 0, 0.2)]
    assert sorted(context.open_cells(bimodal + tight + eight + one)) == [("t", "da"), ("t", "se")]
    assert context.next_seed({0, 1, 2}) == 3 and context.next_seed({0, 2}) == 1 and context.next_seed(set()) == 0


def test_success_rate_rule_and_wilson_interval():
    """A seed reads the cue above the FCN's 95 % prediction interval; the rate is k of n with Wilson's
    interval (closed form, checked against the textbook values)."""
    from benchmarks import context_report
    from segattn.stats import wilson_ci

    fcn = [_cell("t", "fcn", k, v) for k, v in enumerate([0.18, 0.23, 0.19])]
    da = [_cell("t", "da", k, v) for k, v in enumerate([0.72, 0.76, 0.30])]
    thr = context_report.cue_threshold(fcn, "t")
    ci = mean_ci([0.18, 0.23, 0.19])
    sd = float(np.std([0.18, 0.23, 0.19], ddof=1))
    assert thr == pytest.approx(ci.mean + 4.302653 * sd * (1 + 1 / 3) ** 0.5)  # mean + t sd sqrt(1 + 1/n)
    assert ci.mean + ci.half_width < 0.30 < thr  # the seed at 30 lies above the mean's interval, not this one
    r = context_report.summarize(fcn + da)[("t", "da")]["rate"]
    assert (r.k, r.n) == (2, 3) and r.text() == "2/3 (21-94 %)"
    assert wilson_ci(3, 3).low == pytest.approx(0.4385, abs=1e-4) and wilson_ci(3, 3).high == 1.0
    assert wilson_ci(0, 3) == (0, 3, 0.0, pytest.approx(0.5615, abs=1e-4))
    assert (wilson_ci(5, 10).low, wilson_ci(5, 10).high) == (pytest.approx(0.2366, abs=1e-4),
                                                              pytest.approx(0.7634, abs=1e-4))
    assert math.isnan(context_report.cue_threshold(fcn[:1], "t")) and wilson_ci(0, 0).text() == "—"
    from scipy import stats

    from segattn.stats import fisher_p

    for k1, n1, k2, n2 in ((3, 8, 8, 8), (1, 5, 4, 6), (0, 3, 3, 3), (2, 3, 3, 3)):
        assert fisher_p(k1, n1, k2, n2) == pytest.approx(stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)


def test_report_has_rates_zero_start_and_budget_curves(tmp_path):
    """From records alone (no training): the CSV's success columns, the zero-start table against the same
    FCN, and the budget tables and picture."""
    from benchmarks import context_report

    rng = np.random.default_rng(0)
    tasks_ = ["far_marker", "global_cue"]
    cells = [_cell(t, h, k, float(v)) for t in tasks_ for h, mu in (("fcn", 0.2), ("da", 0.55)) for k, v in
             enumerate(rng.normal(mu, 0.02, 3))]
    cells = [dict(c, residual_scales={"head.attention.pam.gamma": 0.01}) if c["head"] == "da" else c for c in cells]
    opened = [dict(c, object_mIoU=0.8 + 0.01 * c["seed"], residual_scales={"head.attention.pam.gamma": 0.2}) for c in cells
              if c["head"] == "da"]
    longer = [dict(c, object_mIoU=c["object_mIoU"] + 0.1) for c in cells]
    args = context.parse_args([])
    info = {"size": (H, W), "radius": 224, "x0": 280, "wall_s": 0.0, "trained": 0, "seeds": [0, 1, 2],
            "quick": True, "jobs": 1, "full": False, "settings": context.settings(args)}
    paths = context_report.write(cells, args, info, str(tmp_path), {"residual_init": {0.1: opened},
                                                                    "budgets": {160: cells, 640: longer}})
    text = open(tmp_path / "context.md").read()
    assert "## The zero start: residual scales started at 0.1 instead of 0" in text
    assert "| far_marker | `da` |" in text and "3/3 (44-100 %)" in text and "Fisher p" in text
    assert "## Longer budgets" in text and "object mIoU %, 640 it." in text
    assert "| `da` | " in text and "| holds: every seed |" in text  # da reads at 160 and at 640 alike
    from segattn.stats import wilson_ci as rate

    assert context_report.budget_verdict([rate(0, 3), rate(2, 3), rate(3, 3)]) == \
        "changes: no seed → some seeds → every seed"
    assert context_report.budget_verdict([rate(1, 8), rate(2, 3), rate(0, 0)]) == "holds: some seeds"
    assert context_report.budget_verdict([rate(1, 8), rate(0, 0)]) == "—"  # one budget with seeds
    assert os.path.getsize(tmp_path / "context_budget.png") > 1000 and str(tmp_path / "context_budget.png") in paths
    rows = list(csv.DictReader(open(tmp_path / "context.csv")))
    da = [r for r in rows if r["head"] == "da"]
    assert {r["reads_cue"] for r in da} == {"1"} and da[0]["reads_k"] == "3" and da[0]["reads_n"] == "3"
    assert float(da[0]["reads_wilson_low"]) == pytest.approx(0.4385, abs=1e-4)
    assert {r["reads_cue"] for r in rows if r["head"] == "fcn"} == {"0"}
