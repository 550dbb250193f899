"""loss.name=ce|ohem, loss.class_weight (list | auto): each against a loss computed by hand on a tiny tensor;
dice, jaccard, tversky, focal, lovasz against segmentation_models_pytorch's code (tests/reference_smp.py) in
float64 on random logits with ignored pixels; weighted sums; the auxiliary head."""

import math
import os

import numpy as np
import pytest
import torch

from segattn.models import build_model
from segattn.models.losses import LOSSES, SegmentationLoss, class_weights_from_counts, ohem_keep

import reference_smp as smp


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
    with pytest.raises(ValueError, match=r"loss.name='dise'; expected one of ce, ohem, dice, jaccard, focal, "
                                         r"lovasz, tversky, or a list of them"):
        SegmentationLoss("dise")
    with pytest.raises(ValueError, match=r"loss.name=\['ce', 'dise'\]; expected one of .* \('dise' is not\)"):
        SegmentationLoss(["ce", "dise"])
    with pytest.raises(ValueError, match=r"loss.weights=\[1.0\]; expected one weight per loss of "
                                         r"loss.name=\['ce', 'dice'\]"):
        SegmentationLoss(["ce", "dice"], weights=[1.0])
    with pytest.raises(ValueError, match=r"loss.class_weight=\[1.0, 2.0\] weighs the cross-entropy terms .* "
                                         r"add ce, e.g. loss.name=\[ce,dice\]"):
        SegmentationLoss("dice", class_weight=[1.0, 2.0], num_classes=2)
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


def _random_batch(seed=0, classes=5, absent=3):
    """float64 logits (2, C, 9, 11) and labels with ~20 % ignored pixels and class ``absent`` missing."""
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(2, classes, 9, 11, generator=g, dtype=torch.float64)).requires_grad_()
    target = torch.randint(0, classes, (2, 9, 11), generator=g)
    target[target == absent] = 0
    target[torch.rand(2, 9, 11, generator=g) < 0.2] = 255
    return logits, target


REFERENCES = {
    "dice": (smp.smp_dice, {}),
    "jaccard": (smp.smp_jaccard, {}),
    "tversky": (lambda x, y: smp.smp_tversky(x, y, alpha=0.3, beta=0.7, gamma=1.5, smooth=1.0),
                dict(tversky_alpha=0.3, tversky_beta=0.7, tversky_gamma=1.5, smooth=1.0)),
    "focal": (smp.smp_focal, {}),
    "focal_alpha": (lambda x, y: smp.smp_focal(x, y, gamma=1.5, alpha=0.25), dict(focal_gamma=1.5, focal_alpha=0.25)),
    "lovasz": (smp.smp_lovasz, {}),
    "dice_smooth": (lambda x, y: smp.smp_dice(x, y, smooth=1.0), dict(smooth=1.0)),
}


@pytest.mark.parametrize("case", sorted(REFERENCES))
def test_losses_equal_segmentation_models_pytorch(case):
    """Value and gradient, float64, random logits, ignored pixels and a class absent from the labels."""
    reference, options = REFERENCES[case]
    name = case.split("_")[0]
    for seed in range(2):
        logits, target = _random_batch(seed)
        ours = SegmentationLoss(name, **options)(logits, target)
        (grad_ours,) = torch.autograd.grad(ours, logits)
        theirs = reference(logits, target)
        (grad_theirs,) = torch.autograd.grad(theirs, logits)
        assert ours.dtype == torch.float64 and float(ours.detach()) > 0
        assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=1e-6, abs=1e-12), case
        assert torch.allclose(grad_ours, grad_theirs, rtol=1e-6, atol=1e-12), case
        # Ignored pixels get no gradient and do not change the loss.
        assert not grad_ours.movedim(1, -1)[target == 255].any()
        changed = logits.detach().clone()
        changed.movedim(1, -1)[target == 255] = 50.0
        assert float(SegmentationLoss(name, **options)(changed, target)) == pytest.approx(float(ours.detach()), rel=1e-12)


def test_every_loss_is_checked_against_a_reference():
    assert set(LOSSES) == {"ce", "ohem"} | {c.split("_")[0] for c in REFERENCES}


def test_a_weighted_sum_of_losses():
    logits, target = _random_batch(1)
    logits = logits.detach()
    loss = SegmentationLoss(["ce", "dice", "lovasz"], weights=[1.0, 0.5, 0.25], class_weight=[1, 2, 1, 1, 3],
                            num_classes=5)
    ce = torch.nn.functional.cross_entropy(logits, target, weight=torch.tensor([1.0, 2, 1, 1, 3], dtype=torch.float64),
                                           ignore_index=255)
    expected = ce + 0.5 * smp.smp_dice(logits, target) + 0.25 * smp.smp_lovasz(logits, target)
    assert float(loss(logits, target)) == pytest.approx(float(expected), rel=1e-9)
    assert float(SegmentationLoss(["focal", "tversky"])(logits, target)) == pytest.approx(
        float(smp.smp_focal(logits, target) + smp.smp_tversky(logits, target)), rel=1e-9)
    # Only ignored pixels: every loss is 0 and differentiable, not NaN.
    empty = torch.full_like(target, 255)
    for name in LOSSES:
        value = SegmentationLoss(name)(logits, empty)
        assert float(value) == 0.0 or name in ("ce", "ohem"), name


def test_the_aux_head_gets_the_same_losses_with_ohem_as_ce():
    torch.manual_seed(0)
    model = build_model({"depth": 18, "width": 8}, {"name": "fcn", "channels": 8}, 3, {"channels": 8},
                        loss={"name": ["ohem", "dice"], "weights": [1.0, 2.0], "ohem_thresh": 0.0,
                              "ohem_min_kept": 5}).train()
    images, target = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    target[:, :4] = 255
    with torch.no_grad():
        out = model(images)
    total, parts = model.loss(out, target)
    up = {k: torch.nn.functional.interpolate(v, size=(32, 32), mode="bilinear", align_corners=False)
          for k, v in out.items()}
    aux = torch.nn.functional.cross_entropy(up["aux"], target, ignore_index=255) + 2 * smp.smp_dice(up["aux"], target)
    assert float(parts["aux"]) == pytest.approx(float(aux), rel=1e-5)
    nll = torch.nn.functional.cross_entropy(up["out"], target, reduction="none", ignore_index=255).flatten()
    main = nll.topk(5).values.mean() + 2 * smp.smp_dice(up["out"], target)
    assert float(parts["out"]) == pytest.approx(float(main), rel=1e-5)
    assert float(total) == pytest.approx(float(parts["out"]) + 0.4 * float(parts["aux"]), rel=1e-5)


def test_loss_lists_from_the_command_line():
    """``loss.name=[ce,dice] loss.weights=[1.0,0.5]`` composes (schema-checked) and builds that loss."""
    from hydra import compose, initialize_config_dir

    from segattn.models import build_model_from_config
    from conftest import REPO

    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["loss.name=[ce,dice]", "loss.weights=[1.0,0.5]", "backbone.width=8",
                                          "head.channels=8", "model.aux_head.channels=8"])
    from omegaconf import OmegaConf

    model = build_model_from_config(OmegaConf.to_container(cfg, resolve=True), 4, pretrained=False)
    assert model.criterion.names == ["ce", "dice"] and model.criterion.weights == [1.0, 0.5]
