"""Batched inference computes what one-at-a-time inference computes: slide windows in batches
(``inference.window_batch``), validation images of one size in batches (``inference.batch_size``,
runs of one size out of a mixed-size split) and ``Predictor.predict(list)``; at 1e-5.

The model-level comparisons run in float64: in float32 a batched matrix product rounds differently
from one image's (DANet's module: 4e-6), and a head with sharp softmaxes (DANet's channel attention
on X X^T) carries that to 7e-3 in the logits of a random network; in float64 what is left is the
function, which must not depend on the batch."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import segattn
from segattn.data import FolderDataset
from segattn.engine.evaluate import evaluate, same_size_batches, val_loader
from segattn.models import build_model
from segattn.models.inference import infer, inference_kwargs

# Heads whose eval-mode forward could couple the images of a batch if written carelessly: EMA's
# bases, SK's and SE-style pooled gates, OCR's class regions, PSA's masks, DANet's maps, CC's passes.
HEADS = ["fcn", "da", "ema", "sk", "ocr", "psa"]


def _model(head: str) -> torch.nn.Module:
    torch.manual_seed(0)
    node = {"name": head, "channels": 16}
    if head == "psa":
        node["mask_size"] = [9, 9]
    model = build_model({"name": "resnet18", "width": 8}, node, 5).double().eval()
    with torch.no_grad():  # non-zero residual scales, so that the attention branches count
        for name, p in model.named_parameters():
            if "gamma" in name:
                p.fill_(0.5)
    return model


@pytest.mark.parametrize("head", HEADS)
def test_slide_windows_in_batches_equal_one_at_a_time(head):
    model = _model(head)
    x = torch.randn(2, 3, 40, 56, dtype=torch.float64)
    one = infer(model, x, "slide", [24, 32], [16, 12], window_batch=1)  # 2 x 3 windows of each image
    for window_batch in (4, 100):  # 2 window positions (of both images) per forward, then all 6
        torch.testing.assert_close(infer(model, x, "slide", [24, 32], [16, 12], window_batch=window_batch), one,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", HEADS)
def test_whole_images_in_a_batch_equal_one_at_a_time(head):
    model = _model(head)
    x = torch.randn(3, 3, 32, 40, dtype=torch.float64)
    batched = infer(model, x, "whole")
    for i in range(3):
        torch.testing.assert_close(batched[i:i + 1], infer(model, x[i:i + 1], "whole"), atol=1e-5, rtol=1e-5)


def test_batch_keys_are_checked():
    assert "batch_size" not in inference_kwargs({"mode": "whole", "batch_size": 4, "window_batch": 2})
    for key in ("window_batch", "batch_size"):
        with pytest.raises(ValueError, match=f"inference.{key} must be a positive integer"):
            inference_kwargs({key: 0})


def _mixed_folder(tmp_path, sizes):
    from PIL import Image

    rng = np.random.default_rng(0)
    for d in ("images", "masks"):
        os.makedirs(tmp_path / d, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i:02d}.png")
        Image.fromarray(rng.integers(0, 5, (h, w), dtype=np.uint8)).save(tmp_path / "masks" / f"{i:02d}.png")
    return FolderDataset(str(tmp_path / "images"), str(tmp_path / "masks"), [f"c{k}" for k in range(5)])


def _as_float64(transform):
    def apply(**kw):
        out = transform(**kw)
        return {**out, "image": out["image"].double()}
    return apply


def test_validation_batches_runs_of_one_size_with_the_same_metrics(tmp_path):
    """Five images, sizes A A B A A: loader batches of 5 are predicted as [A A], [B], [A A] (each run of
    one size stacked), of 2 as [A A], [B], [A], [A]; the confusion matrix is one-by-one prediction's."""
    dataset = _mixed_folder(tmp_path, [(40, 56), (40, 56), (48, 40), (40, 56), (40, 56)])
    dataset.transform = _as_float64(dataset.transform)
    def runs(batch_size):
        return [b["image"].shape[0] for items in val_loader(dataset, {"batch_size": batch_size}, 0)
                for b in same_size_batches(items)]

    assert runs(5) == [2, 1, 2] and runs(2) == [2, 1, 1, 1]
    model = _model("da")
    one, _ = evaluate(model, val_loader(dataset, {"batch_size": 1}, 0), 5)
    batched, _ = evaluate(model, val_loader(dataset, {"batch_size": 5}, 0), 5)
    assert one["confusion"].sum() == 4 * 40 * 56 + 48 * 40  # every pixel of every image, once
    assert torch.equal(one["confusion"], batched["confusion"])
    assert one["mIoU"] == batched["mIoU"]


def test_predictor_predicts_a_list_in_batches(trained_run):
    predictor = segattn.load(os.path.join(trained_run, "checkpoints", "best.pt"))
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, s, dtype=np.uint8) for s in [(64, 96, 3), (64, 96, 3), (50, 70, 3), (64, 96, 3)]]
    one = [predictor.predict(im, output="probs") for im in images]
    for batch_size in (None, 2, 1):
        batched = predictor.predict(images, inference={"batch_size": batch_size}, output="probs")
        assert [b.shape for b in batched] == [o.shape for o in one]
        for b, o in zip(batched, one):
            np.testing.assert_allclose(b, o, atol=1e-5, rtol=1e-5)
    calls = []
    forward = predictor.model.forward
    predictor.model.forward = lambda x: calls.append(x.shape[0]) or forward(x)
    predictor.predict(images)  # default: 4 images of one size at a time
    assert calls == [2, 1, 1]
    predictor.model.forward = forward
