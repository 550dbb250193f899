"""Experiment trackers: where the training loop's scalars, pictures and hyper-parameters go.

The loop logs through one small interface, :class:`Tracker` (``add_scalar``, ``add_image``,
``add_hparams``, ``close``: TensorBoard's ``SummaryWriter`` names, so the logging functions read as
before), and ``logger`` in conf/train.yaml lists the backends that receive every call:

- ``tensorboard`` (the default): event files in the run directory, exactly as before;
- ``mlflow``: a run in an MLflow tracking store: the flattened config as params, every scalar as a metric at
  its step (per-class IoU included), every picture as a PNG artifact ``<tag>/step_<N>.png``. The store is
  ``mlflow.tracking_uri`` when set, else ``MLFLOW_TRACKING_URI`` (MLflow's own convention: a team's
  tracking server), else a SQLite file ``<run dir>/mlflow.db`` with the pictures in ``<run dir>/mlartifacts``
  -- the local store MLflow recommends now that its file store is in maintenance. The line printed at the
  end serves it: ``mlflow ui --backend-store-uri sqlite:///.../mlflow.db``.

Another backend (W&B in offline mode, say) is one class here with these four methods and an entry in
``TRACKERS``.
"""

from __future__ import annotations

import os
import re
import shutil
import sys

import numpy as np

from ..config import TrainConfig


class Tracker:
    """What the training loop calls. ``image``: an (H, W, 3) uint8 array (``dataformats="HWC"``)."""

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        raise NotImplementedError

    def add_image(self, tag: str, image: np.ndarray, step: int, dataformats: str = "HWC") -> None:
        raise NotImplementedError

    def add_hparams(self, hparams: dict, metrics: dict, step: int) -> None:
        """The run's hyper-parameters with its final metrics, once, when the run finishes."""
        raise NotImplementedError

    def flush(self) -> None:
        """Put what was logged so far on disk (at every checkpoint, so the two agree after a crash)."""

    def close(self) -> None:
        pass

    def where(self) -> str:
        """One line for the end of the run: where to look at what was logged."""
        return ""


class TensorBoardTracker(Tracker):
    """Event files in the run directory (the run directory is the log dir)."""

    def __init__(self, run_dir: str, cfg: TrainConfig, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        # purge_step: a resumed run's first iteration. TensorBoard then drops the steps from there on that
        # the earlier attempt logged after its checkpoint, so the curve has each step once.
        self.writer = SummaryWriter(run_dir, purge_step=purge_step)

    def add_scalar(self, tag, value, step):
        self.writer.add_scalar(tag, value, step)

    def add_image(self, tag, image, step, dataformats="HWC"):
        self.writer.add_image(tag, image, step, dataformats=dataformats)

    def add_hparams(self, hparams, metrics, step):
        # Written into the run's own event file (SummaryWriter.add_hparams would open a sub-run), so
        # the HParams tab lists one session per run directory next to its scalars.
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        for summary in hparams_summary(hparams, metrics):
            self.writer.file_writer.add_summary(summary, step)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()

    def where(self):
        return f"TensorBoard: {command('tensorboard')} --logdir {self.run_dir}"  # runs as printed, venv active or not


def _flatten(node, prefix: str = "") -> dict[str, str]:
    """``{"trainer": {"max_iters": 80}}`` -> ``{"trainer.max_iters": "80"}`` (MLflow params are strings)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: str(node)[:6000]}  # MLflow's longest param value


def tracking_uri(run_dir: str, configured: str | None) -> str:
    """Where the MLflow run goes: ``mlflow.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the SQLite file
    ``<run dir>/mlflow.db``. A plain folder is MLflow's (deprecated) file store, ``file:<folder>``."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or \
        "sqlite:///" + os.path.join(os.path.abspath(run_dir), "mlflow.db")
    if "://" not in uri and not uri.startswith(("file:", "databricks")):
        uri = "file:" + os.path.abspath(uri)
    return uri


def command(name: str) -> str:
    """How to run the console script ``name`` of this Python environment from the user's shell: its bare
    name when that is what the shell finds, else its path (``.venv/bin/mlflow`` when the venv is not active)."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    found = shutil.which(name)
    if not os.path.exists(here) or (found and os.path.realpath(found) == os.path.realpath(here)):
        return name
    rel = os.path.relpath(here)
    return rel if not rel.startswith("..") else here


class MLflowTracker(Tracker):
    """A run in an MLflow tracking store (:func:`tracking_uri`), experiment ``mlflow.experiment``, named
    after the run directory."""

    def __init__(self, run_dir: str, cfg: TrainConfig, purge_step: int | None = None):
        from mlflow.tracking import MlflowClient

        # purge_step is TensorBoard's: each start of a run, a resumed one too, is an MLflow run of its own.
        uri = tracking_uri(run_dir, cfg.mlflow.tracking_uri)
        import importlib.util

        if uri.startswith("sqlite:") and importlib.util.find_spec("sqlalchemy") is None:
            raise ValueError(f"logger=[...,mlflow]: the run's MLflow store {uri} is a SQLite file, which needs the "
                             f"whole of MLflow (mlflow-skinny has no database support): pip install -e '.[mlflow]'; "
                             f"or send the run to a tracking server with mlflow.tracking_uri=http://host:5000")
        if uri.startswith("file:"):
            # MLflow 3 keeps the file store in maintenance and refuses it unless asked; a folder given as
            # mlflow.tracking_uri still asks for it.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(cfg.mlflow.experiment)
        if found:
            experiment = found.experiment_id
        else:
            # A local SQLite store keeps its pictures beside it (MLflow's default is ./mlartifacts of
            # whatever folder the run started in).
            local = uri.startswith("sqlite:///")
            where = os.path.join(os.path.dirname(uri[len("sqlite:///"):]), "mlartifacts") if local else None
            experiment = self.client.create_experiment(cfg.mlflow.experiment, artifact_location=where)
        self.experiment = experiment
        run = self.client.create_run(experiment, run_name=os.path.basename(os.path.abspath(run_dir)),
                                     tags={"segattn.run_dir": os.path.abspath(run_dir)})
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in _flatten(cfg.to_dict()).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    @staticmethod
    def _key(tag: str) -> str:
        # MLflow names: letters, digits, _ - . / and spaces
        return re.sub(r"[^\w\-. /]", "_", tag)

    def add_scalar(self, tag, value, step):
        self.client.log_metric(self.run_id, self._key(tag), float(value), step=int(step))

    def add_image(self, tag, image, step, dataformats="HWC"):
        if dataformats != "HWC":
            raise ValueError(f"MLflowTracker.add_image: dataformats={dataformats!r}; the loop logs HWC images")
        self.client.log_image(self.run_id, np.ascontiguousarray(image), f"{self._key(tag)}/step_{int(step):06d}.png")

    def add_hparams(self, hparams, metrics, step):
        for key, value in metrics.items():
            self.add_scalar(key, value, step)

    def close(self):
        self.client.set_terminated(self.run_id)

    def where(self):
        if self.uri.startswith(("http://", "https://")):  # a tracking server: the run's page
            return f"MLflow:      {self.uri.rstrip('/')}/#/experiments/{self.experiment}/runs/{self.run_id}"
        if self.uri.startswith(("sqlite:", "file:")):  # a local store: the command that serves it
            return f"MLflow:      {command('mlflow')} ui --backend-store-uri {self.uri}  (run {self.run_id})"
        return f"MLflow:      run {self.run_id} in {self.uri}"


TRACKERS = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker}
# The package each backend needs, and the extra that installs it.
PACKAGES = {"mlflow": ("mlflow", "pip install -e '.[mlflow]' (MLflow with its UI and SQLite store)")}


def tracker_names(logger) -> list[str]:
    """``logger`` (a list of names, or one name) checked: a known backend whose package is installed.
    Raises ValueError naming the key; called before the run builds anything."""
    names = [logger] if isinstance(logger, str) else list(logger or [])
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"logger={names}: {name!r} is not a known experiment tracker; choices: "
                             f"{', '.join(TRACKERS)} (e.g. 'logger=[tensorboard,mlflow]')")
        if name in PACKAGES:
            import importlib.util

            module, install = PACKAGES[name]
            if importlib.util.find_spec(module) is None:
                raise ValueError(f"logger={names}: {name} needs the {module} package, which is not installed: "
                                 f"{install}")
    return list(dict.fromkeys(names))


class Trackers(Tracker):
    """Every configured backend behind the one interface: each call goes to each of them."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def add_scalar(self, tag, value, step):
        for t in self.trackers:
            t.add_scalar(tag, value, step)

    def add_image(self, tag, image, step, dataformats="HWC"):
        for t in self.trackers:
            t.add_image(tag, image, step, dataformats=dataformats)

    def add_hparams(self, hparams, metrics, step):
        for t in self.trackers:
            t.add_hparams(hparams, metrics, step)

    def flush(self):
        for t in self.trackers:
            t.flush()

    def close(self):
        for t in self.trackers:
            t.close()

    def where(self):
        return "\n".join(line for line in (t.where() for t in self.trackers) if line)


def build_trackers(run_dir: str, cfg: dict | TrainConfig, purge_step: int | None = None) -> Trackers:
    """The backends ``cfg.logger`` names, writing for the run in ``run_dir``; ``purge_step``: the first
    iteration of a resumed run (what an earlier attempt logged from there on is dropped)."""
    cfg = TrainConfig.from_dict(cfg)
    return Trackers([TRACKERS[name](run_dir, cfg, purge_step=purge_step) for name in tracker_names(cfg.logger)])
