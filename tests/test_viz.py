"""Recording attention (segattn.models.attention.record) and drawing it (segattn.viz)."""

import copy
import os

import numpy as np
import pytest
import torch
from PIL import Image

from segattn import viz
from segattn.models.attention import ATTENTIONS, build_attention
from segattn.models.attention.record import (
    Recorder,
    attention_for,
    attention_maps,
    attention_modules,
    gates,
    grid_point,
    has_gates,
    has_spatial,
    record_attention,
    recorded_modules,
    responsibilities,
)
from segattn.models import build_model

NAMES = sorted(ATTENTIONS)
C = 64  # SGE's default 64 groups need a multiple of 64


def _records(m):
    return {name: dict(sub.recorded) for name, sub in m.named_modules() if isinstance(sub, Recorder)}


@pytest.mark.parametrize("name", NAMES)
def test_recording_changes_nothing_and_only_when_asked(name):
    torch.manual_seed(0)
    m = build_attention(name, C)
    assert isinstance(m, Recorder)
    x = torch.randn(2, C, 5, 7)
    for train in (False, True):
        m.train(train)
        twin = copy.deepcopy(m)  # EMA's bases move in training: both copies start equal
        torch.manual_seed(1)  # the same dropout masks
        plain = m(x)
        assert all(not r for r in _records(m).values()), "a module recorded without being asked"
        torch.manual_seed(1)
        with record_attention(twin):
            recorded = twin(x)
        torch.testing.assert_close(recorded, plain, rtol=0, atol=0)
        if train:
            for a, b in zip(m.buffers(), twin.buffers()):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Something to picture: a spatial map, channel gates, or DANet's channel matrix.
    assert attention_modules(twin) == [("", twin)]
    assert recorded_modules(twin)  # the parts that hold the weights (e.g. DANet's pam and cam)
    assert has_spatial(twin) or has_gates(twin)
    # The record stays readable after the block, and later forwards leave it alone.
    before = _records(twin)
    twin(torch.randn(2, C, 3, 4))
    after = _records(twin)
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].keys() == after[key].keys()
        assert all(before[key][k] is after[key][k] for k in before[key])
    assert not any(sub.recording for sub in twin.modules() if isinstance(sub, Recorder))


@pytest.mark.parametrize(
    "name,kw",
    [
        ("nl", {}),
        ("nl", {"sub_sample": True}),
        ("cc", {}),
        ("cc", {"recurrence": 3}),
        ("da", {}),
        ("mhsa", {}),
        ("ema", {"num_bases": 8}),
        ("oc", {}),
        ("oc_pyramid", {}),
        ("oc_asp", {"dilations": [2]}),
        ("psa", {}),
    ],
)
def test_query_attention_is_a_distribution_over_positions(name, kw):
    torch.manual_seed(0)
    m = build_attention(name, 16, **kw).eval()
    if name == "cc":
        m.gamma.data.fill_(0.5)  # the second pass then sees a different input than the first
    x = torch.randn(2, 16, 7, 9)
    with torch.no_grad(), record_attention(m):
        m(x)
    for y, xx in ((0, 0), (3, 4), (6, 8), (5, 1)):
        for index in (0, 1):
            maps = attention_maps(m, y, xx, index)
            for part, a in maps.items():
                assert a.shape == (7, 9), part
                assert a.min() >= 0
                if name == "psa" and part == "distribute":
                    continue  # where i sends to: normalised per receiver, not per sender
                torch.testing.assert_close(a.sum(), torch.tensor(1.0), atol=1e-4, rtol=0, msg=f"{name} {part}")


def test_cc_one_recurrence_stays_on_the_criss_cross_path():
    torch.manual_seed(0)
    m = build_attention("cc", 16, recurrence=1).eval()
    with torch.no_grad(), record_attention(m):
        m(torch.randn(1, 16, 6, 8))
    y, x = 2, 5
    a = attention_for(m, y, x)
    off = torch.ones(6, 8, dtype=torch.bool)
    off[y, :] = False
    off[:, x] = False
    assert a[off].abs().max() == 0
    assert (a[~off] > 0).all()
    torch.testing.assert_close(a.sum(), torch.tensor(1.0))


def _dense(col, row):
    """A pass's (HW, HW) attention matrix from its (H, W, H) column and (H, W, W) row parts."""
    h, w = col.shape[:2]
    a = torch.zeros(h, w, h, w, dtype=col.dtype)
    for i in range(h):
        for j in range(w):
            a[i, j, :, j] += col[i, j]
            a[i, j, i, :] += row[i, j]
    return a.view(h * w, h * w)


def test_cc_composition_is_the_product_of_the_passes():
    torch.manual_seed(0)
    m = build_attention("cc", 16, recurrence=2).eval()
    m.gamma.data.fill_(1.0)
    x = torch.randn(1, 16, 5, 6)
    with torch.no_grad(), record_attention(m):
        m(x)
    (c1, r1), (c2, r2) = m.recorded["passes"]
    # The recorded passes are the ones the forward used.
    col, row = m.attention(x)
    torch.testing.assert_close(c1, col)
    torch.testing.assert_close(r1, row)
    product = _dense(c2[0], r2[0]) @ _dense(c1[0], r1[0])
    for y, xx in ((0, 0), (2, 3), (4, 5)):
        torch.testing.assert_close(attention_for(m, y, xx), product[y * 6 + xx].view(5, 6))
    # Two passes reach everywhere (the paper's reason for R = 2); one pass only the cross.
    assert (attention_for(m, 2, 3) > 0).all()
    assert (attention_for(m, 2, 3, part="pass2") == 0).sum() == 5 * 6 - (5 + 6 - 1)


def test_da_records_its_own_maps():
    torch.manual_seed(0)
    m = build_attention("da", 16).eval()
    x = torch.randn(1, 16, 4, 5)
    with torch.no_grad(), record_attention(m):
        m(x)
    s = m.pam.attention(x)[0]
    torch.testing.assert_close(attention_for(m, 2, 3), s[2 * 5 + 3].view(4, 5))
    cm = m.channel_matrix()
    assert cm.shape == (16, 16)
    torch.testing.assert_close(cm.sum(-1), torch.ones(16))


def test_mhsa_recorded_weights_are_the_ones_the_fused_kernel_used():
    torch.manual_seed(0)
    m = build_attention("mhsa", 16, num_heads=4).eval()
    x = torch.randn(1, 16, 3, 5)
    with torch.no_grad(), record_attention(m):
        m(x)
        # The record holds queries and keys, not the L x L weights: rebuild the weights of every
        # query from attention_maps (one row per position and head), then MultiHead(x, x, x) from them.
        weights = torch.stack([torch.stack([torch.stack([attention_maps(m, i, j)[f"head{h}"].flatten()
                                                         for h in range(4)]) for j in range(5)])
                               for i in range(3)]).view(15, 4, 15).transpose(0, 1)[None]  # (N, heads, L, L)
        assert weights.shape == (1, 4, 15, 15)
        from segattn.models.attention.mhsa import sinusoidal_encoding_2d

        tokens = (x + sinusoidal_encoding_2d(16, 3, 5)).flatten(2).transpose(1, 2)
        v = m.value(tokens).view(1, 15, 4, 4).transpose(1, 2)
        rebuilt = m.out((weights @ v).transpose(1, 2).reshape(1, 15, 16))
        torch.testing.assert_close(rebuilt, m.attention(tokens), atol=1e-5, rtol=1e-5)
    maps = attention_maps(m, 1, 2)
    assert list(maps)[:2] == ["mean", "head0"] and len(maps) == 5
    torch.testing.assert_close(maps["mean"], weights[0, :, 1 * 5 + 2].mean(0).view(3, 5))


def test_ema_responsibilities_cover_each_position_once():
    torch.manual_seed(0)
    m = build_attention("ema", 16, num_bases=6).eval()
    with torch.no_grad(), record_attention(m):
        m(torch.randn(2, 16, 4, 7))
    r = responsibilities(m, index=1)
    assert r.shape == (6, 4, 7)
    torch.testing.assert_close(r.sum(0), torch.ones(4, 7))


@pytest.mark.parametrize("name", ["se", "eca", "cbam"])
def test_channel_gates_are_in_0_1(name):
    torch.manual_seed(0)
    m = build_attention(name, 32).eval()
    x = torch.randn(3, 32, 5, 5) * 4
    with torch.no_grad(), record_attention(m):
        m(x)
    g = gates(m)
    assert g.shape == (3, 32)
    assert (g > 0).all() and (g < 1).all()
    gate_module = m.channel_gate if name == "cbam" else m
    torch.testing.assert_close(g, gate_module.gate(x).flatten(1))


def test_sk_branch_gates_sum_to_one_and_gc_add_has_none():
    torch.manual_seed(0)
    sk = build_attention("sk", 32).eval()
    gc = build_attention("gc", 32).eval()
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad(), record_attention(sk), record_attention(gc):
        sk(x), gc(x)
    torch.testing.assert_close(gates(sk, "branch0") + gates(sk, "branch1"), torch.ones(2, 32))
    assert not has_gates(gc)  # channel_add only adds; its pooling weights are spatial
    torch.testing.assert_close(attention_for(gc, 0, 0).sum(), torch.tensor(1.0))


def test_reading_without_recording_explains_itself():
    m = build_attention("nl", 8).eval()
    with pytest.raises(RuntimeError, match="record_attention"):
        attention_for(m, 0, 0)
    with torch.no_grad(), record_attention(m):
        m(torch.randn(1, 8, 3, 4))
    with pytest.raises(IndexError, match="3x4"):
        attention_for(m, 3, 0)
    with pytest.raises(TypeError, match="gates"):
        attention_for(build_attention("se", 8), 0, 0)


def test_grid_point_maps_image_pixels_to_feature_cells():
    assert grid_point(0, 0, (64, 128), (8, 16)) == (0, 0)
    assert grid_point(63, 127, (64, 128), (8, 16)) == (7, 15)
    assert grid_point(15, 17, (64, 128), (8, 16)) == (1, 2)


# --- drawing -----------------------------------------------------------------------------------


def test_overlay_and_panels_keep_the_image_size():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    peak = np.zeros((5, 6), np.float32)
    peak[4, 1] = 1.0  # bottom left
    out = viz.overlay(image, peak)
    assert out.shape == image.shape and out.dtype == np.uint8
    # The brightest (most attended) place is where the map peaks.
    bright = out.astype(int).sum(-1)
    assert bright[33:39, 12:18].mean() > bright[:8, 30:].mean() + 300  # cell (4, 1) of 5x6 on 40x60
    points = [[5, 5], [30, 50], [20, 20]]
    row = viz.render_points(image, [peak] * 3, points, gap=4)
    assert row.shape == (40, 3 * 60 + 2 * 4, 3)
    panels = viz.point_panels(image, [peak] * 3, points)
    assert all(p.shape == image.shape for p in panels)
    # The marker is drawn around its point, not on the others.
    assert not np.array_equal(panels[1][20:40, 40:60], out[20:40, 40:60])
    assert np.array_equal(panels[1][:10, :10], out[:10, :10])


def test_bases_grid_and_gate_heatmap_shapes():
    grid = viz.bases_grid(torch.rand(10, 4, 8), cols=4, cell_height=16, gap=2)
    assert grid.shape == (3 * 16 + 2 * 2, 4 * 32 + 3 * 2, 3)
    heat = viz.gate_heatmap(np.array([[0.0, 1.0], [np.nan, np.nan]]), cell=(3, 5))
    assert heat.shape == (6, 10, 3)
    assert tuple(heat[0, 0]) != tuple(heat[0, 9]) and tuple(heat[4, 4]) == viz.NAN_GREY
    labelled = viz.gate_heatmap(np.full((2, 4), 0.5), ["road", "sky"], cell=(10, 3))
    assert labelled.shape[0] == 20 and labelled.shape[1] > 12


def _title_height(picture, body_height):
    """Rows of the title strip (and panel labels) above a body of ``body_height`` rows."""
    top = picture.shape[0] - body_height
    assert top > 0
    return top


def _assert_titled(picture, top):
    """The strip above the body holds text (dark pixels on white), not nothing."""
    strip = picture[:top].astype(int).sum(-1)
    assert (strip == 3 * 255).mean() > 0.5 and (strip < 3 * 100).sum() > 20


def _assert_colorbar(picture, anchors=None, top=0, bottom=None):
    """The colour bar's column at the right runs through the colormap, its top the colormap's 1 and
    its bottom its 0 (rows ``top``..``bottom`` of the picture), with the values written beside it."""
    anchors = viz.draw._INFERNO if anchors is None else anchors
    x = picture.shape[1] - viz.COLORBAR_WIDTH + viz.BAR_GAP + viz.BAR_WIDTH // 2
    column = picture[top:bottom, x].astype(int)
    coloured = np.nonzero((column != 255).any(-1))[0]
    assert coloured.size and np.array_equal(coloured, np.arange(coloured[0], coloured[-1] + 1))  # one run
    column = column[coloured[0]:coloured[-1] + 1]
    assert np.abs(column[0] - viz.colormap(np.array(1.0), anchors).astype(int)).max() <= 2
    assert np.abs(column[-1] - viz.colormap(np.array(0.0), anchors).astype(int)).max() <= 2
    assert len({tuple(c) for c in column}) > min(10, len(column) // 2)  # a ramp, not a block
    labels = picture[top:bottom, -viz.COLORBAR_WIDTH + viz.BAR_GAP + viz.BAR_WIDTH + 3:].astype(int).sum(-1)
    assert (labels < 3 * 100).sum() > 10  # the values are written


def test_figure_adds_title_and_colorbar():
    body = np.zeros((60, 100, 3), np.uint8)
    pic = viz.figure(body, "head.attention: a title", viz.value_labels(0.25, 0.75))
    assert pic.dtype == np.uint8 and pic.shape[1] == 100 + viz.COLORBAR_WIDTH
    top = _title_height(pic, 60)
    assert np.array_equal(pic[top:, :100], body)  # the body is untouched
    _assert_titled(pic, top)
    _assert_colorbar(pic, top=top)
    # A long title wraps, the width stays; a short body is padded for the bar's labels.
    long = viz.figure(body[:8], "word " * 40, viz.value_labels(0, 1))
    assert long.shape[1] == 100 + viz.COLORBAR_WIDTH and long.shape[0] > 8 + 3 * viz.TITLE_SIZE
    assert viz.robust_range(np.full((3, 3), 0.5))[1] > 0.5
    assert viz.robust_range(np.array([0.0, np.nan, 1.0]), 0, 100) == (0.0, 1.0)


def test_class_mean_gates_weighs_images_by_class_share():
    g = np.array([[0.2, 0.4], [0.6, 0.8]])
    masks = [np.array([[0, 0], [0, 1]]), np.array([[1, 1], [255, 1]])]
    means = viz.class_mean_gates(g, masks, num_classes=3)
    np.testing.assert_allclose(means[0], [0.2, 0.4], atol=1e-6)  # class 0 only in image 0
    np.testing.assert_allclose(means[1], (0.25 * g[0] + 1.0 * g[1]) / 1.25, atol=1e-6)
    assert np.isnan(means[2]).all()


def test_save_png_is_atomic_and_exact(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (7, 9, 3), dtype=np.uint8)
    path = str(tmp_path / "sub" / "a.png")
    viz.save_png(img, path)
    assert np.array_equal(np.asarray(Image.open(path)), img)
    assert os.listdir(tmp_path / "sub") == ["a.png"]
    with pytest.raises(ValueError, match="b.png"):
        viz.save_png(img.astype(np.float32), str(tmp_path / "b.png"))


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    bb = {"depth": 18, "width": 8, "output_stride": 8}
    # SE with reduction 2: at 16 channels the default 16 leaves one hidden unit, which the ReLU
    # often zeroes at initialisation, and the gates would not depend on the image.
    heads = {"cc": {}, "da": {}, "ema": {}, "se": {"reduction": 2}}
    return {h: build_model(bb, {"name": h, "channels": 16, **kw}, num_classes=4) for h, kw in heads.items()}


def test_attention_pictures_for_a_segmentor(tiny_models):
    image = torch.randn(3, 48, 72)
    points = [[4, 4], [40, 60]]
    model = tiny_models["cc"].train()
    pics = viz.attention_pictures(model, image, points)
    assert model.training  # mode restored
    assert all(not r for r in _records(model).values())  # records released
    # Two panels of the image's size side by side, each under its point's label, under the title;
    # the colour bar at the right.
    pic = pics["head.attention"]
    assert pic.shape[1] == 2 * 72 + 4 + viz.COLORBAR_WIDTH and pic.dtype == np.uint8
    top = _title_height(pic, 48)
    _assert_titled(pic, top)
    _assert_colorbar(pic, top=top)
    title = viz.text_strip("head.attention: where the marked pixel (y, x) looks; each panel from 0 to its own "
                           "max weight, square-root scale", pic.shape[1])
    assert np.array_equal(pic[:len(title)], title)  # the title names the module
    labels = pic[len(title):top, :72]
    first = viz.text_strip("(4, 4) max", 72, viz.LABEL_SIZE)  # the first panel's point (and its max)
    assert np.array_equal(labels[:len(first) - 2, :40], first[:-2, :40])
    pics = viz.attention_pictures(tiny_models["da"].eval(), image, points)
    assert {"head.attention", "head.attention/channels"} <= set(pics)
    # DANet's 16 x 16 channel matrix, 32-pixel cells, on its own range (not black): the colours span
    # the colormap, and the bar says the range.
    channels = pics["head.attention/channels"]
    assert channels.shape[1] == 16 * 32 + viz.COLORBAR_WIDTH
    top = _title_height(channels, 16 * 32)
    _assert_titled(channels, top)
    _assert_colorbar(channels, top=top)
    cells = channels[top:, :16 * 32:32].reshape(-1, 3)
    assert cells.astype(int).sum(-1).max() > 500 and cells.astype(int).sum(-1).min() < 100
    pics = viz.attention_pictures(tiny_models["ema"], image, points)
    assert pics["head.attention/bases"].dtype == np.uint8 and "head.attention" in pics
    bases = pics["head.attention/bases"]
    _assert_titled(bases, 20)
    _assert_colorbar(bases)
    pics = viz.attention_pictures(tiny_models["se"], image, points)
    assert list(pics) == ["head.attention/gates"]
    gates_pic = pics["head.attention/gates"]
    assert gates_pic.shape[1] == 16 * 8 + viz.COLORBAR_WIDTH
    _assert_titled(gates_pic, 20)
    # A large image is run at max_size, points with it; the label names the point in the image given.
    pics = viz.attention_pictures(tiny_models["cc"], torch.randn(3, 96, 144), [[95, 143]], max_size=72)
    assert pics["head.attention"].shape[1] == 72 + viz.COLORBAR_WIDTH
    label = viz.text_strip("(95, 143)", 72, viz.LABEL_SIZE)
    assert any(np.array_equal(pics["head.attention"][r:r + 12, :30], label[:12, :30]) for r in range(100))
    # draw_scale shrinks the panels, not the text.
    pics = viz.attention_pictures(tiny_models["cc"], image, points, draw_scale=0.5)
    assert pics["head.attention"].shape[1] == 2 * 36 + 4 + viz.COLORBAR_WIDTH
    # A point outside this (smaller) image is skipped for it, with a warning naming the image; the
    # others are drawn (it used to abort a whole evaluation).
    with pytest.warns(UserWarning, match=r"\[\[48, 0\]\] lie outside b\.png \(48x72\)"):
        pics = viz.attention_pictures(tiny_models["cc"], image, [[48, 0], [4, 4]], name="b.png")
    assert pics["head.attention"].shape[1] == 72 + viz.COLORBAR_WIDTH  # one panel: the point inside
    with pytest.warns(UserWarning, match="48x72"):
        assert viz.attention_pictures(tiny_models["cc"], image, [[48, 0]]) == {}
    with pytest.raises(ValueError, match="visualize.points"):
        viz.attention_pictures(tiny_models["cc"], image, [[1, 2, 3]])


def test_gate_pictures_per_class(tiny_models):
    torch.manual_seed(0)
    # Image 0 is all class 0, image 1 all class 1; classes 2 and 3 appear nowhere.
    samples = [(torch.randn(3, 32, 32), torch.full((32, 32), k)) for k in (0, 1)]
    pics = viz.gate_pictures(tiny_models["se"], samples, num_classes=4, class_names=["a", "b", "c", "d"])
    (name, img), = pics.items()
    assert name == "head.attention/classes" and img.shape[1] > 16 * 8 + viz.COLORBAR_WIDTH
    top = _title_height(img, 4 * 12)  # the title, then 4 class rows, the colour bar beside them
    _assert_titled(img, top)
    _assert_colorbar(img, top=top)
    right = img[top:, -viz.COLORBAR_WIDTH - 16 * 8:-viz.COLORBAR_WIDTH]  # the 16 channels, 8 pixels each
    assert not np.array_equal(right[0:12], right[12:24])  # the two images' gates, stretched apart
    assert (right[30] == viz.NAN_GREY).all() and (right[40] == viz.NAN_GREY).all()


class _Writer:
    def __init__(self):
        self.images = {}

    def add_image(self, tag, img, step, dataformats):
        assert dataformats == "HWC"
        self.images[tag] = (img.shape, step)


def test_one_call_helpers_for_training_and_eval(tiny_models, tiny_root, tmp_path):
    from segattn.data import CityscapesDataset

    val = CityscapesDataset(tiny_root, "val")
    writer = _Writer()
    viz.log_attention_pictures(writer, tiny_models["cc"], val[0]["image"], [[10, 20]], step=7)
    (shape, step), = writer.images.values()
    assert list(writer.images) == ["attention/head.attention"] and step == 7
    assert shape[0] > 64 and shape[1:] == (128 + viz.COLORBAR_WIDTH, 3)  # title over the panel, colour bar beside
    written = viz.write_attention_pictures(tiny_models["se"], val, str(tmp_path), points=[[10, 20]], num_images=2)
    names = sorted(os.path.basename(p) for p in written)
    stems = sorted(os.path.splitext(os.path.basename(val[i]["path"]))[0] for i in range(2))
    assert names == ["classes_head_attention_classes.png"] + [f"{s}_head_attention_gates.png" for s in stems]
    heat = np.asarray(Image.open(tmp_path / "classes_head_attention_classes.png"))
    assert heat.shape[0] > len(val.classes) * 12  # the class rows under the title
    _assert_colorbar(heat, top=heat.shape[0] - len(val.classes) * 12)
