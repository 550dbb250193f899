"""dataset.augment: albumentations transforms from the config, after the geometric pipeline and before
normalisation; a bad name or argument is one paragraph naming dataset.augment and albumentations' words."""

import os

import numpy as np
import pytest
import torch

from segattn.data import CityscapesDataset, build_train_transform
from segattn.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_augment

from conftest import REPO, TINY, run_train

DROP_ALL = {"name": "CoarseDropout", "p": 1.0, "num_holes_range": [1, 1], "hole_height_range": [48, 48],
            "hole_width_range": [32, 32], "fill": 255, "fill_mask": 7}


def test_augment_runs_on_the_crop_before_normalisation(tiny_root):
    """A dropout hole of 48x32 pixels (the crop is 48x64): 255 in the image before normalisation (so
    ((1 - mean) / std) after it), fill_mask in the mask; the crop size is the configured one."""
    plain = build_train_transform([48, 64], photometric=False)
    ds = CityscapesDataset(tiny_root, "train", build_train_transform([48, 64], photometric=False, augment=[DROP_ALL]))
    assert type(ds.transform.transforms[-3]).__name__ == "CoarseDropout"  # then Normalize, ToTensorV2
    assert [type(t).__name__ for t in ds.transform.transforms][:-3] == [type(t).__name__ for t in plain.transforms][:-2]
    item = ds[(0, 0)]
    image, mask = item["image"], item["mask"]
    assert image.shape == (3, 48, 64) and mask.shape == (48, 64)
    white = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])[:, None, None]
    hole = (image - white).abs().amax(0) < 1e-5
    assert hole.sum() == 48 * 32 and hole.all(0).sum() == 32  # whole columns, half the width
    assert (mask[hole] == 7).all() and not (mask[~hole] == 7).all()


def test_the_config_form_is_albumentations_own():
    """``{name: ..., args}`` builds what A.from_dict builds; nested OneOf; p defaults to the class's own."""
    import albumentations as A

    ours = build_augment([{"name": "GaussNoise", "p": 0.2, "std_range": [0.1, 0.2]},
                          {"name": "OneOf", "transforms": [{"name": "Blur"}, {"name": "MedianBlur", "blur_limit": 5}]},
                          {"name": "ToGray"}], [32, 32])
    assert ours[0].to_dict() == A.GaussNoise(p=0.2, std_range=(0.1, 0.2)).to_dict()
    assert [type(t).__name__ for t in ours[1].transforms] == ["Blur", "MedianBlur"]
    assert ours[2].p == A.ToGray().p  # not from_dict's 0.5
    # A.to_dict's own form (``__class_fullname__``) is taken as it is.
    again = build_augment([A.CoarseDropout(p=0.3).to_dict()["transform"]])
    assert again[0].to_dict() == A.CoarseDropout(p=0.3).to_dict()
    assert build_augment(None) == [] and build_augment([]) == []


@pytest.mark.parametrize("augment, expected", [
    ([{"name": "CoarseDropOut", "p": 0.5}], "dataset.augment[0]: albumentations 2.0.8 has no transform "
                                            "'CoarseDropOut'; did you mean CoarseDropout"),
    ([{"name": "GaussNoise", "var_limit": [10, 50]}], "dataset.augment[0] (GaussNoise): albumentations refuses it: "
                                                      "Argument(s) 'var_limit' are not valid for transform GaussNoise"),
    ([{"name": "Blur"}, {"name": "GaussNoise", "std_range": [0.5, 0.1]}],
     "dataset.augment[1] (GaussNoise): albumentations refuses it: 1 validation error for InitSchema; std_range; "
     "Value error, First value should be less than the second value"),
    ([{"name": "OneOf", "transforms": [{"name": "MedianBlur", "blur_limt": 5}]}],
     "dataset.augment[0].transforms[0] (MedianBlur): albumentations refuses it: "),
    ([{"name": "RandomCrop", "height": 16, "width": 16}], "dataset.augment: the transforms turn a 32x32 crop"),
    ([{"name": "Normalize"}], "dataset.augment[0]: Normalize is already the pipeline's last step"),
    ("GaussNoise", "dataset.augment='GaussNoise': expected a list of transforms"),
])
def test_bad_augmentations_name_the_key_and_quote_albumentations(augment, expected):
    with pytest.raises(ValueError) as e:
        build_augment(augment, [32, 32])
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_augment_from_the_command_line(tiny_root, tmp_path, capsys):
    """As typed: a misspelt transform stops train.py with the one paragraph; a good list reaches the loader."""
    base = [*TINY, f"dataset.root={tiny_root}", "trainer.max_iters=1", "trainer.val_interval=1"]
    with pytest.raises(SystemExit) as exc:
        run_train([*base, "dataset.augment=[{name: GausNoise, p: 0.2}]", f"hydra.run.dir={tmp_path / 'bad'}"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "Traceback" not in err
    assert "dataset.augment[0]: albumentations 2.0.8 has no transform 'GausNoise'; did you mean GaussNoise" in err
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from segattn.engine.trainer import build_loaders

    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*base, "dataset.augment=[{name: CoarseDropout, p: 0.5}, {name: GaussNoise, p: 0.2}]"])
    train_set = build_loaders(OmegaConf.to_container(cfg, resolve=True), 0, 0)[0]
    names = [type(t).__name__ for t in train_set.transform.transforms]
    assert names[-4:] == ["CoarseDropout", "GaussNoise", "Normalize", "ToTensorV2"]
    assert train_set.transform.transforms[-3].p == 0.2
