"""End to end through train.py (in-process, one shared run) and the pieces of the loop."""

import glob
import json
import os

import pytest
import torch

from segattn.engine.checkpoint import load_checkpoint
from segattn.engine.optim import lr_factor

from conftest import TINY, run_train


def test_run_writes_checkpoints_metrics_and_events(trained_run):
    assert os.path.isfile(os.path.join(trained_run, ".hydra", "config.yaml"))
    ckpt = load_checkpoint(os.path.join(trained_run, "checkpoints", "last.pt"))
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "iter", "config", "best", "rng"}
    # best.pt: what evaluation and fine-tuning need, no optimizer state (about half the size with SGD).
    best = load_checkpoint(os.path.join(trained_run, "checkpoints", "best.pt"))
    assert set(best) == {"model", "iter", "config", "best", "metrics"}
    assert best["metrics"]["mIoU"] == best["best"] and best["metrics"]["iter"] == best["iter"]
    size = {n: os.path.getsize(os.path.join(trained_run, "checkpoints", n)) for n in ("best.pt", "last.pt")}
    assert size["best.pt"] < 0.6 * size["last.pt"]
    assert load_checkpoint(os.path.join(trained_run, "checkpoints", "last.pt"))["iter"] == 4
    metrics = json.load(open(os.path.join(trained_run, "metrics.json")))
    assert 0.0 <= metrics["mIoU"] <= 1.0 and 0.0 <= metrics["aAcc"] <= 1.0
    assert set(metrics["IoU"]) == {"road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                                   "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                                   "truck", "bus", "train", "motorcycle", "bicycle"}
    assert not glob.glob(os.path.join(trained_run, "checkpoints", "*.tmp"))


def test_tensorboard_has_scalars_and_images(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = glob.glob(os.path.join(trained_run, "events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(trained_run, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/lr", "val/mIoU", "val/aAcc"} <= set(tags["scalars"])
    assert any(t.startswith("val_iou/") for t in tags["scalars"])
    assert [s.step for s in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert "val/image_gt_pred" in tags["images"]
    img = acc.Images("val/image_gt_pred")[-1]
    assert img.width == 3 * 128 and img.height == 2 * 64  # image | gt | prediction, two val images


def test_resume_auto_continues_exactly(trained_run, tiny_root, tmp_path):
    """4 iterations straight == 2 iterations, then resume=auto to 4 (same losses, same weights)."""
    common = [*TINY, f"dataset.root={tiny_root}", "trainer.val_interval=2", "trainer.log_interval=1"]
    run_dir = str(tmp_path / "r")
    run_train([*common, "trainer.max_iters=4", f"hydra.run.dir={run_dir}"])
    straight = load_checkpoint(os.path.join(run_dir, "checkpoints", "last.pt"))["model"]
    # The same run cut after 2 of 4 iterations: build the 2-iteration state with the 4-iteration schedule.
    run2 = str(tmp_path / "r2")
    run_train([*common, "trainer.max_iters=4", "trainer.stop_at=2", f"hydra.run.dir={run2}"])
    assert load_checkpoint(os.path.join(run2, "checkpoints", "last.pt"))["iter"] == 2
    run_train([*common, "trainer.max_iters=4", "resume=auto", f"hydra.run.dir={run2}"])
    resumed = load_checkpoint(os.path.join(run2, "checkpoints", "last.pt"))["model"]
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k


def test_lr_schedules():
    assert lr_factor(0, 100, "poly") == 1.0
    assert lr_factor(50, 100, "poly", power=1.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, "poly", min_lr_ratio=0.01) == pytest.approx(0.01)
    assert lr_factor(50, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(0, 100, "poly", warmup_iters=10, warmup_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(5, 100, "poly", power=1.0, warmup_iters=10, warmup_ratio=0.0) == pytest.approx(0.5 * 0.95)


def test_same_seed_same_losses(tiny_root, tmp_path):
    common = [*TINY, f"dataset.root={tiny_root}", "trainer.max_iters=2", "trainer.val_interval=2"]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    run_train([*common, f"hydra.run.dir={a}"])
    run_train([*common, f"hydra.run.dir={b}"])
    ma = load_checkpoint(os.path.join(a, "checkpoints", "last.pt"))["model"]
    mb = load_checkpoint(os.path.join(b, "checkpoints", "last.pt"))["model"]
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_trainer_and_benchmark_share_train_step(tiny_root, tmp_path, monkeypatch):
    """The loop and benchmarks/train_speed.py run ``segattn.engine.trainer.train_step``, not copies of it."""
    from benchmarks import train_speed
    from segattn.engine import trainer

    calls = []
    real = trainer.train_step

    def counting(model, batch, *args, **kwargs):
        calls.append(len(batch) if isinstance(batch, list) else 1)
        return real(model, batch, *args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", counting)
    run_train([*TINY, f"dataset.root={tiny_root}", "trainer.max_iters=2", "trainer.val_interval=2",
               "trainer.grad_accum=2", f"hydra.run.dir={tmp_path / 'run'}"])
    assert calls == [2, 2]  # one call per iteration, with its two micro-batches

    args = train_speed.parse_args(["--root", tiny_root, "--overrides", *TINY])
    st = train_speed.setup_config("default", [], args)
    before = {k: v.clone() for k, v in st["model"].state_dict().items()}
    st["train_step"](next(st["batches"]))
    assert calls == [2, 2, 1]
    assert any(not torch.equal(before[k], v) for k, v in st["model"].state_dict().items())


def test_train_step_steps_and_skips_a_nonfinite_loss():
    from segattn.engine.trainer import train_step
    from segattn.models import build_model

    torch.manual_seed(0)
    model = build_model({"depth": 18, "width": 8}, {"name": "fcn", "channels": 8}, 3, {"channels": 8}).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = {"image": torch.randn(2, 3, 32, 32), "mask": torch.randint(0, 3, (2, 32, 32))}
    w = model.head.cls.weight.detach().clone()
    out = train_step(model, batch, opt)
    assert out.finite and out.lr == 0.1 and out.loss.ndim == 0 and set(out.parts) == {"out", "aux"}
    assert not torch.equal(w, model.head.cls.weight)
    w = model.head.cls.weight.detach().clone()
    buffers = [b.clone() for b in model.buffers()]
    bad = dict(batch, image=torch.full((2, 3, 32, 32), float("nan")))
    out = train_step(model, bad, opt, skip_nonfinite=True)
    assert not out.finite and torch.equal(w, model.head.cls.weight)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))  # BN statistics put back
