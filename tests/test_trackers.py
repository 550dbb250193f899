"""logger=[tensorboard,mlflow]: both trackers get the same params, scalars and pictures through the one
interface (segattn/engine/trackers.py); MLflow's own client reads them back from the local file store."""

import glob
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, run_train


@pytest.fixture(scope="module")
def mlflow_run(tiny_root, tmp_path_factory):
    pytest.importorskip("mlflow")
    run_dir = str(tmp_path_factory.mktemp("mlflow_run"))
    run_train([*TINY, f"dataset.root={tiny_root}", "trainer.max_iters=2", "trainer.val_interval=2",
               "trainer.log_interval=1", "logger=[tensorboard,mlflow]", "mlflow.experiment=tiny",
               f"hydra.run.dir={run_dir}"])
    return run_dir


def _client(run_dir):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this to read a file store
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri="file:" + os.path.join(run_dir, "mlruns"))
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
    assert f"TensorBoard: tensorboard --logdir {mlflow_run}" in log
    assert f"mlflow ui --backend-store-uri file:{mlflow_run}/mlruns" in log
    assert not os.path.exists(os.path.join(trained_run, "mlruns"))  # logger's default: TensorBoard alone
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
