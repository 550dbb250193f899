"""The full metric set from the one confusion matrix, checked against torchmetrics (dataset-level
averaging, ignore_index), and eval.py's confusion matrix files and table."""

import csv
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from segattn.data import CityscapesDataset
from segattn.data.labels import CITYSCAPES_CLASSES
from segattn.metrics import ConfusionMatrix
from segattn.viz import confusion_image

from conftest import run_eval

K, IGNORE = 6, 255  # the last class appears in neither prediction nor ground truth


def _random_batches(seed=0, n=5):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        target = torch.randint(0, K - 1, (2, 17, 23), generator=g)
        target[torch.rand(target.shape, generator=g) < 0.1] = IGNORE
        noise = torch.randint(0, K - 1, target.shape, generator=g)
        right = torch.rand(target.shape, generator=g) < 0.6  # better than chance, so the classes differ
        yield torch.where(right & (target != IGNORE), target, noise), target


def test_every_metric_matches_torchmetrics_on_random_data():
    tm = pytest.importorskip("torchmetrics.classification")
    per_class = {"IoU": tm.MulticlassJaccardIndex, "Dice": tm.MulticlassF1Score,
                 "Precision": tm.MulticlassPrecision, "Recall": tm.MulticlassRecall, "Acc": tm.MulticlassRecall}
    means = {"mIoU": tm.MulticlassJaccardIndex, "mDice": tm.MulticlassF1Score, "mPrecision": tm.MulticlassPrecision,
             "mRecall": tm.MulticlassRecall, "mAcc": tm.MulticlassRecall}
    ref = {k: c(num_classes=K, average=None, ignore_index=IGNORE) for k, c in per_class.items()}
    ref.update({k: c(num_classes=K, average="macro", ignore_index=IGNORE) for k, c in means.items()})
    ref["aAcc"] = tm.MulticlassAccuracy(num_classes=K, average="micro", ignore_index=IGNORE)
    ref["confusion"] = tm.MulticlassConfusionMatrix(num_classes=K, ignore_index=IGNORE)
    cm = ConfusionMatrix(K)
    for pred, target in _random_batches():  # accumulated over the whole "dataset", not per image
        cm.update(pred, target)
        for metric in ref.values():
            metric.update(pred, target)
    ours = cm.compute()
    assert torch.equal(cm.mat, ref["confusion"].compute())
    worst = 0.0
    for key in per_class:
        theirs = ref[key].compute().double()
        mine = torch.tensor(ours[key], dtype=torch.float64)
        # a class absent everywhere: NaN here (undefined, left out of the means), 0 in torchmetrics
        assert math.isnan(ours[key][K - 1]) and theirs[K - 1] == 0, key
        worst = max(worst, (mine[:K - 1] - theirs[:K - 1]).abs().max().item())
    for key in (*means, "aAcc"):
        worst = max(worst, abs(ours[key] - ref[key].compute().item()))
    assert worst < 1e-6, worst
    assert 0.2 < ours["mIoU"] < 0.9  # not a degenerate case: the metrics differ from one another
    assert len({round(ours[k], 6) for k in ("mIoU", "mDice", "mPrecision", "mRecall")}) == 4


def test_dice_precision_recall_by_hand():
    target = torch.tensor([0, 0, 1, 1, 2, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    m = cm.compute()
    # class 0: tp 1, 2 in truth, 2 predicted; class 1: tp 2, 2 in truth, 3 predicted; class 2: 1 in truth,
    # never predicted (its one prediction falls on an ignored pixel): precision undefined, out of the mean
    assert m["Precision"][:2] == pytest.approx([0.5, 2 / 3]) and math.isnan(m["Precision"][2])
    assert m["mPrecision"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["Recall"] == m["Acc"] == pytest.approx([0.5, 1.0, 0.0])
    assert m["Dice"] == pytest.approx([0.5, 0.8, 0.0])
    assert m["mDice"] == pytest.approx(1.3 / 3)


def test_eval_writes_the_confusion_matrix_and_the_full_table(trained_run, tiny_root, tmp_path, capsys):
    out = tmp_path / "eval"
    ckpt = os.path.join(trained_run, "checkpoints", "last.pt")
    run_eval([f"checkpoint={ckpt}", "num_workers=0", "progress=false", f"dataset.root={tiny_root}",
              f"hydra.run.dir={out}"])
    result = json.load(open(out / "eval.json"))
    rows = list(csv.reader(open(out / "confusion_matrix.csv")))
    assert rows[0][1:] == list(CITYSCAPES_CLASSES) and [r[0] for r in rows[1:]] == list(CITYSCAPES_CLASSES)
    mat = torch.tensor([[int(v) for v in r[1:]] for r in rows[1:]])
    val = CityscapesDataset(tiny_root, "val")
    assert mat.sum() == sum(int((val.load(i)[1] != 255).sum()) for i in range(len(val)))  # each labelled pixel once
    # every figure of eval.json comes from that matrix
    again = ConfusionMatrix(len(CITYSCAPES_CLASSES))
    again.mat = mat
    m = again.compute()
    for key in ("mIoU", "mAcc", "aAcc", "mDice", "mPrecision", "mRecall"):
        assert result[key] == pytest.approx(m[key], abs=1e-12), key
    for key in ("IoU", "Dice", "Precision", "Recall"):
        want = [None if math.isnan(v) else v for v in m[key]]
        assert [result[key][c] for c in CITYSCAPES_CLASSES] == pytest.approx(want, abs=1e-12, nan_ok=True), key
    # the picture is the one TensorBoard shows, drawn from the same counts
    png = np.array(Image.open(out / "confusion_matrix.png").convert("RGB"))
    assert np.array_equal(png, confusion_image(mat, class_names=CITYSCAPES_CLASSES))
    assert result["confusion_matrix"]["csv"] == str(out / "confusion_matrix.csv")
    printed = capsys.readouterr().out
    assert "   IoU    Acc   Dice   Prec" in printed and "mDice" in printed and "mPrecision" in printed
    road = next(line for line in printed.splitlines() if line.startswith("road "))
    assert road.split()[1:] == [f"{100 * v:.2f}" if v is not None else "nan"
                                for v in (result[k]["road"] for k in ("IoU", "Acc", "Dice", "Precision"))]
