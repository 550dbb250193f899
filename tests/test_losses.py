"""loss.name=ce|ohem, loss.class_weight (list | auto): each against a loss computed by hand on a tiny tensor."""

import math

import numpy as np
import pytest
import torch

from segattn.models import build_model
from segattn.models.losses import SegmentationLoss, class_weights_from_counts, ohem_keep


# One image, 3 classes, 1 x 4 pixels; pixel 3 is ignored (255).
LOGITS = torch.tensor([[[[2.0, 0.0, 1.0, 5.0]],
                        [[0.0, 0.0, 1.0, 0.0]],
                        [[0.0, 1.0, 4.0, 0.0]]]])
TARGET = torch.tensor([[[0, 1, 2, 255]]])


def _true_probs():
    """Softmax probability of each labelled pixel's true class, by hand."""
    e = math.exp
    return [e(2) / (e(2) + 2),            # pixel 0: class 0, logits (2, 0, 0)
            1 / (2 + e(1)),               # pixel 1: class 1, logits (0, 0, 1)
            e(4) / (2 * e(1) + e(4))]     # pixel 2: class 2, logits (1, 1, 4)


def test_cross_entropy_by_hand():
    p = _true_probs()  # [0.787, 0.212, 0.909]
    expected = -sum(math.log(q) for q in p) / 3
    assert float(SegmentationLoss("ce")(LOGITS, TARGET)) == pytest.approx(expected, rel=1e-6)


def test_class_weighted_cross_entropy_by_hand():
    p, w = _true_probs(), [0.5, 2.0, 1.0]
    expected = -(w[0] * math.log(p[0]) + w[1] * math.log(p[1]) + w[2] * math.log(p[2])) / sum(w)
    loss = SegmentationLoss("ce", class_weight=w, num_classes=3)(LOGITS, TARGET)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_ohem_keeps_pixels_below_the_threshold_by_hand():
    p = _true_probs()
    # thresh 0.7, min_kept 0: only pixel 1 (p = 0.21) is hard.
    loss = SegmentationLoss("ohem", ohem_thresh=0.7, ohem_min_kept=0)(LOGITS, TARGET)
    assert float(loss) == pytest.approx(-math.log(p[1]), rel=1e-6)
    kept = ohem_keep(LOGITS, TARGET, 0.7, 0)
    assert kept.tolist() == [[[255, 1, 255, 255]]]
    # min_kept 2: the threshold rises to the 2nd smallest probability (0.787): pixels 1 and 0.
    loss = SegmentationLoss("ohem", ohem_thresh=0.7, ohem_min_kept=2)(LOGITS, TARGET)
    assert float(loss) == pytest.approx(-(math.log(p[0]) + math.log(p[1])) / 2, rel=1e-6)
    # A threshold above every probability keeps all labelled pixels; ignore stays ignore.
    assert ohem_keep(LOGITS, TARGET, 0.95, 0).tolist() == TARGET.tolist()
    # min_kept >= labelled pixels: everything labelled is kept (OCNet's rule).
    assert ohem_keep(LOGITS, TARGET, 0.0, 3).tolist() == TARGET.tolist()


def test_ohem_min_kept_counts_over_the_batch():
    # Two images of 1 x 2 pixels, 2 classes, true class 0 everywhere labelled; probabilities of class 0:
    # image 0: 0.9 and (ignored) 0.3; image 1: 0.6 and 0.3. Logits log(p), log(1 - p) give exactly those.
    p0 = torch.tensor([[[0.9, 0.3]], [[0.6, 0.3]]])  # (N=2, H=1, W=2)
    logits = torch.log(torch.stack([p0, 1 - p0], dim=1))  # (2, 2, 1, 2)
    target = torch.tensor([[[0, 255]], [[0, 0]]])  # labelled: 0.9 | 0.6, 0.3
    # thresh 0.5 alone keeps 0.3; min_kept 2 raises it to 0.6 (the batch's 2nd smallest): 0.6 and 0.3.
    loss = SegmentationLoss("ohem", ohem_thresh=0.5, ohem_min_kept=2)(logits, target)
    assert float(loss) == pytest.approx(-(math.log(0.6) + math.log(0.3)) / 2, rel=1e-5)


def test_auto_class_weights_are_enets_inverse_log_frequency():
    counts = [600, 300, 100, 0]
    w = class_weights_from_counts(counts)
    assert w == pytest.approx([1 / math.log(1.02 + 0.6), 1 / math.log(1.02 + 0.3), 1 / math.log(1.02 + 0.1),
                               1 / math.log(1.02)])
    loss = SegmentationLoss("ce", class_weight="auto", num_classes=4)
    with pytest.raises(ValueError, match="class_weight=auto"):
        loss(torch.zeros(1, 4, 1, 2), torch.zeros(1, 1, 2, dtype=torch.long))
    assert loss.set_class_counts(counts) == pytest.approx(w)


def test_bad_loss_settings_name_the_key():
    with pytest.raises(ValueError, match=r"loss.name='focal'; expected one of ce, ohem"):
        SegmentationLoss("focal")
    with pytest.raises(ValueError, match=r"loss.class_weight has 2 weights; the dataset has 3 classes"):
        SegmentationLoss(class_weight=[1.0, 2.0], num_classes=3)
    with pytest.raises(ValueError, match=r"loss.class_weight='often'; expected null, auto or a list"):
        SegmentationLoss(class_weight="often")
    with pytest.raises(ValueError, match=r"loss.ohem_thresh=1.5"):
        SegmentationLoss("ohem", ohem_thresh=1.5)


def test_segmentor_uses_ohem_on_the_head_and_ce_on_the_aux_head():
    torch.manual_seed(0)
    model = build_model({"depth": 18, "width": 8}, {"name": "fcn", "channels": 8}, 3, {"channels": 8},
                        loss={"name": "ohem", "ohem_thresh": 0.0, "ohem_min_kept": 5}).train()
    images, target = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    with torch.no_grad():
        out = model(images)
    total, parts = model.loss(out, target)
    up = {k: torch.nn.functional.interpolate(v, size=(32, 32), mode="bilinear", align_corners=False)
          for k, v in out.items()}
    plain = SegmentationLoss("ce")
    assert float(parts["aux"]) == pytest.approx(float(plain(up["aux"], target)), rel=1e-5)
    # thresh 0: exactly the 5 hardest pixels of the batch count for the main output.
    nll = torch.nn.functional.cross_entropy(up["out"], target, reduction="none").flatten()
    assert float(parts["out"]) == pytest.approx(float(nll.topk(5).values.mean()), rel=1e-5)
    assert float(total) == pytest.approx(float(parts["out"]) + 0.4 * float(parts["aux"]), rel=1e-5)


def test_auto_weights_from_the_training_masks(tiny_root, capsys):
    """The trainer's set-up counts the masks (alone, at their resolution) and gives the loss the weights."""
    from segattn.data import build_dataset
    from segattn.engine.trainer import resolve_class_weights

    train_set = build_dataset("cityscapes", tiny_root, "train")
    counts = train_set.class_pixel_counts()
    by_loading = np.zeros(len(train_set.classes), np.int64)
    for i in range(len(train_set)):
        m = train_set.load(i)[1]
        by_loading += np.bincount(m[m != 255].ravel(), minlength=len(by_loading))
    assert counts.tolist() == by_loading.tolist() and counts.sum() > 0

    model = build_model({"depth": 18, "width": 8}, {"name": "fcn", "channels": 8}, len(train_set.classes),
                        loss={"name": "ohem", "class_weight": "auto"})
    weights = resolve_class_weights(model, train_set, list(train_set.classes), rank=0)
    assert weights == pytest.approx(class_weights_from_counts(counts))
    assert model.criterion.class_weight.tolist() == pytest.approx(weights)
    err = capsys.readouterr().err
    assert "loss.class_weight=auto" in err and f"{weights[int(np.argmax(counts))]:7.3f}" in err
