"""best.safetensors: the best model's weights without pickle, read by segattn.load, eval.py, export.py and
model.init_from exactly as best.pt is, and with nothing unpickled on the way."""

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

safetensors_torch = pytest.importorskip("safetensors.torch")

import segattn  # noqa: E402
from segattn.deploy import load_exported  # noqa: E402
from segattn.engine.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from segattn.engine.resume import load_init_weights  # noqa: E402
from segattn.engine.weights import save_weights  # noqa: E402

from conftest import _run_hydra_main, run_eval  # noqa: E402


def _paths(run_dir):
    ckpts = os.path.join(run_dir, "checkpoints")
    return (os.path.join(ckpts, "best.pt"), os.path.join(ckpts, "best.safetensors"),
            os.path.join(ckpts, "best.json"))


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any unpickling (torch.load, pickle) fails the test from here on."""
    def refuse(*args, **kwargs):
        raise AssertionError("unpickled on the safetensors path")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


def test_the_best_weights_are_written_as_safetensors_beside_their_json(trained_run):
    pt, st, meta = _paths(trained_run)
    best = load_checkpoint(pt)
    tensors = safetensors_torch.load_file(st)  # the library's own reader
    assert tensors.keys() == best["model"].keys()
    assert all(tensors[k].dtype == v.dtype and torch.equal(tensors[k], v) for k, v in best["model"].items())
    record = json.load(open(meta))
    assert record["iter"] == best["iter"] and record["best"] == best["best"]
    assert record["metrics"] == json.loads(json.dumps(best["metrics"]))
    assert record["config"] == json.loads(json.dumps(best["config"]))
    assert not [f for f in os.listdir(os.path.dirname(st)) if f.endswith(".tmp")]


def test_load_predicts_the_same_from_either_form_without_unpickling(trained_run, tiny_root, request):
    pt, st, _ = _paths(trained_run)
    image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    from_pt = segattn.load(pt).predict(image, output="probs")
    request.getfixturevalue("no_unpickling")
    predictor = segattn.load(st)
    assert np.array_equal(predictor.predict(image, output="probs"), from_pt)  # identical, not close
    assert predictor.classes[0] == "road" and predictor.crop_size == [64, 64]
    # model.init_from reads it too: every weight of a fresh model becomes the run's
    model, _ = model_from_checkpoint(st)
    fresh, _ = model_from_checkpoint(st)
    for p in fresh.parameters():
        torch.nn.init.zeros_(p)
    assert load_init_weights(fresh, st) == []
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_eval_and_export_take_the_safetensors_weights(trained_run, tiny_root, tmp_path, request):
    pt, st, _ = _paths(trained_run)
    common = ["num_workers=0", "progress=false", f"dataset.root={tiny_root}"]
    run_eval([f"checkpoint={pt}", *common, f"hydra.run.dir={tmp_path / 'a'}"])
    request.getfixturevalue("no_unpickling")
    run_eval([f"checkpoint={st}", *common, f"hydra.run.dir={tmp_path / 'b'}"])
    a, b = (json.load(open(tmp_path / r / "eval.json")) for r in "ab")
    assert b["checkpoint"] == os.path.abspath(st) and b["iter"] == a["iter"]
    for key in ("mIoU", "mAcc", "aAcc", "IoU", "Acc"):
        assert b[key] == a[key], key
    # export.py: the default file beside the weights, a graph that computes the model's logits
    copy = shutil.copy(st, tmp_path / "best.safetensors")
    _run_hydra_main("export", [f"checkpoint={copy}", "format=torchscript", f"hydra.run.dir={tmp_path / 'x'}"])
    assert json.load(open(tmp_path / "best.torchscript.pt.json"))["input_size"] == [64, 64]
    x = torch.randn(1, 3, 64, 64)
    model, _ = model_from_checkpoint(st)
    expected = torch.nn.functional.interpolate(model.eval()(x)["out"], size=(64, 64), mode="bilinear",
                                               align_corners=False)
    torch.testing.assert_close(load_exported(str(tmp_path / "best.torchscript.pt"))(x), expected,
                               atol=1e-5, rtol=0)


def test_bad_weights_files_are_named(trained_run, tmp_path):
    _, st, _ = _paths(trained_run)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(open(st, "rb").read()[:5000])
    with pytest.raises(ValueError, match=r"cut.safetensors.*cannot be read as safetensors"):
        segattn.load(str(cut))
    # weights from another tool: no record in the header and no JSON beside them
    bare = tmp_path / "bare.safetensors"
    safetensors_torch.save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(ValueError, match=r"bare.safetensors.*no 'segattn' entry and there is no .*bare.json"):
        segattn.load(str(bare))
    # the JSON beside them is enough (weights written by another tool, the record kept next to them)
    weights = safetensors_torch.load_file(st)
    record = json.load(open(st[:-len(".safetensors")] + ".json"))
    safetensors_torch.save_file(weights, str(tmp_path / "side.safetensors"))
    shutil.copy(st[:-len(".safetensors")] + ".json", tmp_path / "side.json")
    assert load_checkpoint(str(tmp_path / "side.safetensors"))["config"] == record["config"]
    # and save_weights writes both, atomically
    save_weights(str(tmp_path / "again.pt"), weights, record)
    assert sorted(os.listdir(tmp_path / ".")) == ["again.json", "again.safetensors", "bare.safetensors",
                                                   "cut.safetensors", "side.json", "side.safetensors"]
    assert load_checkpoint(str(tmp_path / "again.safetensors"))["iter"] == record["iter"]
