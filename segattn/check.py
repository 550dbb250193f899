"""The head checker: what a decode head (built-in or a plugin's) must do before its numbers mean anything.

    python -m segattn.check head=nl
    python -m segattn.check plugins=[examples/pooled_attention.py] head=custom head.name=pooled_nl
    python -m segattn.check head=ham head.channels=64 backbone=resnet50 --export torchscript

It prints a table of checks with their numbers and exits 1 when a gating check fails, naming it. The
registry-wide tests (tests/test_check.py) run the same checks on every built-in head, so the package's
heads are held to what a user's head is.

Gating (each caught a real defect in a head of this package or of its reference code):

- **shapes**: logits of shape (N, classes, h, w) at the size of a stage the head reads, finite, for
  features of 1x1, 1x7, 7x1, 2x3 and a non-square 9x14 (output stride 8: c2 at twice that);
- **deterministic**: in eval mode two calls on one batch give the same logits (the Hamburger drew new
  random bases at every call);
- **batch independence**: in eval mode sample 0 alone gives what it gives inside a batch of three (a
  module that mixes the samples of a batch predicts one image from the others);
- **recording**: recording the attention for pictures (``record_attention``) leaves the output unchanged;
- **gradients**: every parameter gets a finite, non-zero gradient in a training step on a fixed batch. The
  residual scales that start at exactly zero (DANet's gamma, non-local's output BN, GCNet's last conv:
  ``segattn.models.segmentor.zero_initialised``) are first set to random values, since at zero they silence
  the branch behind them, whose gradients would then be zero or a rounding error for the first steps. A
  parameter whose gradient is zero by construction is exempt only where its module declares it,
  ``grad_exempt = {"<parameter name>": "why"}``: a bias added to every logit of a softmax over positions
  (softmax ignores a constant shift), a bias that a BatchNorm right after removes;
- **loss decreases**: one SGD step on a fixed batch lowers the loss (dropout's mask and any random draw
  repeated by the seed).

Reported, not gating: bf16 autocast against float32, the export formats that reproduce the model at a
second input size, and parameters, forward FLOPs and activation memory at the benchmarks' 97x97 features.

The gating checks run in float64, so that "equal" means equal up to rounding (1e-9 relative) and a
gradient of exactly zero stands out from the rounding of a real one (below 1e-8 of the largest gradient).
"""

from __future__ import annotations

import copy
import os
import sys
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from .models.segmentor import zero_initialised

SIZES = ((1, 1), (1, 7), (7, 1), (2, 3), (9, 14))
BENCH_SIZE = (97, 97)  # the benchmarks' feature size (benchmarks/heads.py)


@dataclass
class Check:
    name: str
    gating: bool
    passed: bool | None  # None: not run (a reported check that does not apply)
    value: str
    why: str = ""  # what failed, for a gating check


def feature_widths(backbone: dict | None) -> list[int]:
    """The channels of ``[c2, c3, c4, c5]`` of the configured ResNet (``backbone`` config node), counted on
    the meta device."""
    from .models.backbone import ResNet

    cfg = {k: v for k, v in dict(backbone or {"depth": 18}).items()
           if k in ("depth", "width", "deep_stem", "output_stride")}
    with torch.device("meta"):
        return list(ResNet(**cfg).channels)


def _features(widths, size, batch=2, dtype=torch.float64, seed=0):
    """Random ``[c2, c3, c4, c5]`` at output stride 8: c2 at twice ``size``, the others at ``size``."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    sizes = [(2 * h, 2 * w), (h, w), (h, w), (h, w)]
    return [torch.randn(batch, c, *s, generator=g, dtype=dtype) for c, s in zip(widths, sizes)]


def _outputs(head: nn.Module, feats) -> dict[str, torch.Tensor]:
    out = head(feats)
    return dict(out) if isinstance(out, dict) else {"out": out}


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) if a[k].numel() else 0.0 for k in a)


def _scale(out: dict) -> float:
    return max(float(v.abs().max()) if v.numel() else 0.0 for v in out.values())


def _equal(a: dict, b: dict) -> tuple[bool, float]:
    """Whether two float64 outputs agree up to rounding (1e-9 of their size), and their largest difference."""
    diff = _max_diff(a, b)
    return diff <= 1e-9 * (1 + _scale(a)), diff


def grad_exemptions(head: nn.Module) -> dict[str, str]:
    """Parameter name (in ``head``) -> why its gradient is zero by construction, from the ``grad_exempt``
    declarations of its modules (a class attribute, or an instance's where it depends on the options)."""
    out = {}
    for prefix, module in head.named_modules():
        for name, why in (getattr(module, "grad_exempt", None) or {}).items():
            out[f"{prefix}.{name}" if prefix else name] = why
    return out


def _segmentor(head: nn.Module, num_classes: int):
    """The head inside a Segmentor whose "backbone" passes the features through, for its loss (the
    weighted sum over the head's outputs, as training computes it)."""
    from .models.segmentor import Segmentor

    return Segmentor(nn.Identity(), head, num_classes, aux_head=None)


def _target(num_classes, size, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, (batch, 2 * size[0], 2 * size[1]), generator=g)
    target[:, 0, 0] = 255  # an ignored pixel, as every real mask has
    return target


def run_checks(head_cfg: dict, widths: list[int] | None = None, num_classes: int = 5, report: bool = True,
               seed: int = 0, formats: list[str] | None = None) -> list[Check]:
    """Build head ``head_cfg`` (a ``head`` config node) on stages of ``widths`` channels (default ResNet-18's)
    and run the checks above; ``report=False`` skips the reported (non-gating) ones, ``formats`` limits the
    export formats tried (default: all; ``[]``: none)."""
    from .models.heads import build_head

    widths = list(widths or feature_widths(None))
    torch.manual_seed(seed)
    built = build_head(dict(head_cfg), widths, num_classes)
    checks = []

    def gate(name, fn):
        head = copy.deepcopy(built).double()
        try:
            passed, value, why = fn(head)
        except Exception as e:  # a crash is a failed check, with what it raised
            passed, value, why = False, "raised", f"{type(e).__name__}: {e}"
        checks.append(Check(name, True, passed, value, "" if passed else why))

    gate("shapes", lambda head: _shapes(head.eval(), widths, num_classes))
    gate("deterministic", lambda head: _deterministic(head.eval(), widths))
    gate("batch independence", lambda head: _batch_independent(head.eval(), widths))
    gate("recording", lambda head: _recording(head.eval(), widths))
    gate("gradients", lambda head: _gradients(head.train(), widths, num_classes, seed))
    gate("loss decreases", lambda head: _one_step(head.train(), widths, num_classes, seed))
    if report:
        checks += reported_checks(built, head_cfg, widths, num_classes, formats)
    return checks


def _shapes(head, widths, num_classes):
    for size in SIZES:
        feats = _features(widths, size)
        with torch.no_grad():
            out = _outputs(head, feats)
        logits = out["out"]
        read = {tuple(f.shape[-2:]) for f in feats}
        if logits.dim() != 4 or logits.shape[:2] != (2, num_classes) or tuple(logits.shape[-2:]) not in read:
            return False, f"{tuple(logits.shape)}", (f"features of {size[0]}x{size[1]}: logits of shape "
                                                      f"{tuple(logits.shape)}, expected (2, {num_classes}, h, w) "
                                                      f"with (h, w) one of {sorted(read)}")
        bad = [k for k, v in out.items() if not torch.isfinite(v).all()]
        if bad:
            return False, "non-finite", f"features of {size[0]}x{size[1]}: non-finite values in {bad}"
    return True, ", ".join(f"{h}x{w}" for h, w in SIZES), ""


def _deterministic(head, widths):
    feats = _features(widths, SIZES[-1])
    with torch.no_grad():
        a, b = _outputs(head, feats), _outputs(head, feats)
    ok, diff = _equal(a, b)
    return ok, f"max diff {diff:.2g}", (f"two eval calls on one batch differ by {diff:.3g} (logits up to "
                                         f"{_scale(a):.3g}): predictions change from call to call")


def _batch_independent(head, widths):
    feats = _features(widths, SIZES[-1], batch=3)
    with torch.no_grad():
        batch = _outputs(head, feats)
        alone = _outputs(head, [f[:1] for f in feats])
    ok, diff = _equal(alone, {k: v[:1] for k, v in batch.items()})
    return ok, f"max diff {diff:.2g}", (f"sample 0 alone differs from sample 0 in a batch of 3 by {diff:.3g}: "
                                         f"the head mixes the samples of a batch in eval mode")


def _recording(head, widths):
    from .models.attention.record import clear_records, record_attention

    feats = _features(widths, SIZES[-1])
    with torch.no_grad():
        plain = _outputs(head, feats)
        with record_attention(head):
            recorded = _outputs(head, feats)
    clear_records(head)
    ok, diff = _equal(plain, recorded)
    return ok, f"max diff {diff:.2g}", f"recording the attention changes the logits by {diff:.3g}"


def _gradients(head, widths, num_classes, seed):
    model = _segmentor(head, num_classes)
    feats = _features(widths, SIZES[-1])
    target = _target(num_classes, SIZES[-1], 2, seed)
    params = dict(head.named_parameters())
    exempt = grad_exemptions(head)
    unknown = sorted(set(exempt) - set(params))
    if unknown:
        return False, "bad declaration", f"grad_exempt names parameters the head does not have: {unknown}"
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n in zero_initialised(head):  # open the branches a zero start keeps shut (see the docstring)
            params[n].copy_(torch.randn(params[n].shape, generator=g, dtype=params[n].dtype) * 0.5)
    torch.manual_seed(seed)
    loss, _ = model.loss(model(feats), target)
    loss.backward()
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    bad = [n for n, p in trainable.items() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bad:
        return False, "non-finite", f"non-finite gradients of {', '.join(bad)}"
    largest = {n: float(p.grad.abs().max()) if p.grad is not None else 0.0 for n, p in trainable.items()}
    top = max(largest.values(), default=0.0)
    dead = [n for n in trainable if n not in exempt and largest[n] <= 1e-8 * top]
    value = f"{len(trainable) - len(dead) - len(exempt)} of {len(trainable)} learn" + (f", {len(exempt)} exempt" if exempt else "")
    return not dead, value, (f"no gradient (or zero: below 1e-8 of the largest) for {', '.join(dead[:6])}"
                             f"{' ...' if len(dead) > 6 else ''}; a parameter that cannot learn by construction is "
                             f"declared on its module: grad_exempt = {{name: why}}")


def _one_step(head, widths, num_classes, seed):
    model = _segmentor(head, num_classes)
    feats = _features(widths, SIZES[-1])
    target = _target(num_classes, SIZES[-1], 2, seed)
    opt = torch.optim.SGD(head.parameters(), lr=0.01)

    def loss():
        torch.manual_seed(seed)  # the same dropout mask and random draws before and after the step
        return model.loss(model(feats), target)[0]

    before = loss()
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss()
    ok = bool(after < before)
    return ok, f"{float(before):.4f} -> {float(after):.4f}", (f"one SGD step (lr 0.01) on a fixed batch took the "
                                                             f"loss from {float(before):.5g} to {float(after):.5g}")


def reported_checks(head: nn.Module, head_cfg: dict, widths: list[int], num_classes: int,
                    formats: list[str] | None = None) -> list[Check]:
    """The reported checks: bf16 autocast, export formats, and the cost at the benchmarks' size."""
    checks = []
    head = copy.deepcopy(head).float().eval()
    feats = _features(widths, SIZES[-1], dtype=torch.float32)
    with torch.no_grad():
        ref = _outputs(head, feats)["out"]
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = _outputs(head, feats)["out"].float()
            agree = float((low.argmax(1) == ref.argmax(1)).float().mean())
            rel = float((low - ref).abs().max()) / max(float(ref.abs().max()), 1e-12)
            checks.append(Check("bf16 autocast", False, None, f"max diff {rel:.2%} of the largest logit, "
                                                            f"{agree:.1%} of pixels agree"))
        except Exception as e:
            checks.append(Check("bf16 autocast", False, False, f"raised {type(e).__name__}: {e}"[:120]))
    if formats is None or formats:
        checks.append(Check("export", False, None, export_formats(head_cfg, num_classes, formats)))
    checks.append(Check("cost at 97x97", False, None, cost(head, widths)))
    return checks


def export_formats(head_cfg: dict, num_classes: int, formats: list[str] | None = None) -> str:
    """Which export formats reproduce a model with this head at a second input size (ResNet-18 at width 8;
    exported at 64x96, run at 96x64): ``format: ok`` / ``format: why not``."""
    import tempfile

    from .deploy import FORMATS, ExportGraph, export_model, export_reason, load_exported
    from .models import build_model

    torch.manual_seed(0)
    model = build_model({"depth": 18, "output_stride": 8, "width": 8}, dict(head_cfg), num_classes,
                        aux_head={"weight": 0}).eval()
    second = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        expected = ExportGraph(model).eval()(second)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in formats or FORMATS:
            if export_reason(head_cfg.get("name"), fmt, dynamic=True):
                results.append(f"{fmt}: declared unsupported")
                continue
            try:
                path = os.path.join(tmp, "model" + FORMATS[fmt])
                with warnings.catch_warnings():  # the tracer's warnings: the comparison below says what matters
                    warnings.simplefilter("ignore")
                    export_model(model, path, fmt, (64, 96), dynamic=True)
                with torch.no_grad():
                    got = load_exported(path, fmt)(second)
                ok = torch.allclose(got, expected, rtol=1e-3, atol=1e-4)
                results.append(f"{fmt}: {'ok' if ok else 'differs at a second size'}")
            except Exception as e:  # noqa: BLE001 - reported, not gating: say what the exporter said
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                results.append(f"{fmt}: fails ({type(e).__name__}: {msg[:60]})")
    return "; ".join(results)


def cost(head: nn.Module, widths: list[int]) -> str:
    """Parameters, forward FLOPs (torch's FlopCounterMode: matrix products and convolutions) and activation
    memory (the tensors autograd saves for backward) of ``head`` at 97x97 features, batch 1, float32."""
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in head.parameters())
    feats = _features(widths, BENCH_SIZE, batch=1, dtype=torch.float32)
    saved = {}

    def pack(t):
        saved[t.data_ptr()] = t.numel() * t.element_size()  # a tensor saved by several nodes counts once
        return t

    head = head.train()
    with FlopCounterMode(display=False) as counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _outputs(head, feats)
    return (f"{params / 1e6:.3f} M parameters, {counter.get_total_flops() / 1e9:.2f} GFLOPs forward, "
            f"{sum(saved.values()) / 2**20:.0f} MiB activations (batch 1, float32)")


def format_table(checks: list[Check]) -> str:
    rows = [("check", "kind", "result", "value")]
    for c in checks:
        result = "-" if c.passed is None else ("pass" if c.passed else "FAIL")
        rows.append((c.name, "gating" if c.gating else "reported", result, c.value))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 5)
    return "\n".join(lines)


def failures(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.gating and not c.passed]


def main(argv: list[str] | None = None) -> int:
    """``python -m segattn.check [overrides]``: conf/train.yaml's ``head``, ``backbone`` and ``plugins``
    composed with Hydra-style overrides (``head=cc``, ``head.channels=64``, ``plugins=[x.py]``,
    ``hydra.searchpath=[file:///my/conf]``); exit 1 when a gating check fails."""
    from .cli import compose_train_config
    from .plugins import import_plugins

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    formats = None  # --export onnx,torchscript | none: the export formats tried (ONNX's exporter is the slow one)
    if "--export" in argv:
        i = argv.index("--export")
        value = argv[i + 1] if i + 1 < len(argv) else ""
        del argv[i:i + 2]
        formats = [] if value == "none" else [f for f in value.split(",") if f]
    try:
        from .deploy import FORMATS

        unknown = [f for f in formats or [] if f not in FORMATS]
        if unknown or formats == [] and value != "none":
            raise ValueError(f"--export {value!r}: expected 'none' or formats among {', '.join(FORMATS)}, comma-separated")
        cfg = compose_train_config(argv, prog="segattn.check")
        import_plugins(cfg.get("plugins"))
        head = cfg["head"]
        widths = feature_widths(cfg.get("backbone"))
        print(f"checking head {head.get('name')!r} ({', '.join(f'{k}={v}' for k, v in head.items() if k != 'name')}) "
              f"on features of {widths} channels", file=sys.stderr)
        checks = run_checks(head, widths, formats=formats)
    except (ValueError, OSError) as e:
        print(f"segattn.check: error: {e}", file=sys.stderr)
        return 2
    print(format_table(checks))
    failed = failures(checks)
    if failed:
        for c in failed:
            print(f"FAILED {c.name}: {c.why}", file=sys.stderr)
        return 1
    print(f"all {sum(c.gating for c in checks)} gating checks pass", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
