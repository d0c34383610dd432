"""Every option of every group composes and builds; bad config gives one clear error."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from helpers.config import GROUPS, compose_cfg
from sweeplab.config.schema import (
    ConfigError,
    SweepConfig,
    TrackingConfig,
    TrainConfig,
    TrainerConfig,
    validate,
)
from sweeplab.train.optim import build_optimizer
from sweeplab.train.splits import DatasetError
from sweeplab.train.trainer import build


def test_groups_offer_what_the_readme_promises():
    assert GROUPS["dataset"] == [
        "cifar10",
        "cifar100",
        "fashion_mnist",
        "imagefolder",
        "mnist",
        "synthetic",
    ]
    assert GROUPS["model"] == ["lenet", "resnet18", "simple_cnn", "torchvision"]
    assert GROUPS["optimizer"] == ["adam", "adamw", "rmsprop", "sgd"]
    assert GROUPS["scheduler"] == ["cosine", "none", "onecycle", "step"]
    assert GROUPS["augmentation"] == [
        "cutmix",
        "mixup",
        "none",
        "randaugment",
        "seed_tutorial",
        "standard",
        "trivialaugment",
    ]


def test_defaults_are_the_headline_setup():
    cfg = compose_cfg()
    assert cfg.dataset.name == "cifar10"
    assert cfg.model._target_ == "sweeplab.train.models.simple_cnn"
    assert cfg.optimizer._target_ == "torch.optim.SGD"
    assert (cfg.optimizer.lr, cfg.optimizer.momentum) == (0.001, 0.9)
    assert cfg.dataset.val_fraction == 0.1
    assert cfg.tracking.experiment == "cifar10"
    assert cfg.tracking.uri.startswith("sqlite:////") and cfg.tracking.uri.endswith(
        "mlruns/mlflow.db"
    )


@pytest.mark.parametrize("option", GROUPS["dataset"])
def test_every_dataset_option_composes_and_validates(option, image_folder):
    extra = [f"dataset.root={image_folder}"] if option == "imagefolder" else []
    cfg = compose_cfg([f"dataset={option}", *extra])
    validate(cfg)
    assert cfg.model.num_classes == cfg.dataset.num_classes  # interpolated from the dataset
    assert len(cfg.dataset.mean) == len(cfg.dataset.std) == cfg.dataset.in_channels


@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "cifar100"])
@pytest.mark.parametrize("option", GROUPS["model"])
def test_every_model_builds_for_every_input_shape(option, dataset):
    cfg = compose_cfg([f"model={option}", f"dataset={dataset}"])
    validate(cfg)
    model = build(cfg.model).eval()
    d = cfg.dataset
    x = torch.randn(2, d.in_channels, d.image_size, d.image_size)
    with torch.no_grad():
        assert model(x).shape == (2, d.num_classes)


@pytest.mark.parametrize("option", GROUPS["optimizer"])
def test_every_optimizer_builds_without_decay_on_norm_and_bias(option):
    cfg = compose_cfg([f"optimizer={option}", "optimizer.weight_decay=0.05", "dataset=mnist"])
    validate(cfg)
    model = build(cfg.model)
    opt = build_optimizer(build(cfg.optimizer), model)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.ndim > 1), name
    assert all(g["lr"] == cfg.optimizer.lr for g in opt.param_groups)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize("option", GROUPS["scheduler"])
def test_every_scheduler_builds_and_keeps_lr_in_range(option):
    cfg = compose_cfg([f"scheduler={option}", "optimizer.lr=0.1"])
    validate(cfg)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = build(cfg.scheduler)(opt, steps_per_epoch=10, epochs=5)
    lrs = []
    for _ in range(50):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(0 <= lr <= 0.1 + 1e-12 for lr in lrs)
    if option == "none":
        assert set(lrs) == {0.1}
    elif option in ("cosine", "onecycle"):
        assert lrs[-1] < 0.01 and max(lrs) > 0.09  # anneals from (near) the peak
    else:
        assert lrs[-1] == pytest.approx(0.1)  # step: 30-epoch steps, run is 5 epochs


def test_step_and_cosine_shapes():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    cfg = compose_cfg(["scheduler=step", "scheduler.step_epochs=2", "scheduler.gamma=0.5"])
    sched = build(cfg.scheduler)(opt, steps_per_epoch=3, epochs=6)
    seen = []
    for _ in range(12):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == [1.0] * 6 + [0.5] * 6
    opt = torch.optim.SGD([param], lr=1.0)
    cfg = compose_cfg(["scheduler=cosine", "scheduler.warmup_epochs=1"])
    sched = build(cfg.scheduler)(opt, steps_per_epoch=4, epochs=3)
    seen = []
    for _ in range(12):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[:4] == [0.25, 0.5, 0.75, 1.0]  # linear warm-up
    assert seen[4:] == sorted(seen[4:], reverse=True)


@pytest.mark.parametrize("option", GROUPS["augmentation"])
def test_every_augmentation_option_composes_and_builds(option):
    cfg = compose_cfg([f"augmentation={option}"])
    validate(cfg)
    aug = build(cfg.augmentation)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    assert aug(x, torch.arange(8), torch.Generator().manual_seed(0))[0].shape == x.shape


# --- bad input: one clear error naming the key -----------------------------------------------


def test_typo_in_a_key_fails_at_composition_naming_it():
    with pytest.raises(ConfigCompositionException, match="trainer.epoch"):
        compose_cfg(["trainer.epoch=3"])


def test_wrong_type_in_typed_group_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(["trainer.epochs=abc"])
    assert "trainer.epochs" in str(err.value.__cause__ or err.value)


def test_wrong_type_in_target_group_names_key_and_type():
    cfg = compose_cfg(["optimizer.lr=abc"])
    with pytest.raises(ConfigError, match=r"optimizer\.lr='abc' has the wrong type: expected"):
        validate(cfg)


def test_unknown_knob_added_with_plus_is_rejected_with_valid_list():
    cfg = compose_cfg(["+optimizer.momentun=0.8"])
    with pytest.raises(ConfigError, match=r"optimizer\.momentun is not a knob.*momentum"):
        validate(cfg)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optimizer.lr=0", "optimizer.lr"),
        ("optimizer.lr=-0.1", "optimizer.lr"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("dataset.val_fraction=1.5", "dataset.val_fraction"),
        ("trainer.device=gpu", "trainer.device"),
    ],
)
def test_out_of_range_values_are_refused_up_front(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose_cfg([override]))


def test_unknown_group_option_lists_valid_ones():
    with pytest.raises(ConfigCompositionException, match="simple_cnn"):
        compose_cfg(["model=resnet19"])


def test_amp_accepts_only_known_modes():
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(["trainer.amp=fp8"])
    assert "bf16" in str(err.value.__cause__)


def test_mandatory_values_are_checked_before_anything_runs():
    cfg = compose_cfg(["dataset=imagefolder"])
    with pytest.raises(ConfigError, match=r"dataset\.root"):
        validate(cfg)


def test_struct_mode_blocks_setting_unknown_keys_in_code():
    cfg = compose_cfg()
    with pytest.raises((ConfigKeyError, ValidationError, AttributeError)):
        cfg.trainer.lr = 0.1
    assert OmegaConf.is_struct(cfg)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "fashion_mnist"])
def test_missing_dataset_offline_gives_one_clear_error(name, tmp_path):
    cfg = compose_cfg([f"dataset={name}", f"dataset.root={tmp_path}", "dataset.download=false"])
    with pytest.raises(DatasetError, match=str(tmp_path)) as err:
        build(cfg.dataset, device=torch.device("cpu"), seed=0)
    assert "SWEEPLAB_DATA_DIR" in str(err.value)


def test_failed_download_is_reported_with_the_expected_path(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "urlretrieve", offline, raising=False)
    monkeypatch.setattr(tv_utils, "_urlretrieve", offline, raising=False)
    cfg = compose_cfg(["dataset=cifar10", f"dataset.root={tmp_path}"])
    with pytest.raises(DatasetError, match="download failed") as err:
        build(cfg.dataset, device=torch.device("cpu"), seed=0)
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value)


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (
            ["model=resnet19"],
            "Could not find 'model/resnet19': the options of model are lenet, "
            "resnet18, simple_cnn, torchvision",
        ),
        (["-m", "optimizer=sgd,adamm"], "Could not find 'optimizer/adamm'"),
        (["+experiment=quick"], "Could not find 'experiment/quick'"),
        (["-m", "--cfg", "job"], "--multirun and --cfg cannot be combined"),
        (["-m", "optimizer=sgd,adam", "model=simple_cnn,resnet18"], None),  # the headline
        (["hydra/launcher=joblib", "trainer.epochs=3", "optimizer.lr=0.1"], None),
        # A group option in a folder the user adds is one Hydra finds: not refused
        (["hydra.searchpath=[file://{extra}]", "experiment=mine"], None),
        (["--config-dir", "{extra}", "experiment=mine"], None),
        (
            ["hydra.searchpath=[file://{extra}]", "experiment=yours"],
            "Could not find 'experiment/yours': the options of experiment are mine, mnist_quick",
        ),
        (["hydra.searchpath=[pkg://somewhere.conf]", "experiment=mine"], None),  # Hydra's call
    ],
)
def test_command_line_problems_hydra_would_not_say_in_one_line(argv, problem, tmp_path):
    from helpers.config import CONF
    from sweeplab.config.command_line import command_line_problem

    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\n")
    found = command_line_problem([a.replace("{extra}", str(tmp_path)) for a in argv], CONF)
    assert found == problem if problem is None else found.startswith(problem)


def test_defaults_are_written_once_in_conf():
    """The schema's dataclasses give types only: every value of trainer / tracking / sweep
    comes from conf/, so the YAML a user reads is the whole truth."""
    for section in (TrainerConfig, TrackingConfig, SweepConfig, TrainConfig):
        given = [
            f.name
            for f in dataclasses.fields(section)
            if f.default is not MISSING and f.default_factory is dataclasses.MISSING
        ]
        assert given == [], f"{section.__name__} sets defaults: {given}"
    cfg = compose_cfg(["output_dir=out"])
    for section in ("trainer", "tracking", "sweep"):
        assert OmegaConf.missing_keys(cfg[section]) == set()
    assert cfg.optimized_metric == "best_val_acc" and cfg.trainer.epochs == 10
