"""Every row of the bad-input table in docs/reliability.md: one clear error, nothing logged.

The table is the test data, so the documentation cannot drift from the behaviour.
"""

from __future__ import annotations

import re
import shlex
import shutil
import socket
from pathlib import Path

import pytest
import torch

from helpers.config import REPO, compose_cfg
from helpers.runs import store_client
from sweeplab.cli.rerun import rerun
from sweeplab.job import train

DOC = REPO / "docs" / "reliability.md"


def bad_input_rows() -> list[tuple[str, str, str, str]]:
    text = DOC.read_text().split("## Bad input", 1)[1]
    rows = []
    for line in text.splitlines():
        if not re.match(r"\| \d+ \|", line):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        number, case, given, message = cells
        rows.append((number, case, given.strip("`"), message.strip("`").replace("\\|", "|")))
    return rows


ROWS = bad_input_rows()


def test_the_table_has_at_least_twenty_cases():
    assert len(ROWS) >= 20
    assert [int(r[0]) for r in ROWS] == list(range(1, len(ROWS) + 1))


@pytest.fixture(scope="module")
def placeholders(tmp_path_factory, data_dir, store_root):
    tmp = tmp_path_factory.mktemp("bad-input")
    raw = tmp / "truncated" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (Path(data_dir) / "MNIST" / "raw").iterdir():
        if f.suffix != ".gz":
            shutil.copy(f, raw / f.name)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[: images.stat().st_size // 2])
    for c in ("a", "b"):
        (tmp / "empty" / c).mkdir(parents=True)
    one = tmp / "one" / "only_class"
    one.mkdir(parents=True)
    import torchvision

    torchvision.io.write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), str(one / "0.png"))
    from sweeplab.train.models import torchvision_model

    torch.save(torchvision_model("resnet34", 3, 10).state_dict(), tmp / "r34.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp / "a-file").write_text("in the way")
    other = compose_cfg(
        [
            "dataset=synthetic",
            "dataset.num_train=100",
            "dataset.num_test=20",
            "trainer.epochs=1",
            "trainer.device=cpu",
            f"tracking.root={store_root}",
            "tracking.experiment=other-config",
            f"output_dir={tmp / 'other'}",
            "tracking.keep_last_checkpoint=true",
        ]
    )
    train(other)
    client = store_client(store_root)
    bare = client.create_run(client.create_experiment("bare-runs")).info.run_id
    client.delete_experiment(client.create_experiment("deleted-one"))
    (tmp / "not-a-db").mkdir()
    (tmp / "not-a-db" / "mlflow.db").write_bytes(
        b"a spreadsheet, saved under the wrong name\n" * 50
    )
    (tmp / "truncated-db").mkdir()
    store = (Path(store_root) / "mlflow.db").read_bytes()
    (tmp / "truncated-db" / "mlflow.db").write_bytes(store[: len(store) // 2])
    return {
        "tmp": tmp,
        "truncated_mnist": tmp / "truncated",
        "empty_folder": tmp / "empty",
        "one_class_folder": tmp / "one",
        "resnet34_weights": tmp / "r34.pt",
        "closed_port": port,
        "a_file": tmp / "a-file",
        "other_config_last": tmp / "other" / "checkpoints" / "last.pt",
        "bare_run": bare,
        "deleted_experiment": "deleted-one",
        "not_a_db_root": tmp / "not-a-db",
        "truncated_db_root": tmp / "truncated-db",
    }


@pytest.mark.parametrize(("number", "case", "given", "message"), ROWS, ids=[r[1] for r in ROWS])
def test_bad_input_row(number, case, given, message, placeholders, small_cfg, client, store_root):
    given = given.format(**placeholders)
    cfg = None
    with pytest.raises(Exception) as err:  # noqa: PT011 - the message is what is checked
        if given.startswith("rerun "):
            rerun(given.split()[1], tracking_uri=f"sqlite:///{store_root}/mlflow.db")
        else:
            cfg = small_cfg(*shlex.split(given))
            train(cfg)
    text = f"{err.value}\n{err.value.__cause__ or ''}"
    assert re.search(message, text, re.S), f"row {number} ({case}): {text}"
    if cfg is not None:  # nothing was logged for it
        experiment = client.get_experiment_by_name(cfg.tracking.experiment)
        assert experiment is None or client.search_runs([experiment.experiment_id]) == []
