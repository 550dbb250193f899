"""segattn.load / Predictor.predict on the session's trained checkpoint, and export of every head.

The export test is parametrised over the registry (conf/head/<name>.yaml, a tiny backbone): each head
is exported in each format at 64x96, run on a second input (another size and batch where the head
exports with dynamic sizes) and compared with the PyTorch model. ONNX needs onnx, onnxscript and
onnxruntime (the ``dev`` and ``export`` extras install them).
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import segattn
from segattn.deploy import FORMATS, export_checkpoint, export_limits, export_model, export_reason, json_path, load_exported
from segattn.models import build_model

from conftest import REPO

# conf/head/custom.yaml is no head of its own: the generic head's keys for a plugin's mechanism (head.name=...).
HEADS = sorted({os.path.splitext(f)[0] for f in os.listdir(os.path.join(REPO, "conf", "head"))} - {"custom"})
SIZE, SIZE2 = (64, 96), (72, 104)  # the second size has odd feature sides (9x13 at stride 8): another branch
TOL = 1e-4


@pytest.fixture(scope="module")
def checkpoint(trained_run) -> str:
    return os.path.join(trained_run, "checkpoints", "last.pt")


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return segattn.load(checkpoint)


def _picture(h=48, w=80, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_load_is_an_eval_module_with_classes_and_palette(predictor, checkpoint):
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert isinstance(predictor, torch.nn.Module) and not predictor.training
    assert predictor.classes == list(ckpt["config"]["classes"])
    assert predictor.palette.shape == (len(predictor.classes), 3) and predictor.palette.dtype == np.uint8
    assert predictor.settings() == {"mode": "whole", "scales": [1.0], "flip": False, "window_batch": 4}


def test_predict_matches_the_evaluation_path(predictor, trained_run):
    """A path, a numpy array and a PIL image give the same mask, equal to what eval.py predicts."""
    from segattn.data import build_dataset

    ds = build_dataset("mini", predictor.config["dataset"]["root"], "val")
    item = ds[0]
    expected = predictor.model.predict(item["image"][None]).argmax(1)[0].numpy()
    rgb = np.asarray(Image.open(item["path"]).convert("RGB"))
    by_path = predictor.predict(item["path"])
    assert by_path.dtype == np.int64 and by_path.shape == rgb.shape[:2]
    np.testing.assert_array_equal(by_path, expected)
    np.testing.assert_array_equal(predictor.predict(rgb), expected)
    np.testing.assert_array_equal(predictor.predict(Image.fromarray(rgb)), expected)


def test_predict_batches_probs_and_slide(predictor):
    a, b = _picture(48, 80, 0), _picture(40, 56, 1)
    masks = predictor.predict([a, b])
    assert isinstance(masks, list) and [m.shape for m in masks] == [(48, 80), (40, 56)]
    np.testing.assert_array_equal(masks[1], predictor.predict(b))
    probs = predictor.predict(a, output="probs")
    assert probs.shape == (len(predictor.classes), 48, 80) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(0), masks[0])
    # slide without a window: the training crop (64x64), 2/3 of it apart; inference.* keys as eval.py
    assert predictor.settings("slide")["crop_size"] == [64, 64] and predictor.settings("slide")["stride"] == [43, 43]
    slide = predictor.predict(_picture(70, 150, 2), inference="slide", output="probs")
    assert slide.shape == (len(predictor.classes), 70, 150) and np.isfinite(slide).all()
    tta = predictor.predict(a, inference={"scales": [0.75, 1.0], "flip": True}, output="probs")
    np.testing.assert_allclose(tta.sum(0), 1.0, atol=1e-5)


def test_colorize_with_the_palette(predictor):
    mask = np.array([[0, 1], [255, len(predictor.classes) - 1]])
    rgb = segattn.colorize(mask, predictor.palette)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 0] == predictor.palette[0]).all() and (rgb[1, 0] == 0).all()
    np.testing.assert_array_equal(rgb, segattn.colorize(mask, len(predictor.classes)))


def test_predict_and_load_refuse_bad_input(predictor, tmp_path):
    with pytest.raises(ValueError, match="H x W x 3 RGB, H x W gray or H x W x 4 RGBA"):  # gray is taken
        predictor.predict(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="output='logits'"):
        predictor.predict(_picture(), output="logits")
    with pytest.raises(ValueError, match="inference.mode='tiles'"):
        predictor.predict(_picture(), inference="tiles")
    with pytest.raises(ValueError, match="missing.png: cannot read"):
        predictor.predict(str(tmp_path / "missing.png"))
    weights = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, weights)
    with pytest.raises(ValueError, match="is not a segattn checkpoint.*backbone.pretrained"):
        segattn.load(str(weights))
    with pytest.raises(FileNotFoundError, match="no such file"):
        segattn.load(str(tmp_path / "nothing.pt"))


class _Stem(torch.nn.Module):
    """``[c2, c3, c4, c5]`` of the widths and sizes the dilated ResNet-18 (width 8) gives, from two strided
    convolutions: what the per-head ONNX / torch.export test translates is then the head, not 33 copies of the
    same ResNet, whose own export test_export_entry_point and tests/test_first_hour.py check."""

    channels = [8, 16, 32, 64]

    def __init__(self):
        super().__init__()
        self.c2 = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1)  # the stem's stride-2 conv and max-pool
        self.c3 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.c4 = torch.nn.Conv2d(16, 32, 1)  # dilated stages: same size
        self.c5 = torch.nn.Conv2d(32, 64, 1)

    def forward(self, x):
        c2 = self.c2(x)
        c3 = self.c3(c2)
        c4 = self.c4(c3)
        return [c2, c3, c4, self.c5(c4)]


def _tiny(name: str, stem: bool = False) -> torch.nn.Module:
    head = OmegaConf.to_container(OmegaConf.load(os.path.join(REPO, "conf", "head", f"{name}.yaml")))
    head["channels"] = 64 if name == "sge" else 16  # SGE: a multiple of its 64 groups
    if "attention_channels" in head:
        head["attention_channels"] = 16
    torch.manual_seed(0)
    model = build_model({"depth": 18, "output_stride": 8, "width": 8}, head, 4, {"channels": 8})
    if stem:
        model.backbone = _Stem()
    with torch.no_grad():  # BN statistics that are not the identity, so a wrong graph shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _export_and_compare(name: str, fmt: str, tmp_path, model: torch.nn.Module | None = None) -> None:
    model = _tiny(name) if model is None else model
    path = str(tmp_path / f"{name}{FORMATS[fmt]}")
    unsupported = export_reason(name, fmt, dynamic=False)
    if unsupported:
        with pytest.raises(ValueError, match="cannot be exported"):
            export_model(model, path, fmt, SIZE, head=name)
        return
    dynamic = export_reason(name, fmt, dynamic=True) is None
    if not dynamic:  # asking for it says why, in one line
        with pytest.raises(ValueError, match=r"with dynamic sizes: .*dynamic=false") as e:
            export_model(model, path, fmt, SIZE, dynamic=True, head=name)
        assert "\n" not in str(e.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and exporter chatter
        info = export_model(model, path, fmt, SIZE, dynamic=dynamic, head=name)
        run = load_exported(path)
        g = torch.Generator().manual_seed(1)
        second = torch.randn(2, 3, *SIZE2, generator=g) if dynamic else torch.randn(1, 3, *SIZE, generator=g)
        with torch.no_grad():
            expected = model.predict(second)
            got = run(second)
    assert got.shape == expected.shape
    diff = (got - expected).abs().max().item()
    assert diff <= TOL, f"{name} as {fmt}: max abs diff {diff:.2e}"
    assert json.load(open(json_path(path, fmt))) == json.loads(json.dumps(info))
    assert info["dynamic"] == dynamic and len(info["classes"]) == 4 and info["input_size"] == list(SIZE)


@pytest.fixture(scope="module")
def onnx_table_once():
    """torch.onnx.export builds its table of ONNX functions (onnxscript's torchlib) anew on every call, parsing
    each function's source: about a second per export here, more than a tiny model's own translation. The table
    depends only on the opset, and an export without a custom translation table only reads it, so this module
    builds it once (the same table every export would build)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from torch.onnx._internal.exporter import _registration

    build = _registration.ONNXRegistry.from_torchlib  # bound to the class
    tables = {}

    def from_torchlib(cls, *args, **kwargs):
        key = (args, tuple(sorted(kwargs.items())))
        if key not in tables:
            tables[key] = build(*args, **kwargs)
        return tables[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_registration.ONNXRegistry, "from_torchlib", classmethod(from_torchlib))
        yield


@pytest.mark.parametrize("name", HEADS)
def test_every_head_exports_with_torchscript(name, tmp_path):
    _export_and_compare(name, "torchscript", tmp_path)


@pytest.mark.parametrize("name", HEADS)
def test_every_head_exports_as_exported_program_and_onnx(name, tmp_path, monkeypatch, onnx_table_once):
    """export_model translates ONNX from the model's ExportedProgram: the program traced for the ``.pt2`` file
    is the one the ``.onnx`` file is translated from, instead of tracing the same model a second time. The head
    sits on ``_Stem``, not the ResNet: the per-head part of the graph is what differs between heads."""
    import segattn.deploy as deploy

    model, trace, programs = _tiny(name, stem=True), deploy._exported_program, {}

    def trace_once(graph, example, dynamic):
        assert graph.model is model  # the same model, at the same example size
        key = (tuple(example.shape), dynamic)
        if key not in programs:
            programs[key] = trace(graph, example, dynamic)
        return programs[key]

    monkeypatch.setattr(deploy, "_exported_program", trace_once)
    _export_and_compare(name, "exported_program", tmp_path, model)
    _export_and_compare(name, "onnx", tmp_path, model)


def test_export_limits_name_registered_heads_and_formats():
    from segattn.models.heads import head_names

    assert sorted(head_names()) == HEADS  # every registered head has its conf/head yaml, and back
    for head in head_names():
        static_only, unsupported = export_limits(head)
        assert set(static_only) | set(unsupported) <= set(FORMATS), head


def test_export_entry_point(checkpoint, tmp_path, capsys):
    """export.py checkpoint=... format=...: the file and its JSON, equal to the checkpoint's model."""
    from conftest import _run_hydra_main

    out = str(tmp_path / "model.pt2")
    _run_hydra_main("export", [f"checkpoint={checkpoint}", "format=exported_program", f"output={out}",
                               "input_size=[64,96]", "dynamic=false", f"hydra.run.dir={tmp_path / 'run'}"])
    meta = json.load(open(tmp_path / "model.pt2.json"))
    predictor = segattn.load(checkpoint)
    assert meta["classes"] == predictor.classes and meta["palette"] == predictor.palette.tolist()
    assert meta["mean"] == list(predictor.mean) and meta["input_size"] == [64, 96]
    x = torch.randn(1, 3, 64, 96)
    torch.testing.assert_close(load_exported(out)(x), predictor.model.predict(x), atol=TOL, rtol=0)
    # the default size is the training crop, the default file sits beside the checkpoint
    import shutil

    copy = shutil.copy(checkpoint, tmp_path / "best.pt")  # not beside the shared run's checkpoints
    _run_hydra_main("export", [f"checkpoint={copy}", "format=torchscript", f"hydra.run.dir={tmp_path / 'run'}"])
    stem = str(tmp_path / "best")
    assert os.path.isfile(stem + ".torchscript.pt") and json.load(open(stem + ".torchscript.pt.json"))["input_size"] == [64, 64]
    with pytest.raises(ValueError, match="format='tflite'; expected one of onnx, torchscript, exported_program"):
        export_checkpoint(checkpoint, "tflite")
    with pytest.raises(ValueError, match=r"input_size=\[0, 4\]: expected \[H, W\] of positive integers"):
        export_checkpoint(checkpoint, "torchscript", str(tmp_path / "x.torchscript.pt"), [0, 4])
    with pytest.raises(SystemExit, match="export_format"):
        _run_hydra_main("export", [f"checkpoint={checkpoint}", "export_format=onnx"])
    # as the user typed it: one paragraph naming the key, exit 1, no traceback
    with pytest.raises(SystemExit) as exc:
        _run_hydra_main("export", [f"checkpoint={checkpoint}", f"hydra.run.dir={tmp_path / 'run2'}"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "export.py: error: format=... required" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        _run_hydra_main("export", [f"checkpoint={checkpoint}", "format=tflite", f"hydra.run.dir={tmp_path / 'run3'}"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "format='tflite'; expected one of" in err and "Traceback" not in err


def test_export_yaml_is_the_schema():
    import dataclasses

    from segattn.config import ExportConfig

    node = OmegaConf.to_container(OmegaConf.load(os.path.join(REPO, "conf", "export.yaml")))
    node = {k: v for k, v in node.items() if k not in ("defaults", "hydra")}
    assert node == dataclasses.asdict(ExportConfig())
