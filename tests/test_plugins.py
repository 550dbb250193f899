"""Bring your own head: examples/pooled_attention.py, a module outside the package, through every route a
built-in head takes (train.py, eval.py, export.py, segattn.load, a config folder of one's own), and what a
checkpoint of a plugin's head does without its plugin (refuses, naming it; never imports it)."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import segattn
from conftest import EXAMPLE_PLUGIN, REPO, TINY, forget_plugins, run_eval, run_train
from segattn.cli import compose_train_config
from segattn.models.attention import ATTENTIONS
from segattn.models.heads import head_facts, head_names
from segattn.plugins import import_plugins, plugin_of


@pytest.fixture(scope="module")
def plugin_run(tiny_root, tmp_path_factory):
    """Two iterations of the example plugin's head through train.py; the run directory. The plugin is
    imported by train.py (the ``plugins`` key) and forgotten after this module's tests."""
    forget_plugins()
    run = tmp_path_factory.mktemp("plugin_run")
    run_train([*TINY, f"plugins=[{EXAMPLE_PLUGIN}]", "head=custom", "head.name=pooled_nl", "+head.pool_size=3",
               f"dataset.root={tiny_root}", "trainer.max_iters=2", "trainer.val_interval=2", f"hydra.run.dir={run}"])
    yield run
    forget_plugins()


def test_train_records_the_plugin_and_its_options(plugin_run):
    ckpt = torch.load(plugin_run / "checkpoints" / "last.pt", weights_only=True)
    cfg = ckpt["config"]
    assert cfg["head"]["name"] == "pooled_nl" and cfg["head"]["pool_size"] == 3  # +head.<key> reached the module
    assert cfg["plugins"] == [EXAMPLE_PLUGIN] and cfg["head_plugin"] == EXAMPLE_PLUGIN
    assert "head.attention.gamma" in ckpt["model"]
    assert plugin_of("pooled_nl") == EXAMPLE_PLUGIN and "pooled_nl" in head_names()
    facts = head_facts("pooled_nl")  # only what the plugin declares: the taxonomy, no paper or reference
    assert facts.taxonomy == {"weights": "matmul", "applied": "matmul", "domain": "spatial"} and facts.paper is None


def test_eval_export_and_load_take_the_plugin(plugin_run, tmp_path):
    ckpt = str(plugin_run / "checkpoints" / "last.pt")
    run_eval([f"checkpoint={ckpt}", f"plugins=[{EXAMPLE_PLUGIN}]", "progress=false", f"hydra.run.dir={tmp_path / 'eval'}"])
    assert 0.0 <= json.load(open(tmp_path / "eval" / "eval.json"))["mIoU"] <= 1.0

    from segattn.deploy import export_checkpoint, load_exported

    info = export_checkpoint(ckpt, "torchscript", str(tmp_path / "model.torchscript.pt"), [64, 64],
                             plugins=[EXAMPLE_PLUGIN])
    predictor = segattn.load(ckpt, plugins=[EXAMPLE_PLUGIN])
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(load_exported(info["path"])(x), predictor.model.predict(x), atol=1e-4, rtol=0)
    mask = predictor.predict(torch.rand(64, 96, 3).numpy())
    assert mask.shape == (64, 96)


def test_a_checkpoint_never_imports_its_plugin(plugin_run, tmp_path):
    """In a fresh process (nothing imported: the point of the subprocess), eval.py without plugins= refuses in
    one paragraph that names the module and the key, and the plugin's module was not run."""
    ckpt = str(plugin_run / "checkpoints" / "last.pt")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "eval.py"), f"checkpoint={ckpt}",
                           f"hydra.run.dir={tmp_path / 'eval'}"], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    # Had the checkpoint imported its plugin, pooled_nl would be registered and eval.py would have run.
    assert "Traceback" not in err and "head 'pooled_nl' is not registered" in err
    assert f"plugins=[{EXAMPLE_PLUGIN}]" in err and "never imports code by itself" in err
    assert not os.path.exists(tmp_path / "eval")  # refused: no run directory left behind


def test_segattn_load_refuses_without_the_plugin(plugin_run, monkeypatch):
    ckpt = str(plugin_run / "checkpoints" / "last.pt")
    monkeypatch.delitem(ATTENTIONS, "pooled_nl")  # as in a process that never imported it
    with pytest.raises(ValueError, match=r"head 'pooled_nl' is not registered.*plugins=\[.*pooled_attention.py"):
        segattn.load(ckpt)


def test_a_config_folder_of_ones_own_adds_the_heads_yaml():
    """hydra.searchpath: examples/conf/head/pooled_nl.yaml is chosen as head=pooled_nl, like a built-in head."""
    conf = os.path.join(REPO, "examples", "conf")
    cfg = compose_train_config([f"hydra.searchpath=[file://{conf}]", "head=pooled_nl",
                                f"plugins=[{EXAMPLE_PLUGIN}]"], prog="test")
    assert cfg["head"] == {"name": "pooled_nl", "channels": 512, "dropout": 0.1, "concat_input": True,
                           "reduction": 2, "pool_size": 4}
    assert cfg["plugins"] == [EXAMPLE_PLUGIN]


def test_head_custom_without_a_name_says_what_to_set():
    from segattn.models.heads import build_head

    cfg = compose_train_config(["head=custom"], prog="test")
    with pytest.raises(ValueError, match=r"head=custom runs a mechanism .* set head.name=<the name your plugin"):
        build_head(cfg["head"], [8, 16, 32, 64], 3)


def test_plugins_by_module_name_and_their_errors(tmp_path, monkeypatch):
    """A module name on sys.path works as a file does; taxonomy and paper are optional for a plugin (checked
    when given); a missing file, a missing module, a failing import and a repeated name are one ValueError
    naming plugins."""
    (tmp_path / "lab_gate.py").write_text(
        "import torch, torch.nn as nn\nimport segattn\n\n"
        "@segattn.register_attention('lab_gate')\nclass LabGate(nn.Module):\n"
        "    def __init__(self, channels):\n        super().__init__()\n        self.w = nn.Parameter(torch.ones(channels))\n"
        "    def forward(self, x):\n        return x * torch.sigmoid(self.w)[:, None, None]\n")
    (tmp_path / "broken.py").write_text("raise RuntimeError('half-written')\n")
    (tmp_path / "bad_words.py").write_text(
        "import torch.nn as nn\nimport segattn\n\n@segattn.register_attention('bad_words')\nclass B(nn.Module):\n"
        "    taxonomy = dict(weights='magic', applied='add', domain='spatial')\n")
    (tmp_path / "twice.py").write_text(
        "import torch.nn as nn\nimport segattn\n\n@segattn.register_attention('se')\nclass B(nn.Module):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert import_plugins(["lab_gate"]) == ["lab_gate"] and import_plugins("lab_gate") == []  # once only
        assert plugin_of("lab_gate") == "lab_gate" and plugin_of("se") is None
        for plugins, words in ([str(tmp_path / "missing.py")], "is not a file"), (["no_such_module"], "no module named"), \
                ([str(tmp_path / "broken.py")], "RuntimeError: half-written"), \
                ([str(tmp_path / "bad_words.py")], "uses ['magic']"), ([str(tmp_path / "twice.py")], "registered twice"):
            with pytest.raises(ValueError, match="plugins") as e:
                import_plugins(plugins)
            assert words in str(e.value)
    finally:
        forget_plugins()
        sys.modules.pop("lab_gate", None)
    assert "lab_gate" not in ATTENTIONS


def test_a_built_in_mechanism_must_declare_its_facts():
    from segattn.models.attention import register

    class NoFacts(nn.Module):
        pass

    NoFacts.__module__ = "segattn.models.attention.nofacts"
    with pytest.raises(TypeError, match="must define class attribute 'taxonomy'"):
        register("nofacts")(NoFacts)
    assert "nofacts" not in ATTENTIONS


def test_the_context_suite_trains_a_plugins_cells_and_places_them(tmp_path, monkeypatch):
    """``context.py --plugins FILE --heads pooled_nl --quick``: the plugin's cells train with the suite's settings
    in fresh processes and stay in the cache (never in results/), keyed by the plugin's source; placement.md sets
    them against the built-in heads' cells of those settings (here: an FCN and an nl cell already there), with
    the nearest head of the same taxonomy."""
    from benchmarks import common, context

    monkeypatch.setattr(common, "RESULTS", str(tmp_path / "results"))
    cache = tmp_path / "cache"
    argv = ["--quick", "--plugins", EXAMPLE_PLUGIN, "--heads", "pooled_nl", "--tasks", "which_marker", "--seeds", "0",
            "--jobs", "2", "--cache", str(cache)]
    try:
        args = context.parse_args(argv)
        s = context.settings(args)
        folder = os.path.join(context.cells_root(args, s), "which_marker")
        os.makedirs(folder)
        for head, value in (("fcn", 0.125), ("nl", 0.25)):  # built-in heads' cells of these settings, as a run leaves them
            with open(os.path.join(folder, f"{head}_seed0.json"), "w") as f:
                json.dump({"task": "which_marker", "head": head, "seed": 0, "mIoU": 0.5, "object_mIoU": value,
                           "object_recall": 0.5, **{f"IoU_{c}": 0.5 for c in ("car", "truck", "road", "traffic light",
                                                                             "traffic sign")},
                           "head_params": 1000, "seconds": 1.0, "residual_scales": {}}, f)
        result = context.main(argv)
        assert result["info"]["trained"] == 1  # the plugin's head alone; the FCN and nl came from their cells
        assert result["out"] == str(cache / "plugin_reports" / "pooled_nl")
        assert not os.path.exists(tmp_path / "results")
        (cell,) = [c for c in result["cells"] if c["head"] == "pooled_nl"]
        assert 0.0 <= cell["object_mIoU"] <= 1.0
        stored = [os.path.join(d, f) for d, _, fs in os.walk(cache / "plugin_cells") for f in fs
                  if f == "pooled_nl_seed0.json"]
        (folder,) = [os.path.dirname(os.path.dirname(p)) for p in stored]
        recorded = json.load(open(os.path.join(folder, "settings.json")))
        assert recorded["plugin"] == EXAMPLE_PLUGIN and len(recorded["plugin_source"]) == 10
        text = open(os.path.join(result["out"], "placement.md")).read()
        row = next(line for line in text.splitlines() if line.startswith("| `pooled_nl` | which_marker"))
        assert "matmul / matmul / spatial" in row and "`nl` 25.0 (1)" in row
    finally:
        forget_plugins()
