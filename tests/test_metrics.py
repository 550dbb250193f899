import math

import pytest
import torch

from segattn.metrics import ConfusionMatrix


def test_hand_computed_case():
    # 3 classes. target / pred over 6 pixels, one ignored.
    target = torch.tensor([0, 0, 1, 1, 2, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    m = cm.compute()
    # class 0: tp 1, fp 1 (pixel 4), fn 1 (pixel 1) -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 0 -> 0
    assert m["IoU"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert m["Acc"] == pytest.approx([0.5, 1.0, 0.0])
    assert m["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert m["aAcc"] == pytest.approx(3 / 5)  # the ignored pixel counts nowhere


def test_absent_class_is_nan_and_excluded():
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]))
    m = cm.compute()
    assert math.isnan(m["IoU"][2]) and math.isnan(m["IoU"][3])
    assert m["mIoU"] == 1.0 and m["mAcc"] == 1.0


def test_predicted_but_absent_class_counts_zero():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 2]), torch.tensor([0, 0]))
    m = cm.compute()
    assert m["IoU"][2] == 0.0  # false positives make a class count even if absent from the truth
    assert math.isnan(m["Acc"][2])
    assert m["mIoU"] == pytest.approx((0.5 + 0.0) / 2)


def test_all_wrong_prediction():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([[1, 1], [0, 0]]), torch.tensor([[0, 0], [1, 1]]))
    m = cm.compute()
    assert m["mIoU"] == 0.0 and m["aAcc"] == 0.0


def test_dataset_level_not_mean_of_images():
    # Image A: class 1 tiny and missed; image B: class 1 large and hit. Per-image mean would differ.
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 1]))
    cm.update(torch.tensor([1, 1, 1, 1]), torch.tensor([1, 1, 1, 1]))
    m = cm.compute()
    assert m["IoU"][1] == pytest.approx(4 / 5)
    assert m["IoU"][0] == pytest.approx(3 / 4)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ"):
        ConfusionMatrix(2).update(torch.zeros(2, 2), torch.zeros(4))
