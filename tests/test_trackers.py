"""logger=[tensorboard,mlflow]: both trackers get the same params, scalars and pictures through the one
interface (segattn/engine/trackers.py); MLflow's own client reads them back from the run's SQLite store, and
MLflow's server, started as the printed `mlflow ui` line says, serves them; MLFLOW_TRACKING_URI is followed."""

import glob
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from segattn.engine.trackers import command

from conftest import TINY, run_train


@pytest.fixture(scope="module")
def mlflow_run(tiny_root, tmp_path_factory):
    pytest.importorskip("mlflow")
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the default store, whatever the machine's environment says
    run_dir = str(tmp_path_factory.mktemp("mlflow_run"))
    run_train([*TINY, f"dataset.root={tiny_root}", "trainer.max_iters=2", "trainer.val_interval=2",
               "trainer.log_interval=1", "logger=[tensorboard,mlflow]", "mlflow.experiment=tiny",
               f"hydra.run.dir={run_dir}"])
    return run_dir


def _client(run_dir):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri="sqlite:///" + os.path.join(run_dir, "mlflow.db"))
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def test_mlflow_gets_what_tensorboard_gets(mlflow_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    client, run = _client(mlflow_run)
    assert run.info.status == "FINISHED" and run.info.run_name == os.path.basename(mlflow_run)
    params = run.data.params
    assert params["head.name"] == "fcn" and params["backbone.width"] == "16" and params["trainer.max_iters"] == "2"
    assert params["dataset.crop_size"] == "[64, 64]" and params["logger"] == "['tensorboard', 'mlflow']"

    tb = EventAccumulator(mlflow_run, size_guidance={"images": 0, "scalars": 0})
    tb.Reload()
    scalars = set(tb.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/mIoU", "hparams/mIoU"} <= scalars
    assert any(t.startswith("val_iou/") for t in scalars)
    assert scalars == set(run.data.metrics)  # every scalar tag, per-class IoU included, in both
    for tag in scalars:
        ours = [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, tag), key=lambda m: m.step)]
        theirs = [(s.step, s.value) for s in tb.Scalars(tag)]
        assert [s for s, _ in ours] == [s for s, _ in theirs], tag
        assert np.allclose([v for _, v in ours], [v for _, v in theirs], rtol=1e-6, atol=0), tag  # TB keeps float32
    metrics = json.load(open(os.path.join(mlflow_run, "metrics.json")))
    assert run.data.metrics["val/mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-12)

    # the pictures: the same pixels as TensorBoard's
    for tag in ("val/image_gt_pred", "val/confusion_matrix"):
        path = client.download_artifacts(run.info.run_id, f"{tag}/step_000002.png", dst_path=mlflow_run + "/dl")
        theirs = Image.open(io.BytesIO(tb.Images(tag)[-1].encoded_image_string)).convert("RGB")
        assert np.array_equal(np.array(Image.open(path).convert("RGB")), np.array(theirs)), tag
    attention = [a.path for a in client.list_artifacts(run.info.run_id, "attention")]
    assert len(attention) == len([t for t in tb.Tags()["images"] if t.startswith("attention/")])


def test_the_run_says_where_to_look_and_tensorboard_is_the_default(mlflow_run, trained_run):
    log = open(os.path.join(mlflow_run, "train.log")).read()
    assert f"TensorBoard: {command('tensorboard')} --logdir {mlflow_run}" in log
    assert f" ui --backend-store-uri sqlite:///{mlflow_run}/mlflow.db  (run " in log
    assert not os.path.exists(os.path.join(mlflow_run, "mlruns"))  # not MLflow's file store (maintenance mode)
    assert not glob.glob(os.path.join(trained_run, "mlflow.db"))  # logger's default: TensorBoard alone
    assert glob.glob(os.path.join(trained_run, "events.out.tfevents.*"))


def test_an_unknown_tracker_is_refused_naming_the_key(tiny_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        run_train([*TINY, f"dataset.root={tiny_root}", "logger=[tensorboard,comet]", f"hydra.run.dir={run_dir}"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "logger=['tensorboard', 'comet']: 'comet' is not a known experiment tracker; choices: tensorboard, " \
           "mlflow" in err and "Traceback" not in err
    assert not run_dir.exists()  # refused before anything was written


def test_the_printed_mlflow_line_serves_the_run(mlflow_run, monkeypatch):
    """The line names this environment's ``mlflow`` and the run's store; MLflow's server app, given that store
    as ``mlflow ui --backend-store-uri`` gives it, serves the run, its pictures and the UI's page. (Started for
    real, ``mlflow ui`` took about a minute to answer on the 2 loaded cores: too slow for the suite.)"""
    pytest.importorskip("flask")  # the UI's server: in mlflow, not in mlflow-skinny
    line = next(ln for ln in open(os.path.join(mlflow_run, "train.log")).read().splitlines() if ln.startswith("MLflow:"))
    exe, ui, flag, uri = line.split()[1:5]
    assert os.path.basename(exe) == "mlflow" and (shutil.which(exe) or os.path.isfile(exe)) and ui == "ui"
    assert flag == "--backend-store-uri" and uri == f"sqlite:///{mlflow_run}/mlflow.db"
    from mlflow.server.constants import BACKEND_STORE_URI_ENV_VAR, SERVE_ARTIFACTS_ENV_VAR

    monkeypatch.setenv(BACKEND_STORE_URI_ENV_VAR, uri)
    monkeypatch.setenv(SERVE_ARTIFACTS_ENV_VAR, "true")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    from mlflow.server import app

    client, run = _client(mlflow_run)
    web = app.test_client()
    got = web.get(f"/api/2.0/mlflow/runs/get?run_id={run.info.run_id}")
    assert got.status_code == 200 and got.json["run"]["info"]["run_name"] == os.path.basename(mlflow_run)
    assert {m["key"] for m in got.json["run"]["data"]["metrics"]} == set(run.data.metrics)
    png = web.get(f"/get-artifact?path=val/image_gt_pred/step_000002.png&run_uuid={run.info.run_id}")
    assert png.status_code == 200 and png.data[:4] == b"\x89PNG"
    stored = run.info.artifact_uri.removeprefix("file://")
    assert stored.startswith(os.path.join(mlflow_run, "mlartifacts"))  # beside the store, not in the cwd
    assert os.path.isfile(os.path.join(stored, "val", "image_gt_pred", "step_000002.png"))
    page = web.get("/")
    assert page.status_code == 200 and b"<html" in page.data.lower()


def test_mlflow_tracking_uri_from_the_environment_unless_the_config_says(mlflow_run, tmp_path, monkeypatch):
    """MLflow's convention: MLFLOW_TRACKING_URI (a team's server) takes the run; mlflow.tracking_uri wins over it.
    The team's store here is the module's run's SQLite file (a new one costs MLflow's schema migrations)."""
    from segattn.config import TrainConfig
    from segattn.engine.trackers import MLflowTracker, tracking_uri

    run = str(tmp_path / "run")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(run, None) == f"sqlite:///{run}/mlflow.db"
    assert tracking_uri(run, "http://cfg:5000") == "http://cfg:5000"
    assert tracking_uri(run, "some/folder") == "file:" + os.path.abspath("some/folder")
    team = f"sqlite:///{mlflow_run}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team)
    assert tracking_uri(run, None) == team and tracking_uri(run, "http://cfg:5000") == "http://cfg:5000"
    tracker = MLflowTracker(run, TrainConfig.from_dict({"mlflow": {"experiment": "team"}}))
    tracker.add_scalar("val/mIoU", 0.25, 3)
    tracker.close()
    assert not os.path.exists(os.path.join(run, "mlflow.db"))
    from mlflow.tracking import MlflowClient

    (found,) = MlflowClient(team).search_runs([MlflowClient(team).get_experiment_by_name("team").experiment_id])
    assert found.data.metrics == {"val/mIoU": 0.25}
    assert tracker.where().startswith("MLflow:") and f"--backend-store-uri {team}" in tracker.where()
