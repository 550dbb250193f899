"""The heads' registry, their facts, and ``build_head``.

``@register_head("da")`` on a head class makes ``head=da`` build it; a registered attention
mechanism without a head of its own gets the generic :class:`AttentionHead`. The head's facts
(:class:`HeadFacts`) are class attributes of the head (see :class:`BaseDecodeHead`), or, for a
mechanism in the generic head, of the mechanism's class; everything that lists heads (the recipes,
the export checks, the benchmarks, the README table) reads them from here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch.nn as nn

from ..attention import ATTENTIONS
from .attention_head import AttentionHead

# name -> decode head class (FCN and the heads the papers define: DANet's three classifiers, ...).
HEADS: dict[str, type[nn.Module]] = {}


def register_head(*names: str):
    """Class decorator: ``@register_head("oc", "oc_pyramid")`` builds the class for ``head=oc`` etc.
    A head class with an ``attention`` argument is given the name it was built by."""

    def deco(cls):
        for name in names:
            if name in HEADS:
                raise ValueError(f"head {name!r} is registered twice ({HEADS[name].__name__}, {cls.__name__})")
            HEADS[name] = cls
        return cls

    return deco


def head_names() -> list[str]:
    """``fcn`` first, then every other head (registered heads and attention mechanisms) by name."""
    return ["fcn", *sorted((set(HEADS) | set(ATTENTIONS)) - {"fcn"})]


def head_class(name: str) -> type[nn.Module]:
    if name in HEADS:
        return HEADS[name]
    if name in ATTENTIONS:
        return AttentionHead
    if name == "custom":  # conf/head/custom.yaml as it stands: the registered name is still to be given
        raise ValueError("head=custom runs a mechanism (or a head) of your own: set head.name=<the name your plugin "
                         "registered> and plugins=[<your module or .py file>], e.g. plugins=[examples/pooled_attention.py] "
                         "head=custom head.name=pooled_nl (README: Bring your own head)")
    raise ValueError(f"head.name={name!r} is not a known head; choices: {', '.join(head_names())}. A head of your "
                     f"own is registered by a plugin: plugins=[<your module or .py file>] (README: Bring your own head)")


@dataclass(frozen=True)
class HeadFacts:
    """What is known about head ``name`` besides its code (the README's and the recipes' columns)."""

    name: str
    paper: str | None = None  # optional for a plugin's head (every built-in head declares it)
    reference: str | None = None
    deviations: str | None = None
    taxonomy: dict | None = None  # the mechanism's, None for a head without a registered mechanism
    published: dict[str, float] = field(default_factory=dict)
    recipe_extras: dict[str, dict] = field(default_factory=dict)
    mmseg_params: int | None = None
    export_static_only: dict[str, str] = field(default_factory=dict)
    export_unsupported: dict[str, str] = field(default_factory=dict)


# Facts about a recipe or an export belong to the class that declares them, not to its subclasses
# (DNL's block subclasses the non-local one, and its recipe is another).
_OWN = ("published", "recipe_extras", "mmseg_params", "export_static_only", "export_unsupported")


def head_facts(name: str) -> HeadFacts:
    """The facts of head ``name``: from its head class, then from its mechanism's class."""
    owners = [c for c in (HEADS.get(name), ATTENTIONS.get(name)) if c is not None]
    if not owners:
        head_class(name)  # raises, naming the choices

    def fact(attr):
        for cls in owners:
            value = vars(cls).get(attr) if attr in _OWN else getattr(cls, attr, None)
            if value is not None:
                return value
        return None

    values = {attr: fact(attr) for attr in ("paper", "reference", "deviations", *_OWN)}
    values = {k: v for k, v in values.items() if v is not None}
    mechanism = ATTENTIONS.get(name)
    return HeadFacts(name=name, taxonomy=getattr(mechanism, "taxonomy", None), **values)


def head_options(name: str) -> set[str]:
    """The keys a ``head`` config node may hold for head ``name`` (besides ``name``)."""
    params = list(inspect.signature(head_class(name)).parameters.values())
    if any(p.kind == p.VAR_KEYWORD for p in params) and name in ATTENTIONS:
        params += list(inspect.signature(ATTENTIONS[name]).parameters.values())  # the rest goes to the mechanism
    keys = {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return keys - {"self", "in_channels", "num_classes", "attention", "in_index", "fuse"}


def build_head(cfg: dict, in_channels: list[int], num_classes: int) -> nn.Module:
    """Build ``cfg["name"]`` (``fcn``, a registered head or any registered attention) on stages with
    ``in_channels``.

    Keys that belong to no option of the head are refused up front, naming the head they do belong
    to: that is what ``head.name=cc`` (instead of the config group ``head=cc``) leaves behind.
    """
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    cls = head_class(name)
    unknown = sorted(set(cfg) - head_options(name))
    if unknown:
        owners = [h for h in head_names() if h != name and set(unknown) <= head_options(h)]
        whose = f" (options of head={owners[0]})" if owners else ""
        raise ValueError(
            f"head.name={name!r} does not take head.{', head.'.join(unknown)}{whose}. To switch heads, choose the "
            f"config group: head={name}, not head.name={name} (the group loads conf/head/{name}.yaml); "
            f"head {name!r} accepts: {', '.join(sorted(head_options(name)))}")
    if "attention" in inspect.signature(cls).parameters:
        cfg["attention"] = name
    return cls(list(in_channels), num_classes, **cfg)
