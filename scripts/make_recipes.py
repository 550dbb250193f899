"""Write the published-recipe experiment files, one per head and setting: ``python scripts/make_recipes.py``.

conf/experiment/<head>_<backbone>_<dataset>.yaml composes the base recipe (cityscapes_r50_d8_80k,
cityscapes_r101_d8_80k, ade20k_r50_d8_160k) with ``head=<head>`` and the head's settings that
mmsegmentation changes per dataset. tests/test_config.py checks that every head has all three.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from segattn.models.attention import ATTENTIONS  # noqa: E402

CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf", "experiment")
BASES = {
    "r50_d8_cityscapes_80k": ("cityscapes_r50_d8_80k", "Cityscapes 512x1024, 80k iterations, R50-D8"),
    "r101_d8_cityscapes_80k": ("cityscapes_r101_d8_80k", "Cityscapes 512x1024, 80k iterations, R101-D8"),
    "r50_d8_ade20k_160k": ("ade20k_r50_d8_160k", "ADE20K 512x512, 160k iterations, R50-D8"),
}
# mmsegmentation 1.x single-scale val mIoU, where it publishes the recipe (DESIGN.md).
PUBLISHED = {
    ("fcn", "r50_d8_cityscapes_80k"): 73.61, ("fcn", "r101_d8_cityscapes_80k"): 75.13,
    ("psa", "r50_d8_cityscapes_80k"): 77.24, ("psa", "r101_d8_cityscapes_80k"): 79.31,
    ("da", "r50_d8_cityscapes_80k"): 79.34, ("da", "r101_d8_cityscapes_80k"): 80.41,
    ("cc", "r50_d8_cityscapes_80k"): 79.03, ("cc", "r101_d8_cityscapes_80k"): 78.87,
    ("ema", "r50_d8_cityscapes_80k"): 77.59, ("ema", "r101_d8_cityscapes_80k"): 79.10,
    ("nl", "r50_d8_cityscapes_80k"): 78.01, ("nl", "r101_d8_cityscapes_80k"): 78.93,
    ("gc", "r50_d8_cityscapes_80k"): 78.48, ("gc", "r101_d8_cityscapes_80k"): 79.03,
    # configs/dnlnet/metafile.yaml: dnl_r{50,101}-d8_4xb2-80k_cityscapes-512x1024
    ("dnl", "r50_d8_cityscapes_80k"): 79.33, ("dnl", "r101_d8_cityscapes_80k"): 80.41,
    # configs/isanet/README.md: ISANet R-50-D8 / R-101-D8, 512x1024, 80000
    ("isa", "r50_d8_cityscapes_80k"): 78.68, ("isa", "r101_d8_cityscapes_80k"): 80.32,
    # configs/apcnet/metafile.yaml: apcnet_r{50,101}-d8_4xb2-80k_cityscapes-512x1024
    ("apc", "r50_d8_cityscapes_80k"): 78.96, ("apc", "r101_d8_cityscapes_80k"): 79.64,
    # configs/ann/metafile.yaml: ann_r{50,101}-d8_4xb2-80k_cityscapes-512x1024
    ("ann", "r50_d8_cityscapes_80k"): 77.34, ("ann", "r101_d8_cityscapes_80k"): 77.14,
    # OCRNet: mmsegmentation publishes HRNet (and ResNet-101 with a different schedule) recipes only, no R50-D8 /
    # R101-D8 80k Cityscapes number
}
# Head settings mmsegmentation changes per dataset: PSANet's over-complete mask is (97, 97) for the
# Cityscapes recipes (the head's default) and (66, 66) for ADE20K. Where a mask does not reach (the
# 512x1024 crops), the attention logit is 0, as in the official psamask op, so PSANet trains and tests
# like every other head: whole images, as mmseg's 512x1024 and ADE20K R50-D8 recipes do.
EXTRA = {
    ("psa", "r50_d8_ade20k_160k"): {"head": {"mask_size": "[66, 66]"}},
}
# OCRNet's recipe has two decode heads (CascadeEncoderDecoder): the region FCN on c4 (loss weight 0.4) is the
# c4 FCN, so segattn's separate auxiliary head is off.
for _suffix in ("r50_d8_cityscapes_80k", "r101_d8_cityscapes_80k", "r50_d8_ade20k_160k"):
    EXTRA[("ocr", _suffix)] = {"model": {"aux_head": {"weight": 0}}}


def yaml_lines(node: dict, indent: int = 0) -> list[str]:
    lines = []
    for k, v in node.items():
        if isinstance(v, dict):
            lines += [" " * indent + f"{k}:"] + yaml_lines(v, indent + 2)
        else:
            lines.append(" " * indent + f"{k}: {v}")
    return lines


def main():
    for head in ["fcn", *sorted(ATTENTIONS)]:
        paper = "FCN baseline" if head == "fcn" else ATTENTIONS[head].paper
        for suffix, (base, what) in BASES.items():
            miou = PUBLISHED.get((head, suffix))
            lines = ["# @package _global_",
                     f"# {paper}: {what} (mmsegmentation settings).",
                     f"# Published single-scale val mIoU: {miou}" if miou else "# No published mmsegmentation number for this head/setting.",
                     f"#   python train.py +experiment={head}_{suffix} dataset.root=...",
                     "defaults:", f"  - {base}", f"  - override /head: {head}"]
            extra = EXTRA.get((head, suffix))
            if extra:
                lines += [""] + yaml_lines(extra)
            path = os.path.join(CONF, f"{head}_{suffix}.yaml")
            with open(path + ".tmp", "w") as f:
                f.write("\n".join(lines) + "\n")
            os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
