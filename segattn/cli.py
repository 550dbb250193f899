"""What the entry points (train.py, eval.py, export.py) share: the config schemas and the run-name
resolver they register with Hydra (:func:`register_configs`), the check of the overrides against the
schema (:func:`check_overrides`), and the one-paragraph errors. Hydra is imported only by these
functions, so the library itself does not need it.

A mistake in the command line or the data (a wrong key, a missing file, a batch too small for a
head) raises a ``ValueError`` / ``OSError`` whose message names the key and the fix; here it is
printed as that one paragraph, without the Python traceback, and the process exits with status 1.
``HYDRA_FULL_ERROR=1`` shows the traceback, as for Hydra's own errors. A run stopped by SIGINT or
SIGTERM exits with the shell's status for the signal (130, 143) after saying how to continue.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys

from .config import ConfigNode, EvalConfig, ExportConfig, TrainConfig
from .engine.elastic import RankLost, launch_key
from .engine.stopping import Interrupted

# conf/<name>.yaml's defaults list starts with ``optional schema@_here_: <name>``: with these registered,
# Hydra checks every key and value type while it composes.
SCHEMAS = {"train": TrainConfig, "eval": EvalConfig, "export": ExportConfig}

# Said already, or not changing what is learnt.
_NOT_IN_NAME = ("head", "backbone", "seed", "backbone.block_attention", "model.scale_attention.scales",
                "trainer.progress", "trainer.num_workers", "trainer.log_interval", "trainer.device")

# Errors whose message is the whole story (ours name the key or file); anything else is a bug
# and keeps its traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError)


@contextlib.contextmanager
def user_errors(prog: str):
    """``with user_errors("train.py"):`` around an entry point's work (see the module docstring)."""
    try:
        yield
    except RankLost as e:  # one line, from each survivor of a lost rank; torchrun takes over
        print(e, file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except Interrupted as e:
        print(f"{prog}: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except USER_ERRORS as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{prog}: error: {e}\n(set HYDRA_FULL_ERROR=1 to see the traceback)", file=sys.stderr)
        raise SystemExit(1) from None


def override_value(argv: list[str], key: str) -> str | None:
    """The value ``key=VALUE`` (or ``+key=`` / ``++key=``) gives on the command line, else None."""
    value = None
    for arg in argv:
        m = re.fullmatch(rf"\+{{0,2}}{re.escape(key)}=(.*)", arg)
        if m:
            value = m.group(1).strip("'\"")
    return value


# [the first folder check_run_dir found missing (or None), the folder it checked]: what remove_if_refused
# may remove when left empty.
_MADE_HERE: list = []


def check_run_dir(argv: list[str], default: str) -> None:
    """Stop, before Hydra opens its log file there, when the run directory cannot be written:
    ``hydra.run.dir`` as given (a read-only folder or disk, a path under a file), else ``default``
    (the folder the configured ``hydra.run.dir`` lives in, relative to the working directory)."""
    _MADE_HERE[:] = []
    if "--multirun" in argv or "-m" in argv:
        return
    given = override_value(argv, "hydra.run.dir")
    path = given if given and "${" not in given else default
    # The first folder of the path that does not exist yet (a refused run removes it again when empty),
    # after the path itself (Hydra makes the folders below it: outputs/eval/<date>/<time>).
    _MADE_HERE[:] = [None, os.path.abspath(path)]
    missing = os.path.abspath(path)
    while not os.path.exists(missing) and os.path.dirname(missing) != missing:
        _MADE_HERE[0] = missing
        missing = os.path.dirname(missing)
    key = f"hydra.run.dir={given}" if given else f"the run directory under {os.path.abspath(default)!r}"
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise SystemExit(f"{key}: {parent!r} is a file, so no folder can be made under it; "
                         f"set hydra.run.dir to a folder path")
    # Hydra creates the folder next anyway; creating it (and a probe file) here is the only test that
    # covers permissions, read-only disks and pseudo file systems alike.
    probe = os.path.join(path, ".segattn_write_probe")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0")
        os.remove(probe)
    except OSError as e:
        why = "is on a read-only disk" if _read_only_mount(parent) else f"cannot be written ({e.strerror})"
        raise SystemExit(f"{key}: {os.path.abspath(path)!r} {why}, so the run cannot save anything there; "
                         f"set hydra.run.dir to a writable folder") from None


def _read_only_mount(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


@contextlib.contextmanager
def remove_if_refused(run_dir: str):
    """``with remove_if_refused(run_dir):`` around an entry point's work: when it refuses (exit status 1,
    a mistake of the command line or the data) before writing any result, the run directory Hydra
    made for it (``.hydra/``, an empty ``checkpoints/``) is removed again, and the empty folders above it
    that were made for it (up to the first one :func:`check_run_dir` found missing: ``outputs/eval/``). A
    directory that held anything else before (a resumed run, a folder of the user's)
    is left as it is, as is one where training wrote a checkpoint or TensorBoard events."""
    run_dir = os.path.abspath(run_dir)
    fresh = os.path.isdir(run_dir) and set(os.listdir(run_dir)) <= {".hydra"} and run_dir != os.getcwd()
    try:
        yield
    except SystemExit as e:
        if e.code == 1 and fresh and not _holds_results(run_dir):
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
            # The folders above it that were made for this run, when left empty (outputs/eval/<date>/, up to
            # the first one check_run_dir found missing); never a folder that was there before, such as the
            # working directory.
            made, root = _MADE_HERE if _MADE_HERE else (None, run_dir)

            def made_for_it(folder: str) -> bool:
                below = folder.startswith(root + os.sep)
                return below or bool(made) and (folder == made or folder.startswith(made + os.sep))

            parent = os.path.dirname(run_dir)
            with contextlib.suppress(OSError):
                while made_for_it(parent):
                    os.rmdir(parent)
                    parent = os.path.dirname(parent)
        raise


def _holds_results(run_dir: str) -> bool:
    """Whether a run wrote something worth keeping: a checkpoint, TensorBoard events, metrics."""
    for _, _, files in os.walk(run_dir):
        if any(f.endswith(".pt") or f.startswith("events.out.tfevents")
               or f in ("metrics.json", "eval.json", "dataset_check.txt") for f in files):
            return True
    return False
# The longest run folder name after its time: short enough to read in a listing.
RUN_NAME_MAX = 100


def run_name(head, backbone, block_attention, scales, seed, overrides: str) -> str:
    """The run folder's name after its time (``hydra.run.dir``): what tells two runs apart, the head,
    backbone, block and scale attention, seed, then the other overrides as whole ``key-value`` entries
    (``trainer.max_iters=200``: ``max_iters-200``; the full key where two share their last part), the
    shortest first, while the name stays within ``RUN_NAME_MAX`` characters; those that do not fit (a
    long path, the tenth override) are never cut but replaced by ``N-more-<hash>``, a short hash of them,
    so two runs never get one name. The full overrides are in the run's ``.hydra/overrides.yaml``."""
    import hashlib

    parts = [str(head), str(backbone)]
    if block_attention:
        parts.append(f"{block_attention}-blocks")
    if scales:
        parts.append("scales" + "-".join(f"{s:g}" for s in scales))
    parts.append(f"seed{seed}")
    # Only characters a path passed back as an override (eval.py checkpoint=...) may hold unquoted.
    safe = lambda text: re.sub(r"[^A-Za-z0-9._+-]", "-", text)  # noqa: E731
    name = safe("_".join(parts))
    rest = [o for o in _split_overrides(str(overrides or ""))
            if o and not o.split("=")[0].lstrip("+~") in _NOT_IN_NAME]
    # Each key by its last part (trainer.max_iters: max_iters) unless two overrides share that part.
    leaf = lambda o: o.split("=")[0].lstrip("+~").split(".")[-1]  # noqa: E731
    shared = {k for k in map(leaf, rest) if [leaf(o) for o in rest].count(k) > 1}
    entries = {o: safe(re.sub(r"[\[\]'\"]", "", o if leaf(o) in shared else leaf(o) + o[o.index("="):])
                       .replace("=", "-")) for o in rest if "=" in o}
    left_out = []
    # The shortest first, so that a long one (a path, a list of names) leaves room for the others.
    order = sorted(entries, key=lambda o: len(entries[o]))
    for o in order:
        entry = entries[o]
        # room for the hash suffix of whatever may still be left out after this one
        if len(name) + 1 + len(entry) + len("_99-more-123456") <= RUN_NAME_MAX or \
                (o == order[-1] and not left_out and len(name) + 1 + len(entry) <= RUN_NAME_MAX):
            name += "_" + entry
        else:
            left_out.append(o)
    if left_out:
        digest = hashlib.sha1(",".join(left_out).encode()).hexdigest()[:6]
        name += f"_{len(left_out)}-more-{digest}"
    return name


def _split_overrides(joined: str) -> list[str]:
    """Hydra's ``job.override_dirname`` (``a=1,b=[64,96]``) back into overrides: split at the commas
    outside brackets, braces and quotes."""
    out, depth, quote, start = [], 0, None, 0
    for i, c in enumerate(joined):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "[{(":
            depth += 1
        elif c in "]})":
            depth = max(depth - 1, 0)
        elif c == "," and depth == 0:
            out.append(joined[start:i])
            start = i + 1
    out.append(joined[start:])
    return [o for o in out if o]


def run_stamp() -> str:
    """The run folder's first part (``hydra.run.dir``): ``<date>/<time>`` of the start, or, under a launcher
    that restarts (torchrun, a Slurm job), what names the launch (``torchrun/<id>``, ``slurm/<job id>``:
    ``segattn.engine.elastic.launch_key``), so that every restart finds the same folder."""
    import datetime

    return launch_key() or datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")


def register_configs() -> None:
    """Register the config schemas with Hydra's ConfigStore and the ``run_name`` resolver with OmegaConf
    (conf/train.yaml's ``hydra.run.dir`` uses it). Whatever composes conf/ calls this first: the entry
    points, the benchmarks, the scripts and the tests. Registering again replaces the same entries."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    for name, node in SCHEMAS.items():
        ConfigStore.instance().store(group="schema", name=name, node=node)
    OmegaConf.register_new_resolver("run_name", run_name, replace=True)
    # Cached: resolved once per composed config, as Hydra's ${now:} is.
    OmegaConf.register_new_resolver("run_stamp", run_stamp, replace=True, use_cache=True)


def check_overrides(argv: list[str], schema: type[ConfigNode]) -> None:
    """Stop on an override of a key the schema does not have (``trainer.max_iter=5``), listing the valid
    keys, before Hydra composes (it would refuse the key too, without saying which ones exist).
    Additions (``+key=...``), deletions and ``hydra.*`` / ``group/option`` overrides are Hydra's."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = get_args_parser().parse_known_args(argv)[0].overrides
    parsed = OverridesParser.create().parse_overrides(overrides)
    if not any(o.key_or_group == "hydra.searchpath" for o in parsed):  # other folders: Hydra's own message
        for o in parsed:
            _check_group_option(o)
    for o in parsed:
        key = o.key_or_group
        if o.is_add() or o.is_force_add() or o.is_delete() or o.package is not None or "/" in key \
                or key.split(".")[0] in ("hydra", "schema"):
            continue
        try:
            schema.check_key(key)
        except ValueError as e:
            raise SystemExit(f"Could not override '{o.input_line}': {e}") from None


def _group_options(group: str) -> list[str] | None:
    """The options of the config group ``group`` (``head``: conf/head/*.yaml and what is registered in
    Hydra's ConfigStore under it), or None when ``group`` is not a group of conf/."""
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf", group)
    if group.startswith("hydra") or not os.path.isdir(folder):
        return None
    names = {f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")}
    with contextlib.suppress(Exception):
        from hydra.core.config_store import ConfigStore

        names |= {n.removesuffix(".yaml") for n in ConfigStore.instance().list(group) if n.endswith(".yaml")}
    return sorted(names)


def _check_group_option(o) -> None:
    """Stop on a group option that does not exist (``head=ccc``) with one paragraph: the closest option
    and all of them on one line (Hydra prints one a line, and its search path)."""
    import difflib

    if o.is_delete() or o.package is not None:
        return
    group = o.key_or_group
    options = _group_options(group)
    if options is None:
        return
    try:
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
    except Exception:  # glob(...) and ranges need Hydra's config loader: Hydra checks those itself
        return
    for value in values:
        if not isinstance(value, str) or value in options:
            continue
        close = difflib.get_close_matches(value, options, n=1, cutoff=0.5)
        key = o.input_line.split("=")[0]  # head, +experiment
        hint = f" Did you mean {key}={close[0]}?" if close else ""
        raise SystemExit(f"Could not override '{o.input_line}': conf/{group}/ has no option {value!r}.{hint} "
                         f"The {group} options: {', '.join(options)}")


def compose_train_config(argv: list[str], prog: str = "segattn") -> dict:
    """conf/train.yaml composed with ``argv`` (Hydra overrides, ``hydra.searchpath=[file:///my/conf]``
    included) as a plain dict, outside a Hydra app, as ``train.py`` composes it: what ``python -m segattn.check``,
    the benchmarks and the scripts read."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    conf = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
    if not os.path.isfile(os.path.join(conf, "train.yaml")):
        raise OSError(f"{prog}: {conf}/train.yaml not found: run it from a checkout of segattn (pip install -e .)")
    check_overrides(argv, TrainConfig)
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=conf):
            return OmegaConf.to_container(compose("train", overrides=list(argv)), resolve=True)
    finally:
        GlobalHydra.instance().clear()
