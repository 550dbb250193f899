"""scripts/study.py end to end: 3 heads x 2 seeds on a tiny dataset through train.py --multirun (a process of
its own), the report (table, bar chart, per-class heat map, attention pictures), and a re-run that trains nothing."""

import csv
import importlib.util
import os
import re
import shutil

import pytest

from conftest import REPO, TINY


def _study():
    spec = importlib.util.spec_from_file_location("study", os.path.join(REPO, "scripts", "study.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_study_of_three_heads_and_two_seeds(tiny_root, tmp_path, monkeypatch):
    study = _study()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # train.py's process: one thread, as each pytest worker
    out = str(tmp_path / "study")
    # class_weight=auto also takes the trainer's set-up path that counts the training masks.
    argv = ["heads=[fcn,cc,da]", "seeds=2", f"out={out}", "speed_steps=1", *TINY, f"dataset.root={tiny_root}",
            "trainer.max_iters=2", "trainer.val_interval=2", "loss.class_weight=auto"]
    readme = study.main(argv)
    assert sorted(os.listdir(os.path.join(out, "runs"))) == [
        "cc_seed0", "cc_seed1", "da_seed0", "da_seed1", "fcn_seed0", "fcn_seed1", "multirun.yaml"]
    text = open(readme).read()
    assert "| head | backbone | crop | iters | params (M) | GFLOPs | train MiB | images/s | mIoU % (95 % CI, n) " \
           "| vs fcn |" in text
    for head in ("fcn", "cc", "da"):
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {head} | resnet18 | 64x64 | 2 |"))
        assert " ± " in line and line.split("|")[9].strip().endswith("(2)"), line
        # Two seeds a side: the difference comes with Welch's p and its verdict.
        assert head == "fcn" or re.search(r"\| [+-]\d+\.\d\d \(Welch p [<\d.]+: (a real difference|not told apart "
                                          r"from the seed noise)\) \|$", line), line
    assert "| fcn |" in text and "baseline |" in text
    report = os.path.join(out, "report")
    for name in ("miou.png", "class_iou_delta.png", "summary.csv"):
        assert os.path.getsize(os.path.join(report, name)) > 0, name
    assert "![miou](miou.png)" in text and "![class_iou_delta](class_iou_delta.png)" in text
    assert "Per-class IoU, head minus fcn" in text
    pictures = sorted(os.listdir(os.path.join(report, "attention")))
    assert any(p.startswith("attention_cc_") for p in pictures) and any(p.startswith("attention_da_") for p in pictures)
    rows = list(csv.DictReader(open(os.path.join(report, "summary.csv"))))
    assert [r["head"] for r in rows] == ["fcn", "cc", "da"] and all(r["n"] == "2" for r in rows)
    assert rows[0]["Welch p vs fcn"] == "" and all(0 <= float(r["Welch p vs fcn"]) <= 1 for r in rows[1:])
    assert all(float(r["mIoU 95% CI half width %"]) >= 0 for r in rows)
    assert float(rows[1]["params"]) > float(rows[0]["params"]) and float(rows[0]["images/s"]) > 0

    # Again: everything is finished, nothing is trained; a run that failed early is relaunched alone.
    calls = []
    monkeypatch.setattr(study, "_train_main", calls.append)
    study.main(argv[:3] + ["speed_steps=0", *argv[4:]])
    assert calls == []
    shutil.rmtree(os.path.join(out, "runs", "da_seed1"))
    study.launch(out, ["fcn", "cc", "da"], [0, 1], argv[4:])
    assert len(calls) == 1 and calls[0][:3] == ["--multirun", "head=da", "seed=1"] and "resume=auto" in calls[0]


def test_study_arguments_are_checked(tmp_path):
    study = _study()
    with pytest.raises(SystemExit, match=r"heads=\[fcn,xx\]: unknown \['xx'\]"):
        study.parse(["heads=[fcn,xx]"])
    with pytest.raises(SystemExit, match="the study sets head per run"):
        study.parse(["heads=[fcn]", "head=cc"])
    with pytest.raises(SystemExit, match=r"seeds=two: expected a count"):
        study.parse(["heads=[fcn]", "seeds=two"])
    settings, overrides = study.parse(["heads=[cc,da]", "seeds=[3,5]", "trainer.max_iters=4"])
    assert settings["baseline"] == "cc" and settings["seeds"] == [3, 5] and overrides == ["trainer.max_iters=4"]


def test_a_study_takes_a_plugins_head():
    """plugins=[...] is imported before the heads are looked up (and passed on to every run); a plugin's head
    is chosen by its yaml in a config folder of one's own."""
    from conftest import EXAMPLE_PLUGIN, forget_plugins

    study = _study()
    conf = os.path.join(REPO, "examples", "conf")
    with pytest.raises(SystemExit, match=r"unknown \['pooled_nl'\]"):
        study.parse(["heads=[fcn,pooled_nl]", f"hydra.searchpath=[file://{conf}]"])
    try:
        settings, overrides = study.parse(["heads=[fcn,pooled_nl]", "seeds=2", f"plugins=[{EXAMPLE_PLUGIN}]",
                                           f"hydra.searchpath=[file://{conf}]"])
        assert settings["heads"] == ["fcn", "pooled_nl"] and f"plugins=[{EXAMPLE_PLUGIN}]" in overrides
        with pytest.raises(SystemExit, match=r"study.py: plugins: .*is not a file"):
            study.parse(["heads=[fcn]", "plugins=[no/such/plugin.py]"])
    finally:
        forget_plugins()
