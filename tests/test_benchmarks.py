"""The benchmark scripts run end to end on tiny sizes (so they cannot rot), and their measuring tools
count what they claim to count. No wall-clock assertions: timings on a shared machine prove nothing."""

from __future__ import annotations

import csv
import os

import pytest
import torch

from benchmarks import checkpoint, common, fused, heads, inference, scaling, train_speed
from segattn.models.attention import build_attention


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_flops_and_memory_tools_count_what_they_claim():
    # Non-local at 8x8, C=512, C'=256: four 1x1 convs and two HW x HW x C' products, 2 FLOPs per MAC.
    hw, c, ci = 64, 512, 256
    m = build_attention("nl", c, impl="explicit").eval()  # the map as bmm + softmax (fused: flash attention)
    x = torch.randn(1, c, 8, 8)
    f = common.count_flops(lambda: m(x))
    assert f.matmul == 2 * (3 * hw * c * ci + hw * ci * c) + 2 * (2 * hw * hw * ci)
    assert f.other_by_op["_softmax"] == 5 * hw * hw and not f.uncounted
    # Memory counted on meta is what real CPU tensors allocate (mhsa: the CPU's flash attention kernel).
    for name, ch in (("cc", 32), ("mhsa", 32), ("psa", 32)):
        on_meta = common.activation_memory(build_attention(name, ch),
                                           lambda: [torch.empty(1, ch, 12, 12, device="meta")], "meta")
        on_cpu = common.activation_memory(build_attention(name, ch), lambda: [torch.randn(1, ch, 12, 12)], "cpu")
        # Equal up to BatchNorm's saved statistics (2 x C floats per layer: empty on the CPU in eval).
        for k in on_cpu:
            assert abs(on_meta[k] - on_cpu[k]) <= 2048, (name, k, on_meta, on_cpu)
        assert 0 < on_meta["fwd"] < on_meta["train"]


def test_heads_benchmark_tiny(tmp_path):
    threads = torch.get_num_threads()
    out = heads.main(["--size", "8", "--heads", "fcn,cc,nl", "--quick", "--rounds", "1", "--warmup", "0",
                      "--threads", "2", "--out", str(tmp_path)])
    md = open(tmp_path / "heads_s8.md").read()
    for name in ("fcn", "cc", "nl"):
        assert f"\n| {name} | " in md
    rows = {r["head"]: r for r in _rows(tmp_path / "heads_s8.csv")}
    assert set(rows) == {"fcn", "cc", "nl"} and rows["fcn"]["mech_flops"] == ""
    assert float(rows["cc"]["mech_fwd_s"]) > 0 and int(rows["nl"]["head_params"]) > int(rows["fcn"]["head_params"])
    # The EMANet table's 43.1 GMACs (fc0 + EMAU at 65x65) is reproduced by our counts.
    assert "| 43.1 | 43.1 |" in md
    assert torch.get_num_threads() == threads, "main() must restore the caller's thread count"
    assert out["times"].keys() >= {"cc", "nl"}


def test_scaling_benchmark_tiny(tmp_path):
    out = scaling.main(["--quick", "--sizes", "8,12,16", "--heads", "nl,cc,gc", "--channels", "16", "--rounds", "1",
                        "--warmup", "0", "--out", str(tmp_path)])
    assert os.path.isfile(tmp_path / "scaling.md") and len(_rows(tmp_path / "scaling.csv")) == 9
    slopes = scaling.exponents(out["rows"], ["nl", "cc", "gc"], "flops")
    assert slopes["nl"] > 1.4 > slopes["cc"] > slopes["gc"] - 0.05 and 0.9 < slopes["gc"] < 1.1


def test_train_speed_benchmark_tiny(tmp_path, tiny_root):
    out = train_speed.main(["--quick", "--configs", "default", "--steps", "1", "--warmup", "0", "--peak-sizes", "128",
                            "--root", tiny_root, "--out", str(tmp_path), "--overrides", "backbone.width=8",
                            "head.channels=16", "model.aux_head.channels=8", "dataset.crop_size=[32,32]",
                            "trainer.batch_size=2", "trainer.num_workers=0"])
    r = out["results"][0]
    assert r["batch"] == 2 and r["step_flops"] > 0 and 0 <= r["data_share"] <= 1 and r["images_per_s"] > 0
    assert "| default | resnet18 + fcn | 32x32 |" in open(tmp_path / "train_speed.md").read()



def test_quick_and_partial_runs_never_overwrite_the_full_results(tmp_path, monkeypatch):
    """Without --out, a --quick run writes results/quick/ and a run of some heads results/partial/:
    only a full run writes the committed results/ files."""
    monkeypatch.setattr(common, "RESULTS", str(tmp_path))
    assert common.results_dir(None, quick=False, partial=False) == os.path.join(str(tmp_path), "")
    assert common.results_dir("elsewhere", quick=True, partial=True) == "elsewhere"
    heads.main(["--size", "8", "--heads", "fcn", "--rounds", "1", "--warmup", "0"])
    fused.main(["--size", "6", "--heads", "da", "--quick", "--rounds", "1", "--warmup", "0", "--threads", "1"])
    scaling.main(["--quick", "--sizes", "4,6", "--heads", "gc", "--channels", "8", "--rounds", "1", "--warmup", "0"])
    out = inference.main(["--quick", "--heads", "fcn", "--warmup", "0", "--threads", "1"])
    assert [(r["mode"], r["ratio"] > 0) for r in out["rows"]] == [("whole", True), ("slide", True)]
    assert sorted(os.listdir(tmp_path)) == ["partial", "quick"]
    assert sorted(os.listdir(tmp_path / "quick")) == ["fused.csv", "fused.md", "inference.csv", "inference.md",
                                                      "scaling.csv", "scaling.md", "scaling.png"]
    assert sorted(os.listdir(tmp_path / "partial")) == ["heads_s8.csv", "heads_s8.md"]


def test_fused_benchmark_tiny(tmp_path):
    """The blocked kernel's row: forward FLOPs equal to the explicit form's, and the value cut into
    heads (what ran before) shown beside with its surplus."""
    out = fused.main(["--size", "6", "--heads", "da", "--rounds", "1", "--warmup", "0", "--threads", "1",
                      "--out", str(tmp_path)])
    md = open(tmp_path / "fused.md").read()
    assert "| module `da` | 1.000x (yes) |" in md and "DA head step vs mmseg's DAHead" in md
    pam = out["kernels"][0]
    assert pam["blocked_fwd_gflops"] == pam["explicit_fwd_gflops"] < pam["head_split_fwd_gflops"]
    assert {r["mechanism"] for r in _rows(tmp_path / "fused.csv")} == {"da"}


def test_checkpoint_benchmark_tiny(tmp_path):
    """last.pt as the trainer writes it (weights and SGD's momentum: about twice the weights), timed beside a
    training step; the temporary checkpoint folder is removed, the report says what an interval adds."""
    out = checkpoint.main(["--out", str(tmp_path), "--dir", str(tmp_path), "--crop", "32,32", "--batch", "1",
                           "--rounds", "1", "--warmup", "0", "--threads", "1", "backbone.width=8", "head.channels=16",
                           "model.aux_head.channels=8"])
    r = out["row"]
    assert 1.8 < r["file_mib"] / r["weights_mib"] < 2.3, r
    assert r["step_s"] > 0 and r["save_s"] > 0 and r["load_s"] > 0
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.csv", "checkpoint.md"]
    report = (tmp_path / "checkpoint.md").read_text()
    assert "every 8000 iterations" in report and "`trainer.ckpt_interval_min=15`" in report
