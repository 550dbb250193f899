"""Print the README's heads table from the registry: ``python scripts/heads_table.py``."""

from segattn.deploy import export_summary
from segattn.models.heads import head_facts, head_names

WORDS = {"matmul": "matrix product", "mlp": "MLP", "conv": "convolution", "pool": "pooling",
         "elementwise": "element-wise", "add": "addition", "spatial": "space", "channel": "channels", "all": "all"}


def words(value: str | None) -> str:
    return "—" if value is None else f"`{value}` ({' + '.join(WORDS[w] for w in value.split('+'))})"


def table() -> str:
    rows = ["| `head=` | mechanism (paper) | weights computed by | applied by | over | reference (checked in the tests) "
            "| deliberate differences | exports (onnx, torchscript, exported_program) |", "|---|---|---|---|---|---|---|---|"]
    for name in head_names():
        f = head_facts(name)
        t = f.taxonomy or dict.fromkeys(("weights", "applied", "domain"))
        rows.append(f"| `{name}` | {f.paper} | {words(t['weights'])} | {words(t['applied'])} | {words(t['domain'])} "
                    f"| {f.reference} | {f.deviations or '—'} | {export_summary(name)} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
