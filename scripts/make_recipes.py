"""Write the published-recipe experiment files, one per head and setting: ``python scripts/make_recipes.py``.

conf/experiment/<head>_<backbone>_<dataset>.yaml composes the base recipe (cityscapes_r50_d8_80k,
cityscapes_r101_d8_80k, ade20k_r50_d8_160k) with ``head=<head>`` and the head's settings that
mmsegmentation changes per dataset. The published mIoU and those settings are the head's facts
(``published``, ``recipe_extras``: ``segattn.models.heads.head_facts``). tests/test_config.py checks
that every head has all three.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from segattn.models.heads import head_facts, head_names  # noqa: E402

CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf", "experiment")
BASES = {
    "r50_d8_cityscapes_80k": ("cityscapes_r50_d8_80k", "Cityscapes 512x1024, 80k iterations, R50-D8"),
    "r101_d8_cityscapes_80k": ("cityscapes_r101_d8_80k", "Cityscapes 512x1024, 80k iterations, R101-D8"),
    "r50_d8_ade20k_160k": ("ade20k_r50_d8_160k", "ADE20K 512x512, 160k iterations, R50-D8"),
}
def yaml_lines(node: dict, indent: int = 0) -> list[str]:
    lines = []
    for k, v in node.items():
        if isinstance(v, dict):
            lines += [" " * indent + f"{k}:"] + yaml_lines(v, indent + 2)
        else:
            lines.append(" " * indent + f"{k}: {v}")
    return lines


def main():
    for head in head_names():
        facts = head_facts(head)
        for suffix, (base, what) in BASES.items():
            miou = facts.published.get(suffix)
            lines = ["# @package _global_",
                     f"# {facts.paper}: {what} (mmsegmentation settings).",
                     f"# Published single-scale val mIoU: {miou}" if miou else "# No published mmsegmentation number for this head/setting.",
                     f"#   python train.py +experiment={head}_{suffix} dataset.root=...",
                     "defaults:", f"  - {base}", f"  - override /head: {head}"]
            extra = facts.recipe_extras.get(suffix)
            if extra:
                lines += [""] + yaml_lines(extra)
            path = os.path.join(CONF, f"{head}_{suffix}.yaml")
            with open(path + ".tmp", "w") as f:
                f.write("\n".join(lines) + "\n")
            os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
