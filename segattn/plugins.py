"""Plugins: attention mechanisms and decode heads written outside segattn, imported by name.

A plugin is a Python module (an importable name, ``my_lab.attention``, or a file, ``my_attention.py``)
that registers what it defines with the decorators the package's own heads use::

    import segattn

    @segattn.register_attention("pooled_nl")     # (N, C, H, W) -> (N, C, H, W): runs in the generic head
    class PooledNonLocal(nn.Module): ...

    @segattn.register_head("my_head")            # a whole decode head over [c2, c3, c4, c5]
    class MyHead(segattn.models.heads.BaseDecodeHead): ...

The config key ``plugins`` (train.py, eval.py, export.py, scripts/study.py), ``--plugins`` of
benchmarks/context.py and ``segattn.load(path, plugins=[...])`` name the modules; :func:`import_plugins`
imports them before anything is built, as mmsegmentation's ``custom_imports`` does. A checkpoint records
the plugin its head came from (``head_plugin`` in its config) but never imports it: a checkpoint is data,
and only the code a user names runs. :func:`require_head` turns a checkpoint whose head is not registered
into one paragraph that names the module to pass.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys

# plugin as given -> the module it imported (a second import_plugins of the same plugin is a no-op).
_IMPORTED: dict[str, object] = {}
# registered name -> the plugin (as given) whose import registered it.
_ORIGIN: dict[str, str] = {}


def _registered() -> set[str]:
    from .models.attention import ATTENTIONS
    from .models.heads import HEADS

    return set(ATTENTIONS) | set(HEADS)


def _is_path(plugin: str) -> bool:
    return plugin.endswith(".py") or os.sep in plugin or (os.altsep is not None and os.altsep in plugin)


def _import_file(path: str):
    """Import the file ``path`` as a module of its own (its name: the file's stem and a hash of its full
    path, so two ``attention.py`` of different folders do not collide)."""
    full = os.path.abspath(path)
    stem = os.path.splitext(os.path.basename(full))[0]
    name = f"segattn_plugin_{stem}_{hashlib.sha1(full.encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, pickling by DataLoader workers and torch.export look it up
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_plugins(plugins: list[str] | tuple[str, ...] | str | None, key: str = "plugins") -> list[str]:
    """Import each plugin (a module name or a ``.py`` path) once; returns the names they registered.

    ``key`` names the option in errors (``plugins`` for the entry points, ``--plugins`` for the benchmark).
    A plugin that cannot be imported is one ``ValueError`` naming it and what its import raised."""
    if plugins is None:
        return []
    if isinstance(plugins, str):
        plugins = [plugins]
    if not isinstance(plugins, (list, tuple)):
        raise ValueError(f"{key}={plugins!r}: expected a list of module names or .py files, e.g. "
                         f"{key}=[my_attention.py]")
    _registered()  # the package's own heads first, so a plugin that repeats one of their names is refused
    new = []
    for plugin in map(str, plugins):
        if plugin in _IMPORTED:
            continue
        if _is_path(plugin) and not os.path.isfile(plugin):
            raise ValueError(f"{key}: {plugin!r} is not a file ({os.path.abspath(plugin)} does not exist); give a "
                             f".py file (relative to {os.getcwd()}) or an importable module name")
        before = _registered()
        try:
            module = _import_file(plugin) if _is_path(plugin) else importlib.import_module(plugin)
        except ModuleNotFoundError as e:
            if not _is_path(plugin) and e.name == plugin.split(".")[0]:
                raise ValueError(f"{key}: no module named {plugin!r} (not importable from {os.getcwd()}); give "
                                 f"a .py path, or put its folder on PYTHONPATH") from None
            raise ValueError(f"{key}: importing {plugin!r} failed: {type(e).__name__}: {e}") from e
        except Exception as e:  # the plugin's own error (a typo, a name registered twice, a bad taxonomy)
            raise ValueError(f"{key}: importing {plugin!r} failed: {type(e).__name__}: {e}") from e
        _IMPORTED[plugin] = module
        added = sorted(_registered() - before)
        for name in added:
            _ORIGIN[name] = plugin
        new += added
    return new


def plugin_of(name: str) -> str | None:
    """The plugin (as it was given) that registered head or mechanism ``name``; None for the package's own."""
    return _ORIGIN.get(name)


def plugin_names() -> list[str]:
    """The heads and mechanisms registered by plugins in this process."""
    return sorted(_ORIGIN)


def require_head(cfg: dict, source: str) -> None:
    """Refuse, in one paragraph, a config (a checkpoint's, usually) whose ``head.name`` is not registered
    here: it names the plugin the checkpoint recorded and the key that imports it. ``source`` says where
    the config comes from (``checkpoint='runs/x/best.pt'``)."""
    name = (cfg.get("head") or {}).get("name")
    if name is None or name in _registered() or name == "fcn":
        return
    recorded = cfg.get("head_plugin")
    if recorded:
        plugins = [p for p in (cfg.get("plugins") or []) if p == recorded] or [recorded]
        hint = (f"it was trained with the plugin {recorded!r}, which registered {name!r}. A checkpoint "
                f"never imports code by itself: name the plugin yourself, plugins=[{', '.join(plugins)}] "
                f"(eval.py, export.py; segattn.load(path, plugins=[{', '.join(map(repr, plugins))}]))")
    else:
        hint = (f"it records no plugin; if {name!r} came from a module of yours, name it with plugins=[...] "
                f"(eval.py, export.py; segattn.load(path, plugins=[...]))")
    raise ValueError(f"{source}: its head {name!r} is not registered in this process: {hint}. A relative "
                     f".py path is read from the working directory ({os.getcwd()}).")
