"""MLflow-native results: the best model as a logged model, datasets, the per-class table,
system metrics, last.pt retention, the registry and `sweeplab-predict` (issue 14)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from helpers.config import TRAIN_SCRIPT
from helpers.runs import per_class
from sweeplab.cli import predict
from sweeplab.job import train
from sweeplab.track import lineage, logged_model, tracking
from sweeplab.track.tracking import fluent_uri
from sweeplab.train import trainer as core
from sweeplab.train.augment import Normalize
from sweeplab.train.checkpoint import load_checkpoint
from sweeplab.train.metrics import macro_metrics, per_class_table


def test_per_class_table_and_macro_averages_from_a_confusion_matrix():
    confusion = torch.tensor([[3, 1, 0], [0, 2, 0], [1, 0, 0]])  # rows: true, columns: predicted
    table = per_class_table(confusion, ["a", "b", "c"])
    assert table["class"] == ["a", "b", "c"]
    assert table["precision"] == pytest.approx([3 / 4, 2 / 3, 0])  # c never predicted: 0, not NaN
    assert table["recall"] == pytest.approx([3 / 4, 1, 0])
    assert table["f1"] == pytest.approx([3 / 4, 0.8, 0])
    assert table["support"] == [4, 2, 1]
    assert macro_metrics(table) == pytest.approx(
        {
            "test_macro_precision": (3 / 4 + 2 / 3) / 3,
            "test_macro_recall": (3 / 4 + 1) / 3,
            "test_macro_f1": (3 / 4 + 0.8) / 3,
        }
    )


def splits_of(cfg):
    return instantiate(cfg.dataset, device=torch.device("cpu"), seed=cfg.trainer.seed)


def inputs_by_context(run) -> dict:
    return {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}


def test_the_best_checkpoint_is_a_logged_model_that_scores_like_the_run(
    small_cfg, client, monkeypatch
):
    cfg = small_cfg("trainer.epochs=3", "optimizer=adam", "optimizer.lr=0.01", "dataset.noise=0.2")
    result = train(cfg)
    run = client.get_run(result["run_id"])
    (output,) = run.outputs.model_outputs
    assert output.step == result["best_epoch"]
    model = client.get_logged_model(output.model_id)
    assert model.status == "READY" and model.source_run_id == run.info.run_id
    assert model.params["optimizer._target_"] == cfg.optimizer._target_  # how to rebuild it
    # the final metrics are the model's, each on the split it was computed on
    linked = {m.key: m for m in model.metrics}
    splits = inputs_by_context(run)
    assert linked["test_acc"].value == result["test_acc"]
    assert linked["test_acc"].dataset_digest == splits["test"].digest
    assert linked["test_macro_f1"].dataset_digest == splits["test"].digest
    assert linked["best_val_acc"].dataset_digest == splits["val"].digest

    # loads through MLflow as a pt2 graph: raw uint8 images in, logits out; no pickle inside
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    loaded, meta = logged_model.load(f"models:/{output.model_id}", cfg.tracking.uri)
    data = splits_of(cfg)
    assert meta["classes"] == data.classes and meta["image_size"] == 32
    with torch.no_grad():
        logits = loaded(data.test.images)
    right = (logits.argmax(1) == data.test.labels).sum().item()
    assert right / len(data.test) == result["test_acc"] > 0.3  # learned: not a constant
    # the same numbers as best.pt behind training's own normalisation
    net = instantiate(cfg.model)
    net.load_state_dict(load_checkpoint(Path(cfg.output_dir) / "checkpoints" / "best.pt")["model"])
    normalize = Normalize(data.mean, data.std, torch.device("cpu"))
    with torch.no_grad():
        expected = net.eval()(normalize(data.test.images))
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)

    # pyfunc (what `mlflow models predict` / `serve` use): numpy uint8 in, the same logits out
    import mlflow.pyfunc
    from mlflow.models import get_model_info

    with fluent_uri(cfg.tracking.uri):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{output.model_id}")
        info = get_model_info(f"models:/{output.model_id}")
    got = pyfunc.predict(data.test.images[:5].numpy())
    np.testing.assert_allclose(got, logits[:5].numpy(), rtol=1e-6, atol=1e-6)
    (spec,) = info.signature.inputs.inputs
    assert spec.type == np.dtype(np.uint8) and spec.shape == (-1, 3, 32, 32)
    assert info.flavors["pytorch"]["model_data"] == "data"
    assert info.model_uuid == output.model_id


def test_runs_record_their_train_val_and_test_data(small_cfg, client):
    a = client.get_run(train(small_cfg())["run_id"])
    again = client.get_run(train(small_cfg())["run_id"])
    other = client.get_run(train(small_cfg("trainer.seed=2"))["run_id"])
    splits = inputs_by_context(a)
    assert sorted(splits) == ["test", "train", "val"]
    sizes = {k: json.loads(d.profile)["num_images"] for k, d in splits.items()}
    assert sizes == {"train": 288, "val": 32, "test": 100}  # num_train=320, val_fraction=0.1
    assert len({d.digest for d in splits.values()}) == 3
    assert {d.name for d in splits.values()} == {"synthetic"}
    assert json.loads(splits["train"].source) == {"uri": "sweeplab.train.data.synthetic_dataset"}
    schema = json.loads(json.loads(splits["train"].schema)["mlflow_tensorspec"]["features"])
    assert schema[0]["tensor-spec"] == {"dtype": "uint8", "shape": [-1, 3, 32, 32]}
    # the digest follows the content: same config, same digests; another seed, other data
    assert {k: d.digest for k, d in inputs_by_context(again).items()} == {
        k: d.digest for k, d in splits.items()
    }
    assert inputs_by_context(other)["train"].digest != splits["train"].digest


def test_per_class_results_are_one_table_not_three_metrics_per_class(small_cfg, client):
    result = train(small_cfg())
    table = per_class(client, result["run_id"])
    assert set(table) == {"class", "precision", "recall", "f1", "support"}
    assert sum(table["support"]) == 100
    metrics = client.get_run(result["run_id"]).data.metrics
    assert metrics["test_macro_recall"] == pytest.approx(sum(table["recall"]) / 10)
    assert len(metrics) < 25  # epoch + final metrics only, whatever the number of classes


def test_a_finished_run_drops_its_resume_state_unless_kept(small_cfg, client):
    def checkpoints(cfg, run_id):
        logged = sorted(a.path for a in client.list_artifacts(run_id, "checkpoints"))
        local = sorted(p.name for p in (Path(cfg.output_dir) / "checkpoints").glob("*.pt"))
        return logged, local

    cfg = small_cfg()
    assert checkpoints(cfg, train(cfg)["run_id"]) == (["checkpoints/best.pt"], ["best.pt"])
    kept = small_cfg("tracking.keep_last_checkpoint=true")
    assert checkpoints(kept, train(kept)["run_id"]) == (
        ["checkpoints/best.pt", "checkpoints/last.pt"],
        ["best.pt", "last.pt"],
    )


def test_a_crashed_run_keeps_last_pt_resumes_from_it_then_drops_it(small_cfg, client, monkeypatch):
    cfg = small_cfg("trainer.epochs=2")
    calls = []
    real = core.train_epoch

    def crash_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("power cut")
        return real(*args, **kwargs)

    monkeypatch.setattr(core, "train_epoch", crash_in_epoch_2)
    with pytest.raises(RuntimeError, match="power cut"):
        train(cfg)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    (run,) = client.search_runs([experiment.experiment_id])
    run_id = run.info.run_id
    assert client.get_run(run_id).info.status == "FAILED"
    names = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert names == {"checkpoints/best.pt", "checkpoints/last.pt"}
    monkeypatch.setattr(core, "train_epoch", real)
    result = train(small_cfg("trainer.epochs=2", f"trainer.resume={run_id}"))
    assert result["run_id"] == run_id and [h["epoch"] for h in result["history"]] == [1, 2]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run_id, "checkpoints")} == {"checkpoints/best.pt"}


def test_log_model_false_logs_no_model_and_predict_says_why(small_cfg, client, tmp_path, capsys):
    cfg = small_cfg("tracking.log_model=false")
    result = train(cfg)
    outputs = client.get_run(result["run_id"]).outputs
    assert not (outputs and outputs.model_outputs)
    image = tmp_path / "x.png"
    write_png(torch.zeros(3, 32, 32, dtype=torch.uint8), image)
    uri = ["--tracking-uri", cfg.tracking.uri]
    assert predict.main([result["run_id"], str(image), *uri]) == 2
    assert "logged no model" in capsys.readouterr().err
    assert predict.main(["not-a-run", str(image), *uri]) == 2
    assert "neither a model URI" in capsys.readouterr().err
    assert predict.main([result["run_id"], str(tmp_path / "missing"), *uri]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_a_model_that_cannot_be_exported_fails_alone(small_cfg, client, monkeypatch, caplog):
    def unsupported(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.export, "export", unsupported)
    result = train(small_cfg())
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and "test_acc" in run.data.metrics
    assert "unsupported operator" in run.data.tags["sweeplab.model_error"]
    (model,) = client.search_logged_models([run.info.experiment_id])
    assert model.status == "FAILED"
    assert "could not log the best model" in caplog.text


def test_system_metrics_are_mlflows_own_and_off_by_default(small_cfg, client):
    plain = client.get_run(train(small_cfg())["run_id"])
    assert not any(k.startswith("system/") for k in plain.data.metrics)
    cfg = small_cfg("tracking.system_metrics=true", "tracking.system_metrics_interval=0.05")
    watched = client.get_run(train(cfg)["run_id"])
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
        watched.data.metrics
    )


def write_png(image: torch.Tensor, path: Path) -> None:
    from torchvision.io import write_png as write

    path.parent.mkdir(parents=True, exist_ok=True)
    write(image, str(path))


def test_predict_reads_files_and_folders_like_the_model_was_trained(small_cfg, tmp_path, capsys):
    cfg = small_cfg("trainer.epochs=3", "optimizer=adam", "optimizer.lr=0.01", "dataset.noise=0.2")
    result = train(cfg)
    data = splits_of(cfg)
    folder = tmp_path / "images"
    written = {}
    for i in range(12):
        path = folder / data.classes[data.test.labels[i]] / f"{i:02d}.png"
        write_png(data.test.images[i], path)
        written[str(path)] = i
    (folder / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    (folder / "broken.png").write_bytes(b"\x89PNG truncated")
    big = torch.nn.functional.interpolate(data.test.images[:1].float(), scale_factor=2).byte()
    write_png(big[0], tmp_path / "big.png")  # 64 x 64: resized to the model's 32
    out = tmp_path / "preds.csv"
    args = [
        result["run_id"],
        str(folder),
        str(tmp_path / "big.png"),
        "--out",
        str(out),
        "--tracking-uri",
        cfg.tracking.uri,
        "--batch-size",
        "5",
    ]
    assert predict.main(args) == 1  # one file unreadable: said, and the rest predicted
    assert "broken.png" in capsys.readouterr().err
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == [*sorted(written), str(tmp_path / "big.png")]
    uri = logged_model.model_uri(tracking.client(cfg.tracking.uri), result["run_id"])
    loaded, _ = logged_model.load(uri, cfg.tracking.uri)
    with torch.no_grad():
        probs = torch.softmax(loaded(data.test.images[:12]), 1)
    for row in rows[:-1]:
        i = written[row["file"]]
        assert row["class"] == data.classes[probs[i].argmax()]
        assert float(row["probability"]) == pytest.approx(probs[i].max().item(), abs=1e-6)


def test_an_image_folder_run_records_its_files_and_predict_reads_them_as_training_did(
    small_cfg, client, image_folder, tmp_path
):
    cfg = small_cfg(
        "dataset=imagefolder",
        f"dataset.root={image_folder}",
        "dataset.in_channels=1",
        "dataset.mean=[0.13]",
        "dataset.std=[0.31]",
        "dataset.image_size=28",
        "dataset.num_workers=0",
        "optimizer=adam",
    )
    result = train(cfg)
    splits = inputs_by_context(client.get_run(result["run_id"]))
    val_source = json.loads(splits["val"].source)["uri"]
    assert splits["val"].source_type == "local" and val_source.endswith("digits/val")
    assert not os.path.isabs(val_source)  # relative to the launch directory
    assert json.loads(splits["val"].profile)["num_images"] == 24

    # predict on the val folder: the very pixels training evaluated, so the same predictions
    out = tmp_path / "val.csv"
    args = [
        result["run_id"],
        str(image_folder / "val"),
        "--out",
        str(out),
        "--tracking-uri",
        cfg.tracking.uri,
    ]
    assert predict.main(args) == 0
    with out.open() as f:
        predicted = {r["file"]: r["class"] for r in csv.DictReader(f)}
    val = splits_of(cfg).val.dataset  # the ImageFolder training read val/ through
    images = torch.stack([val[i][0] for i in range(len(val))])
    loaded, _ = logged_model.load(
        logged_model.model_uri(client, result["run_id"]), cfg.tracking.uri
    )
    with torch.no_grad():
        expected = loaded(images).argmax(1)
    paths = [path for path, _ in val.samples]
    assert predicted == {p: val.classes[k] for p, k in zip(paths, expected, strict=True)}

    # the digest follows the files: renaming one changes it
    first = sorted((image_folder / "val" / "digit0").glob("*.png"))[0]
    first.rename(first.with_name("renamed.png"))
    assert lineage.digest(splits_of(cfg).val, cfg.dataset.root) != splits["val"].digest


# --- end to end: a sweep, its best model registered, predictions on MNIST test PNGs ----------


@pytest.mark.slow
def test_sweep_register_and_predict_mnist_pngs_with_the_runs_test_accuracy(tmp_path, data_dir):
    from mlflow import MlflowClient

    from sweeplab.cli.report import main as report_main

    env = {**os.environ, "SWEEPLAB_DATA_DIR": str(data_dir)}
    env.pop("MLFLOW_TRACKING_URI", None)
    sweep = [
        sys.executable,
        str(TRAIN_SCRIPT),
        "-m",
        "dataset=mnist",
        "dataset.train_subset=1000",
        "trainer.epochs=1",
        "trainer.device=cpu",
        "optimizer=sgd,adam",
        "optimizer.lr=0.01",
        "sweep.register_best=digits",
    ]
    proc = subprocess.run(sweep, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "alias models:/digits@best" in proc.stdout
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("digits", "best")
    parent = client.search_runs(
        [client.get_experiment_by_name("mnist").experiment_id], "tags.`sweeplab.role` = 'sweep'"
    )[0]
    best = client.get_run(parent.data.tags["sweeplab.best_run_id"])
    assert str(version.version) == "1" and version.run_id == best.info.run_id
    assert version.tags["sweeplab.sweep_id"] == parent.data.tags["sweeplab.sweep_id"]
    assert version.tags["sweeplab.reproduce"] == best.data.tags["sweeplab.reproduce"]
    source = json.loads(inputs_by_context(best)["test"].source)
    assert source["uri"] == "torchvision.datasets.MNIST" and source["train"] is False
    assert not os.path.isabs(source["root"])  # no machine paths in the store

    # every MNIST test image as a PNG in a folder named after its class
    import torchvision

    mnist = torchvision.datasets.MNIST(str(data_dir), train=False, download=False)
    pngs = tmp_path / "pngs"
    for i, (image, label) in enumerate(zip(mnist.data, mnist.targets, strict=True)):
        write_png(image.unsqueeze(0), pngs / mnist.classes[label] / f"{i:05d}.png")
    out = tmp_path / "preds.csv"
    assert (
        predict.main(["models:/digits@best", str(pngs), "--out", str(out), "--tracking-uri", uri])
        == 0
    )
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10_000
    right = sum(Path(r["file"]).parent.name == r["class"] for r in rows)
    assert right / len(rows) == best.data.metrics["test_acc"]

    # the report registers again on demand: version 2, the alias moves to it
    assert (
        report_main(
            [parent.data.tags["sweeplab.sweep_id"], "--register", "digits", "--tracking-uri", uri]
        )
        == 0
    )
    assert str(client.get_model_version_by_alias("digits", "best").version) == "2"

    # README's `mlflow models predict` on the model's own serving example: the model's logits
    serving = tmp_path / "serving"
    menv = {**env, "MLFLOW_TRACKING_URI": uri, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    subprocess.run(
        [
            "mlflow",
            "artifacts",
            "download",
            "-u",
            "models:/digits@best/serving_input_example.json",
            "-d",
            str(serving),
        ],
        env=menv,
        check=True,
        capture_output=True,
        timeout=300,
    )
    served = subprocess.run(
        [
            "mlflow",
            "models",
            "predict",
            "-m",
            "models:/digits@best",
            "-i",
            str(serving / "serving_input_example.json"),
            "-t",
            "json",
            "--env-manager",
            "local",
        ],
        env=menv,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert served.returncode == 0, served.stderr[-2000:]
    predictions = np.array(json.loads(served.stdout.strip().splitlines()[-1])["predictions"])
    example = json.loads((serving / "serving_input_example.json").read_text())["inputs"]
    loaded, _ = logged_model.load("models:/digits@best", uri)
    with torch.no_grad():
        expected = loaded(torch.tensor(example, dtype=torch.uint8)).numpy()
    np.testing.assert_allclose(predictions, expected, rtol=1e-5, atol=1e-5)


def bomb_png(path: Path, side: int = 20_000) -> None:
    """A valid PNG header claiming side x side pixels (over PIL's decompression-bomb limit),
    a few dozen bytes on disk."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


class Payload:
    """Unpickling this touches a file: what a planted pickle could do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_predict_never_unpickles_and_its_mistakes_are_one_line(small_cfg, client, tmp_path, capsys):
    """Reliability 20: a pickled model.pth planted beside model.pt2 is refused (MLflow would
    prefer and unpickle it); a decompression bomb is listed as unreadable and the rest are
    classified; --out into a missing folder and --batch-size 0 are one error line, exit 2.
    The run's validation split is 1 image: its model still takes batches of any size."""
    import pickle

    cfg = small_cfg("dataset.val_fraction=0.002")  # round(320 x 0.002) = 1 image
    result = train(cfg)
    uri = ["--tracking-uri", cfg.tracking.uri]
    good = [tmp_path / f"good{i}.png" for i in range(3)]
    for path in good:
        write_png(torch.zeros(3, 32, 32, dtype=torch.uint8), path)
    bomb = tmp_path / "bomb.png"
    bomb_png(bomb)
    out = tmp_path / "preds.csv"
    args = [result["run_id"], *map(str, good), str(bomb), "--out", str(out), *uri]
    assert predict.main(args) == 1
    err = capsys.readouterr().err
    assert "unreadable" in err and "bomb.png: not a readable image (DecompressionBombError" in err
    assert "Traceback" not in err
    assert [r["file"] for r in csv.DictReader(out.open())] == list(map(str, good))
    good = good[0]

    for bad, said in [
        (["--out", str(tmp_path / "nowhere" / "p.csv")], "does not exist"),
        (["--batch-size", "0"], "--batch-size 0: give a number >= 1"),
    ]:
        assert predict.main([result["run_id"], str(good), *bad, *uri]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("sweeplab-predict: error:") and said in line
    assert not (tmp_path / "nowhere").exists()

    model_id = client.get_run(result["run_id"]).outputs.model_outputs[-1].model_id
    folder = Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    assert (folder / "data" / "model.pt2").is_file()
    marker = tmp_path / "payload-ran"
    (folder / "data" / "model.pth").write_bytes(pickle.dumps(Payload(marker)))
    (folder / "data" / "pickle_module_info.txt").write_text("mlflow.pytorch.pickle_module")
    code = predict.main([result["run_id"], str(good), *uri])
    err = capsys.readouterr().err
    assert not marker.exists(), "the planted pickle was loaded"
    assert code == 2 and "pickle" in err and "Traceback" not in err
