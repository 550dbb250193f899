"""Print the README's heads table from the registry: ``python scripts/heads_table.py``."""

from segattn.deploy import export_summary
from segattn.models.attention import ATTENTIONS

WORDS = {"matmul": "matrix product", "mlp": "MLP", "conv": "convolution", "pool": "pooling",
         "elementwise": "element-wise", "add": "addition", "spatial": "space", "channel": "channels", "all": "all"}


def words(value: str) -> str:
    return f"`{value}` ({' + '.join(WORDS[w] for w in value.split('+'))})"


def table() -> str:
    rows = ["| `head=` | mechanism (paper) | weights computed by | applied by | over | reference (checked in the tests) "
            "| deliberate differences | exports (onnx, torchscript, exported_program) |", "|---|---|---|---|---|---|---|---|",
            "| `fcn` | FCN baseline: Fully Convolutional Networks for Semantic Segmentation (2015) | — | — | — "
            f"| mmseg `FCNHead` | — | {export_summary('fcn')} |"]
    for name, cls in sorted(ATTENTIONS.items()):
        t = cls.taxonomy
        rows.append(f"| `{name}` | {cls.paper} | {words(t['weights'])} | {words(t['applied'])} | {words(t['domain'])} "
                    f"| {cls.reference} | {getattr(cls, 'deviations', '—')} | {export_summary(name)} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
