import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from segattn.data import CityscapesDataset, build_dataset, build_train_transform, seed_worker
from segattn.data.sampler import TrainSampler
from segattn.data.transforms import CatMaxRatioCrop


def test_items_follow_the_contract(tiny_root):
    ds = CityscapesDataset(tiny_root, "val")
    item = ds[0]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 64, 128)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (64, 128)  # own resolution
    assert item["path"].endswith("_leftImg8bit.png")
    assert ds.num_classes == 19


def test_train_pipeline_keeps_mask_values(tiny_root):
    ds = CityscapesDataset(tiny_root, "train", build_train_transform([96, 96]))
    for i in range(len(ds)):
        m = ds[(i, i)]["mask"]
        assert m.shape == (96, 96)
        values = set(m.unique().tolist())
        assert values <= set(range(19)) | {255}, values


def test_padding_uses_ignore_never_zero():
    t = A.Compose([CatMaxRatioCrop(height=40, width=40, cat_max_ratio=1.0)], strict=True)
    out = t(image=np.full((20, 20, 3), 7, np.uint8), mask=np.full((20, 20), 3, np.uint8))
    assert (out["mask"] == 3).sum() == 400 and (out["mask"] == 255).sum() == 1600 - 400
    assert not (out["mask"] == 0).any()


def test_image_and_mask_stay_aligned_after_scale_crop_flip():
    # The image encodes its own label: pixel colour = 10 * class. After resize, crop and flip the
    # colour under every labelled pixel must still say the same class (photometric off).
    rng = np.random.default_rng(0)
    mask = np.kron(rng.integers(0, 19, (8, 16)), np.ones((16, 16), np.int64)).astype(np.uint8)
    image = np.repeat((mask * 10)[..., None], 3, axis=2).astype(np.uint8)
    tf = build_train_transform([64, 96], photometric=False)
    tf.transforms = tf.transforms[:-2]  # drop Normalize/ToTensor to read raw values
    for seed in range(10):
        tf.set_random_seed(seed)
        out = tf(image=image, mask=mask)
        img, m = out["image"][..., 0].astype(np.int64), out["mask"].astype(np.int64)
        # Compare away from region borders, where bilinear image resampling mixes two classes.
        inner = np.ones_like(m, bool)
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                inner &= np.roll(m, (dy, dx), (0, 1)) == m
        keep = inner & (m != 255)
        assert keep.sum() > 100
        assert np.abs(img[keep] - 10 * m[keep]).max() <= 2


def test_cat_max_ratio_limits_one_class():
    mask = np.zeros((100, 100), np.uint8)
    mask[:, 80:] = 1  # class 0 covers 80 %; a 50x50 crop has < 75 % of it only if x0 > 42 (~15 % of crops)
    ok = {}
    for ratio in (1.0, 0.75):
        t = A.Compose([CatMaxRatioCrop(height=50, width=50, cat_max_ratio=ratio)], strict=True, seed=0)
        shares = [(t(image=np.zeros((100, 100, 3), np.uint8), mask=mask)["mask"] == 0).mean() for _ in range(100)]
        ok[ratio] = np.mean([s < 0.75 for s in shares])
    # Plain crops succeed ~15 % of the time; with 10 tries 1 - 0.85^10 ~ 80 %.
    assert ok[1.0] < 0.35 and ok[0.75] > 0.6, ok


def test_strict_pipelines_reject_unknown_arguments():
    with pytest.raises(ValueError, match="not valid"):
        A.Compose([A.RandomScale(scale_limit=0.1, mask_value=255)], strict=True)  # a 1.x name
    with pytest.raises(ValueError, match="crop_size"):
        build_train_transform([0, 64])


def test_workers_do_not_repeat_augmentation(tiny_root):
    ds = CityscapesDataset(tiny_root, "train", build_train_transform([32, 32]))
    loader = DataLoader(ds, batch_size=1, num_workers=2, shuffle=False, worker_init_fn=seed_worker,
                        sampler=[0, 0, 0, 0])  # the same image four times, two workers
    crops = [b["image"] for b in loader]
    assert not torch.equal(crops[0], crops[1])  # worker 0 and worker 1 draw differently


def test_sampler_is_a_function_of_the_iteration():
    full = TrainSampler(10, batch_size=3, seed=1)
    stream = iter(full)
    first = [next(stream) for _ in range(3 * 7)]  # 7 iterations, over two epochs (3 per epoch)
    resumed = iter(TrainSampler(10, batch_size=3, seed=1, start_iter=4))
    assert [next(resumed) for _ in range(3 * 3)] == first[3 * 4:]
    epoch0 = [i for i, _ in first[:9]]
    assert len(set(epoch0)) == 9  # a permutation within an epoch
    # Two ranks split every global batch without overlap.
    r0 = iter(TrainSampler(10, 2, seed=1, rank=0, world_size=2))
    r1 = iter(TrainSampler(10, 2, seed=1, rank=1, world_size=2))
    a, b = [next(r0)[0] for _ in range(4)], [next(r1)[0] for _ in range(4)]
    assert not set(a) & set(b)


def test_missing_root_shows_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="leftImg8bit/<split>/<city>"):
        CityscapesDataset(str(tmp_path / "nowhere"), "train")
    with pytest.raises(ValueError, match="dataset.name"):
        build_dataset("kitti", str(tmp_path), "train")


def test_label_ids_are_converted_and_bad_values_named(tiny_root, tmp_path):
    import shutil

    root = tmp_path / "cs"
    shutil.copytree(tiny_root, root)
    gt = sorted((root / "gtFine" / "val").rglob("*_labelTrainIds.png"))
    reference = CityscapesDataset(str(root), "val")[0]["mask"]
    for f in gt:
        f.unlink()  # only labelIds left: converted with the official table
    converted = CityscapesDataset(str(root), "val")[0]["mask"]
    assert torch.equal(reference, converted)
    ids = np.array(Image.open(sorted((root / "gtFine" / "val").rglob("*_labelIds.png"))[0]))
    ids[0, 0] = 77
    path = sorted((root / "gtFine" / "val").rglob("*_labelIds.png"))[0]
    Image.fromarray(ids).save(path)
    with pytest.raises(ValueError, match=r"labelIds.png: invalid label value\(s\) \[77\]"):
        CityscapesDataset(str(root), "val")[0]


def test_embedded_dataset_is_deterministic(tmp_path):
    from segattn.data import synthetic

    a = synthetic.generate(str(tmp_path / "a"), size=(32, 64), splits={"val": ("x", 2)})
    b = synthetic.generate(str(tmp_path / "b"), size=(32, 64), splits={"val": ("x", 2)})
    fa = sorted((tmp_path / "a").rglob("*.png"))
    fb = sorted((tmp_path / "b").rglob("*.png"))
    assert (a, b) == (str(tmp_path / "a"), str(tmp_path / "b"))  # generate returns the root it wrote
    assert len(fa) == 6 and all(np.array_equal(np.array(Image.open(x)), np.array(Image.open(y))) for x, y in zip(fa, fb))
    assert not list(tmp_path.glob(".mini_cityscapes.*"))  # the temp folder was renamed, nothing left over
