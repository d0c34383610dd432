"""No run lost or mislabelled: crashes, signals, kills, NaNs, races, secrets, broken stores.

Real processes and real signals where the scenario needs them, a real sqlite store throughout.
Numbers in test names follow the scenario list in docs/reliability.md.
"""

from __future__ import annotations

import http.server
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from helpers.config import TRAIN_SCRIPT
from helpers.processes import SLOW, reference_and_killed, start, wait_for_line
from helpers.runs import job_runs, store_client
from sweeplab.config.redact import redact_override, redact_uri
from sweeplab.job import train
from sweeplab.track.params import _shorten_key, flatten_config, write_config_files
from sweeplab.track.tracking import Run, TrackingError
from sweeplab.train import trainer as core
from sweeplab.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sweeplab.train.loop import NonFiniteLossError


def only_run(root: Path, experiment: str = "synthetic"):
    client = store_client(root)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, run


# --- 1, 2: stores and races --------------------------------------------------------------------


@pytest.mark.slow
def test_1_eight_parallel_jobs_on_a_fresh_store(tmp_path):
    procs = [
        start([*SLOW, "trainer.epochs=1", "dataset.num_train=200", f"trainer.seed={i}"], tmp_path)
        for i in range(8)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-2000:]
        assert "database is locked" not in out
    client = store_client(tmp_path / "mlruns")
    runs = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    assert client.search_runs(["0"]) == []  # nothing silently in "Default"


@pytest.mark.slow
def test_2_relative_uri_with_hydra_chdir_gives_one_store(tmp_path):
    args = [
        "-m",
        *SLOW,
        "trainer.epochs=1",
        "dataset.num_train=200",
        "trainer.seed=1,2",
        "hydra.job.chdir=true",
        "tracking.root=store",
        "tracking.uri=sqlite:///store/m.db",
    ]
    proc = start(args, tmp_path)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-2000:]
    stores = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.db"))
    assert stores == [Path("store/m.db")]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/store/m.db")
    runs = job_runs(client, client.get_experiment_by_name("synthetic").experiment_id)
    assert len(runs) == 2


# --- 3: an exception inside a job of a sweep ----------------------------------------------------


@pytest.mark.slow
def test_3_failed_job_is_failed_with_traceback_and_the_sweep_goes_on(tmp_path):
    # alexnet's pooling cannot run on 32x32 images: job 2 crashes inside its first forward pass
    args = [
        "-m",
        *SLOW,
        "trainer.epochs=1",
        "dataset.num_train=200",
        "model=torchvision",
        "model.name=resnet18,alexnet,mobilenet_v3_small",
    ]
    proc = start(args, tmp_path)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode != 0
    assert "sweep summary: 1 of 3 jobs failed" in out
    assert "model.name=alexnet" in out.split("sweep summary")[1]
    client = store_client(tmp_path / "mlruns")
    runs = job_runs(client, client.get_experiment_by_name("synthetic").experiment_id)
    status = {r.data.params["model.name"]: r.info.status for r in runs}
    assert status == {"resnet18": "FINISHED", "alexnet": "FAILED", "mobilenet_v3_small": "FINISHED"}
    failed = next(r for r in runs if r.info.status == "FAILED")
    text = Path(client.download_artifacts(failed.info.run_id, "error/traceback.txt")).read_text()
    assert "Traceback" in text and "size" in text


def test_3_in_process_the_next_job_starts_clean(small_cfg, monkeypatch):
    import mlflow

    def boom(*a, **k):
        raise RuntimeError("crash")

    with monkeypatch.context() as m:
        m.setattr(core, "train_epoch", boom)
        with pytest.raises(RuntimeError):
            train(small_cfg())
    assert mlflow.active_run() is None
    assert train(small_cfg())["test_acc"] >= 0


# --- 4, 5, 7: signals, kills and exact resume ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_4_sigterm_and_ctrl_c_end_the_run_killed(sig, code, tmp_path):
    proc = start(SLOW, tmp_path)
    wait_for_line(proc, "epoch 1/4")
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    assert proc.returncode == code
    client, run = only_run(tmp_path / "mlruns")
    assert run.info.status == "KILLED"
    last = next((tmp_path / "outputs").rglob("last.pt"))
    assert load_checkpoint(last)["epoch"] >= 1  # intact and loadable
    assert load_checkpoint(last.parent / "best.pt")["epoch"] >= 1


@pytest.mark.slow
def test_5_and_7_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    reference, ref_dir, cut_dir = reference_and_killed(SLOW, tmp_path, "epoch 2/4")
    assert reference.communicate(timeout=600)[0] and reference.returncode == 0
    client, cut = only_run(cut_dir / "mlruns")
    assert cut.info.status == "RUNNING"  # what SIGKILL leaves behind ...

    # 5: a new launch of the same config marks the dead run KILLED
    relaunch = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *SLOW, "trainer.epochs=1"],
        cwd=cut_dir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert relaunch.returncode == 0, relaunch.stderr[-2000:]
    # (epochs=1 is another config: the dead run stays untouched by it)
    assert client.get_run(cut.info.run_id).info.status == "RUNNING"
    same = start(SLOW, cut_dir)
    wait_for_line(same, "MLflow run")
    same.send_signal(signal.SIGKILL)
    same.communicate(timeout=60)
    assert client.get_run(cut.info.run_id).info.status == "KILLED"

    # 7: resume the original run from its last.pt: same run, epochs 3-4, bitwise equal
    resumed = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *SLOW, f"trainer.resume={cut.info.run_id}"],
        cwd=cut_dir,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, ref = only_run(ref_dir / "mlruns")
    final = client.get_run(cut.info.run_id)
    assert final.info.status == "FINISHED" and final.data.tags["sweeplab.resumed"] == "true"
    ref_client = store_client(ref_dir / "mlruns")
    for key in ("train_loss", "val_loss", "val_acc", "lr"):
        a = [(m.step, m.value) for m in ref_client.get_metric_history(ref.info.run_id, key)]
        b = [(m.step, m.value) for m in client.get_metric_history(cut.info.run_id, key)]
        assert sorted(a) == sorted(b), key  # same values, each step exactly once
    assert final.data.metrics["test_acc"] == ref.data.metrics["test_acc"]
    w_ref = load_checkpoint(next(ref_dir.rglob("best.pt")))["model"]
    w_cut = load_checkpoint(client.download_artifacts(cut.info.run_id, "checkpoints/best.pt"))
    w_cut = w_cut["model"]
    assert all(torch.equal(w_ref[k], w_cut[k]) for k in w_ref)
    # FINISHED now: the resume state (last.pt) is gone from the store and the job folders
    assert [a.path for a in client.list_artifacts(cut.info.run_id, "checkpoints")] == [
        "checkpoints/best.pt"
    ]
    assert not list(ref_dir.rglob("last.pt"))
    resumed_dir = cut_dir / final.data.tags["hydra.output_dir"]  # the resuming launch's folder
    assert [p.name for p in resumed_dir.rglob("*.pt")] == ["best.pt"]


def test_7_resume_refuses_a_checkpoint_of_another_config(small_cfg, tmp_path):
    first = train(small_cfg("trainer.epochs=1", "tracking.keep_last_checkpoint=true"))
    last = next(Path(small_cfg().output_dir).rglob("last.pt"))
    assert load_checkpoint(last)["mlflow_run_id"] == first["run_id"]
    from sweeplab.config.schema import ConfigError

    with pytest.raises(ConfigError, match="different config"):
        train(small_cfg("optimizer.lr=0.5", f"trainer.resume={last}"))


# --- 6, 11: checkpoints -------------------------------------------------------------------------


def test_6_kill_during_checkpoint_write_keeps_the_previous_one(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    child = f"""
import os, torch
from sweeplab.train import checkpoint
real_save = torch.save
def dying_save(obj, f):
    f.write(b"PK\\x03\\x04 half a zip")
    f.flush()
    os._exit(9)  # killed mid-write
torch.save = dying_save
checkpoint.save_checkpoint({{"epoch": 2, "w": torch.zeros(3)}}, {str(path)!r})
"""
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=120)
    assert proc.returncode == 9
    assert load_checkpoint(path)["epoch"] == 1  # the previous checkpoint survives intact


def test_6_truncated_checkpoint_gives_a_clear_error(tmp_path):
    path = save_checkpoint({"w": torch.ones(1000)}, tmp_path / "last.pt")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_6_checkpoint_format_version_is_written_and_checked_on_load(tmp_path):
    from sweeplab.train.checkpoint import FORMAT_VERSION, model_checkpoint

    model = torch.nn.Linear(2, 2)
    ckpt = model_checkpoint(model, {"_target_": "x"}, "synthetic", ["a", "b"], 1, 0.5)
    path = save_checkpoint(ckpt, tmp_path / "best.pt")
    assert load_checkpoint(path)["format_version"] == FORMAT_VERSION
    del ckpt["format_version"]  # written before the field existed: the layout of format 1
    assert load_checkpoint(save_checkpoint(ckpt, tmp_path / "old.pt"))["epoch"] == 1
    future = save_checkpoint({**ckpt, "format_version": FORMAT_VERSION + 1}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match=r"format 2, written by a newer sweeplab"):
        load_checkpoint(future)


class NotPlainData:
    pass


def test_11_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": NotPlainData()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(path)


def test_11_every_torch_load_in_the_package_is_weights_only():
    src = Path(__file__).resolve().parents[1] / "src"
    for file in src.rglob("*.py"):
        for line in file.read_text().splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{file}: {line.strip()}"


# --- 8: non-finite loss -------------------------------------------------------------------------


def test_8_nan_loss_fails_the_run_within_one_step_and_keeps_best(small_cfg, client, monkeypatch):
    calls = {"n": 0}
    real_build = core.build

    class PoisonAfter(torch.nn.Module):
        """Wraps the model; from the 12th training forward on, outputs NaN."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            if self.training:
                calls["n"] += 1
                if calls["n"] >= 12:
                    return out * float("nan")
            return out

    def build(node, **kw):
        obj = real_build(node, **kw)
        return PoisonAfter(obj) if "models" in str(node.get("_target_")) else obj

    monkeypatch.setattr(core, "build", build)
    cfg = small_cfg("trainer.epochs=3")  # 9 steps per epoch: NaN at epoch 2, step 3
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 3.*lower optimizer.lr"):
        train(cfg)
    assert calls["n"] == 12  # stopped at the first bad step
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED"
    best = load_checkpoint(Path(cfg.output_dir) / "checkpoints" / "best.pt")
    assert best["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in best["model"].values() if v.is_floating_point())


# --- 9, 10: params and secrets ------------------------------------------------------------------


def test_9_long_values_are_truncated_and_long_keys_shortened(small_cfg, client):
    long_name = "x" * 7000
    cfg = small_cfg(f"tracking.run_name={long_name}")
    flat = flatten_config(cfg, Path.cwd())
    assert len(flat["tracking.run_name"]) == 6000
    assert flat["tracking.run_name"].endswith("...[truncated]")
    result = train(cfg)  # logging it does not crash
    assert client.get_run(result["run_id"]).info.status == "FINISHED"
    key = "a." * 200
    short = _shorten_key(key)
    assert len(short) <= 250 and short == _shorten_key(key) and short != _shorten_key(key + "b")


def test_10_secrets_never_reach_params_tags_or_the_config_artifact(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEPLAB_TEST_TOKEN", "hunter2")
    cfg = OmegaConf.create(
        {
            "db": {"password": "pw-in-yaml", "host": "h"},
            "api": {"key_from_env": "${oc.env:SWEEPLAB_TEST_TOKEN}"},
            "tracking": {"uri": "http://alice:s3cret@mlflow.example:5000"},
            "auth_token": "tok-123",
        }
    )
    flat = flatten_config(cfg, tmp_path)
    text = str(flat)
    for secret in ("pw-in-yaml", "hunter2", "s3cret", "tok-123"):
        assert secret not in text
    assert flat["tracking.uri"] == "http://alice:***@mlflow.example:5000"
    assert flat["db.host"] == "h"
    config_file, overrides_file = write_config_files(cfg, tmp_path)
    logged = config_file.read_text()
    assert "pw-in-yaml" not in logged and "s3cret" not in logged and "tok-123" not in logged
    assert "${oc.env:SWEEPLAB_TEST_TOKEN}" in logged  # re-read on rerun, never written down
    assert redact_override("+db.password=pw") == "+db.password=***"
    assert redact_uri("postgresql://u:p@db/x") == "postgresql://u:***@db/x"


# --- 12, 13: unusable stores --------------------------------------------------------------------


def test_12_unreachable_tracking_server_fails_before_training(small_cfg, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    started = []
    monkeypatch.setattr(core, "train_epoch", lambda *a, **k: started.append(1))
    with pytest.raises(TrackingError, match=f"http://127.0.0.1:{port} is unreachable"):
        train(small_cfg(f"tracking.uri=http://127.0.0.1:{port}"))
    assert started == []


@pytest.mark.parametrize("which", ["tracking.root", "output_dir"])
def test_13_unwritable_store_or_output_dir_fails_before_training(which, small_cfg, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(TrackingError, match=f"{which}=.*not writable"):
        train(small_cfg(f"{which}={blocker / 'sub'}"))
    if os.geteuid() != 0:  # permission bits do not stop root
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(TrackingError, match="not writable"):
            train(small_cfg(f"{which}={ro}"))


def _tree(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every path with its files' size and mtime; the store's lock file does not count."""
    paths = [p for p in root.rglob("*") if p.name != ".sweeplab.lock"]
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
        for p in paths
    }


@pytest.mark.slow  # in process, rows 32-34 of the bad-input table cover the same in the fast tier
@pytest.mark.parametrize("damage", ["not_a_database", "truncated", "deleted_experiment"])
def test_14_a_damaged_store_or_deleted_experiment_stops_the_launch_and_touches_nothing(
    damage, tmp_path
):
    """One `error:` line, exit 2; the store file keeps every byte, nothing else is created."""
    from mlflow import MlflowClient

    store = tmp_path / "mlruns" / "mlflow.db"
    store.parent.mkdir()
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    client.delete_experiment(client.create_experiment("synthetic"))
    if damage == "not_a_database":
        store.write_text("id,name\n1,not a store\n" * 100)
    elif damage == "truncated":
        store.write_bytes(store.read_bytes()[:50_000])
    before, content = _tree(tmp_path), store.read_bytes()
    proc = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), "-m", *SLOW, "trainer.seed=1,2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    expected = {
        "not_a_database": "is not an SQLite database",
        "truncated": "is truncated",
        "deleted_experiment": "mlflow experiments restore --experiment-id 1",
    }
    assert expected[damage] in line and "Traceback" not in proc.stderr
    assert _tree(tmp_path) == before and store.read_bytes() == content


# --- 10: one redaction rule for everything a run writes -----------------------------------------

SECRETS = {  # route -> a value that must never be written anywhere sweeplab writes
    "env interpolation in an override": "tok-OVR-5f1c",
    "env interpolation in a config file": "tok-YAML-9a2e",
    "credential-like key": "pw-KEY-7d3b",
    "password in a URI": "pw-URI-c4a8",
}


def _planted(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """Overrides and environment that carry each secret by its own route."""
    experiment = tmp_path / "conf_extra" / "experiment"
    experiment.mkdir(parents=True)
    (experiment / "leaky.yaml").write_text(
        "# @package _global_\ntracking:\n  run_name: run-${oc.env:SWEEPLAB_YAML_TOKEN}\n"
    )
    args = [
        f"hydra.searchpath=[file://{tmp_path / 'conf_extra'}]",
        "experiment=leaky",
        "+extra.tok=${oc.env:SWEEPLAB_OVR_TOKEN}",
        f"+db.password={SECRETS['credential-like key']}",
        f"+db.url=postgresql://alice:{SECRETS['password in a URI']}@db.example/x",
    ]
    env = {
        "SWEEPLAB_OVR_TOKEN": SECRETS["env interpolation in an override"],
        "SWEEPLAB_YAML_TOKEN": SECRETS["env interpolation in a config file"],
    }
    return args, env


def _files_sweeplab_wrote(root: Path) -> list[Path]:
    """Everything under the launch dir but Hydra's own records of the command (`.hydra/`,
    `multirun.yaml`: Hydra writes the overrides as typed, see docs/reliability.md)."""
    return [
        p
        for p in root.rglob("*")
        if p.is_file()
        and ".hydra" not in p.parts
        and p.name != "multirun.yaml"
        and "conf_extra" not in p.parts
    ]


def test_15_parallel_jobs_recording_the_same_dataset_both_link_it(client, monkeypatch):
    """MLflow's SQL store checks for a dataset row and then inserts it; two jobs that both
    check before either inserts collide on the unique key (a CI failure on PostgreSQL; sqlite
    alike). The barrier holds both jobs after their check, so the collision happens every time."""
    import threading

    import sqlalchemy.orm
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.store.tracking.dbmodels.models import SqlDataset

    both_checked = threading.Barrier(2, timeout=10)
    held = []
    query_all = sqlalchemy.orm.Query.all

    def all_after_both_checked(query):
        rows = query_all(query)
        entity = query.column_descriptions[0]["entity"]
        if entity is SqlDataset and len(held) < 2:  # only the first look of each job waits
            held.append(threading.get_ident())
            both_checked.wait()
        return rows

    monkeypatch.setattr(sqlalchemy.orm.Query, "all", all_after_both_checked)
    experiment = client.create_experiment("race")
    runs = [Run(client, client.create_run(experiment).info.run_id) for _ in range(2)]
    data = Dataset(name="synthetic", digest="d1g3st", source_type="code", source="{}")
    inputs = [DatasetInput(data, [InputTag("mlflow.data.context", "train")])]
    errors = []

    def job(run):
        try:
            run.log_inputs(inputs)
        except Exception as e:  # noqa: BLE001 - reported by the assert below
            errors.append(e)

    threads = [threading.Thread(target=job, args=(run,)) for run in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(held) == 2 and errors == []
    for run in runs:
        linked = client.get_run(run.run_id).inputs.dataset_inputs
        assert [(d.dataset.name, d.dataset.digest) for d in linked] == [("synthetic", "d1g3st")]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["single", "sweep"])
def test_10_no_secret_reaches_the_store_or_any_file_by_any_route(mode, tmp_path):
    args, env = _planted(tmp_path)
    job = [*SLOW, "trainer.epochs=1", "dataset.num_train=200", *args]
    if mode == "sweep":
        job = ["-m", *job, "optimizer=sgd,adam"]
    proc = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *job],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = _files_sweeplab_wrote(tmp_path)
    assert any(p.name == "mlflow.db" for p in files) and any(p.name == "config.yaml" for p in files)
    leaks = [
        f"{route}: {p.relative_to(tmp_path)}"
        for p in files
        for route, secret in SECRETS.items()
        if secret.encode() in p.read_bytes()
    ]
    assert not leaks, "\n".join(leaks)
    # The re-run command keeps the interpolation (as typed, or as Hydra's sweeper escaped it),
    # so it still reads the variable.
    from hydra.core.override_parser.overrides_parser import OverridesParser

    client = store_client(tmp_path / "mlruns")
    runs = job_runs(client, client.get_experiment_by_name("synthetic").experiment_id)
    assert len(runs) == (2 if mode == "sweep" else 1)
    for run in runs:
        args = shlex.split(run.data.tags["sweeplab.reproduce"])[2:]
        parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(args)}
        assert parsed["extra.tok"] == "${oc.env:SWEEPLAB_OVR_TOKEN}"
        assert parsed["db.password"] == "***" and run.info.run_name == "***"
        assert run.data.params["extra.tok"] == run.data.params["tracking.run_name"] == "***"


class HealthyButBroken(http.server.BaseHTTPRequestHandler):
    """A tracking server whose /health answers 200 and whose API answers 500."""

    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 500)
        self.end_headers()
        self.wfile.write(b"OK" if self.path == "/health" else b"boom")

    do_POST = do_GET

    def log_message(self, *args):
        pass


def test_12_a_server_that_fails_its_api_names_no_credentials(small_cfg, capfd):
    """Reliability 20: after 4 min of MLflow's retries the error showed `http://u:hunter2@…`.
    The launch check retries twice, and neither its message nor anything logged holds it."""
    import threading

    from sweeplab.track import store

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HealthyButBroken)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://u:hunter2@127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(TrackingError, match=r"refused the request") as e:
            store.prepare_store(uri, "mlruns", "x")
    finally:
        server.shutdown()
    assert "hunter2" not in str(e.value) and "u:***@127.0.0.1" in str(e.value)
    out, err = capfd.readouterr()
    assert "hunter2" not in out + err


def test_10_log_records_of_any_library_have_credentials_masked():
    import logging

    from sweeplab.config.redact import RedactingFilter

    url = "http://u:hunter2@h:5000/api"
    record = logging.LogRecord(
        "mlflow", logging.WARNING, __file__, 1, "API request to %s failed", (url,), None
    )
    assert RedactingFilter().filter(record)
    assert record.getMessage() == "API request to http://u:***@h:5000/api failed"


def test_6_checkpoint_messages_name_the_cause(tmp_path, monkeypatch):
    """Reliability 20: a full disk read `unexpected pos`, a folder "does not exist" and a text
    file "holds objects beyond tensors"."""
    import tempfile

    with pytest.raises(CheckpointError, match=r"is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)
    text = tmp_path / "notes.pt"
    text.write_text("epoch 3 was the best\n")
    with pytest.raises(CheckpointError, match=r"notes\.pt is not a PyTorch checkpoint"):
        load_checkpoint(text)
    # a real ENOSPC: the temporary file save_checkpoint writes is /dev/full
    monkeypatch.setattr(
        tempfile,
        "mkstemp",
        lambda **kw: (os.open("/dev/full", os.O_WRONLY), str(tmp_path / "gone.tmp")),
    )
    with pytest.raises(CheckpointError, match=r"best\.pt: no space left on device \(\d+ MiB free"):
        save_checkpoint({"w": torch.zeros(1_000_000)}, tmp_path / "best.pt")
    assert not (tmp_path / "best.pt").exists()
