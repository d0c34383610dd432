"""`train(cfg) -> dict`: one configuration, as a short list of named steps.

    place -> plan -> restore point -> build -> open the run -> fit -> score the test set

Order matters for reliability: the config is validated and data, model and optimizer are built
*before* an MLflow run exists, so bad input fails fast and leaves nothing behind. The loop that
touches batches is `loop.py`; what a run is tagged with is `tracking.py`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sweeplab import distributed, environment, lineage, logged_model, store, tracking
from sweeplab.augment import Normalize
from sweeplab.checkpoint import (
    load_checkpoint,
    model_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from sweeplab.data import Data
from sweeplab.device import resolve_device, seed_everything
from sweeplab.errors import SweeplabError
from sweeplab.identity import config_hash
from sweeplab.loop import Progress, evaluate, train_epoch
from sweeplab.metrics import macro_metrics, per_class_table, plot_confusion
from sweeplab.optim import build_optimizer
from sweeplab.params import flatten_config, write_config_files
from sweeplab.resume import drop_resume_state, load_resume_state, sigterm_exits
from sweeplab.schema import ConfigError, in_multirun, launch_dir, option, validate
from sweeplab.search import TrialReporter
from sweeplab.sweep import Plan, job_placement, plan_for
from sweeplab.tracking import PRUNED_TAG

log = logging.getLogger("sweeplab")


def build(node: DictConfig, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, but our own clear errors surface as themselves, not wrapped."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, SweeplabError):
            raise e.__cause__ from None
        raise


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one configuration end to end; returns its final metrics and MLflow run id."""
    try:
        return _train(cfg)
    except Exception as e:
        # A sweep job that failed before its run existed (e.g. an unknown model name) still
        # gets a FAILED run in the sweep, so the report lists it whatever the launcher.
        if in_multirun() and not cfg.sweep.dry_run and not hasattr(e, "sweeplab_run_id"):
            record_failed_job(cfg, e)
        raise


def _train(cfg: DictConfig) -> dict[str, Any]:
    where = place(cfg)
    chash = config_hash(cfg)
    plan = plan_for(cfg, chash)
    if plan.result is not None:  # a dry run, or a sweep job whose config already FINISHED
        return plan.result
    resume_from = cfg.trainer.resume or (plan.run_id if plan.action == "resume" else None)
    output_dir = Path(cfg.output_dir)
    resumed = None
    if resume_from:
        resumed = load_resume_state(resume_from, cfg.tracking.uri, output_dir, chash)
    parts = build_parts(cfg, where)
    state = FitState.start(parts, resumed)
    trial = TrialReporter.for_job(cfg)  # an Optuna search's job: report epochs, maybe prune
    with sigterm_exits(), open_run(cfg, where, plan, chash, parts, resumed) as run:
        fit(cfg, where, parts, state, run, chash, trial)
        if trial.pruned_epoch is None:
            final = score_test_set(cfg, where, parts, state, run)
        else:
            final = end_pruned(state, run, trial.pruned_epoch)
    if where.ranks.is_main and not cfg.tracking.keep_last_checkpoint:
        drop_resume_state(run, output_dir)  # ended as intended: never resumed
    distributed.cleanup(where.ranks)
    return {**final, "run_id": run.run_id, "history": state.history}


# --- place: device, processes, threads, seed ----------------------------------------------------


@dataclass
class Where:
    device: torch.device
    ranks: distributed.Ranks
    amp: str  # none | bf16 | fp16


def place(cfg: DictConfig) -> Where:
    """Check the config, then pick the device (a GPU of its own in a parallel sweep), join the
    DDP group under torchrun, split the cores between parallel jobs, seed everything."""
    validate(cfg)
    tc = cfg.trainer
    amp, device = option(tc.amp), resolve_device(tc.device)
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"trainer.amp=fp16 needs a CUDA device (got {device}); use bf16 or none")
    ranks = distributed.setup(option(tc.strategy), tc.device)  # ddp under torchrun, else single
    if ranks.active and (tc.resume or in_multirun()):
        raise ConfigError("trainer.strategy=ddp runs one configuration: no -m, no trainer.resume")
    device = distributed.device_for(ranks, device)
    distributed.check_batch(ranks, tc.batch_size)
    job = job_placement()  # parallel sweep jobs split the cores and GPUs between them
    if device.type == "cuda" and device.index is None and job.gpu is not None:
        device = torch.device("cuda", job.gpu)
    threads = tc.num_threads or job.threads
    if threads:
        torch.set_num_threads(threads)
    seed_everything(tc.seed, tc.deterministic)
    store.ensure_writable(cfg.output_dir, "output_dir")
    return Where(device, ranks, amp)


# --- build: everything the loop needs, from the config -----------------------------------------


@dataclass
class Parts:
    data: Data
    model: torch.nn.Module  # holds the weights
    net: torch.nn.Module  # runs the batches: the model, wrapped by DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    augment: Any
    normalize: Normalize
    train_loss: torch.nn.Module
    generators: dict[str, torch.Generator]
    steps_per_epoch: int
    datasets: dict[str, Any]  # MLflow dataset entities of train / val / test (lineage.py)


def build_parts(cfg: DictConfig, where: Where) -> Parts:
    tc, device = cfg.trainer, where.device
    data = build(cfg.dataset, device=device, seed=tc.seed)
    model = build(cfg.model).to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(build(cfg.optimizer), model)
    net = model
    if where.ranks.active:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    if tc.compile:
        net = torch.compile(net)
    steps = data.train.num_batches(tc.batch_size, drop_last=True)
    return Parts(
        data=data,
        model=model,
        net=net,
        optimizer=optimizer,
        scheduler=build(cfg.scheduler)(optimizer, steps_per_epoch=steps, epochs=tc.epochs),
        scaler=torch.amp.GradScaler(device.type, enabled=where.amp == "fp16"),
        augment=build(cfg.augmentation),
        normalize=Normalize(data.mean, data.std, device, tc.channels_last),
        train_loss=torch.nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing),
        generators={
            "shuffle": torch.Generator().manual_seed(tc.seed),
            "augment": torch.Generator(device).manual_seed(tc.seed + 1 + where.ranks.rank),
        },
        steps_per_epoch=steps,
        datasets=lineage.split_datasets(cfg.dataset, data) if where.ranks.is_main else {},
    )


@dataclass
class FitState:
    history: list[dict[str, float]] = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = 0
    start_epoch: int = 1
    best_weights: dict | None = None  # ddp ranks > 0 keep the best weights in memory

    @classmethod
    def start(cls, parts: Parts, resumed: dict | None) -> FitState:
        """From scratch, or exactly where the checkpoint `resumed` left off."""
        if resumed is None:
            return cls()
        restore_training_state(
            resumed, model=parts.model, optimizer=parts.optimizer, scheduler=parts.scheduler,
            scaler=parts.scaler, generators=parts.generators,
        )  # fmt: skip
        log.info("resuming run %s after epoch %d", resumed["mlflow_run_id"], resumed["epoch"])
        return cls(resumed["history"], resumed["best_acc"], resumed["best_epoch"],
                   resumed["epoch"] + 1)  # fmt: skip


# --- open the run: store, tags, params, config files -------------------------------------------


@contextlib.contextmanager
def open_run(cfg: DictConfig, where: Where, plan: Plan, chash: str, parts: Parts, resumed):
    """The MLflow run this training logs into (a stand-in on DDP ranks > 0): created with its
    tags, params and config files, or reopened to resume. Ends FINISHED, FAILED or KILLED."""
    if not where.ranks.is_main:  # with ddp, only rank 0 talks to MLflow and writes files
        yield tracking.NullRun()
        return
    t = cfg.tracking
    experiment_id = plan.experiment_id or store.prepare_store(t.uri, t.root, t.experiment)
    if resumed is None and plan.experiment_id is None:  # planning already did this
        for stale in store.mark_stale_runs(t.uri, experiment_id, chash):
            log.warning("run %s of this config was left RUNNING by a dead process: KILLED", stale)
    data, model = parts.data, parts.model
    log.info(
        "%s: %d train / %d val / %d test images, %s on %s, %d params",
        cfg.dataset.name, len(data.train), len(data.val), len(data.test),
        cfg.model._target_.rsplit(".", 1)[-1], where.device,
        sum(p.numel() for p in model.parameters()),
    )  # fmt: skip
    resume_id = resumed["mlflow_run_id"] if resumed else None
    name, tags = tracking.run_tags(
        cfg, config_hash=chash, device=where.device, run_is_new=resume_id is None
    )
    interval = t.system_metrics_interval if t.system_metrics else None
    with tracking.tracked_run(t.uri, experiment_id, name, tags, resume_id, interval) as run:
        log.info("MLflow run %s (experiment %r)", run.run_id, t.experiment)
        if resumed is None:
            run.log_params(flatten_config(cfg, launch_dir()))
            run.log_inputs(lineage.dataset_inputs(parts.datasets))
            for path in write_config_files(cfg, Path(cfg.output_dir)):
                run.log_artifact(path, "hydra")
            run.log_text(environment.requirements(), "environment/requirements.txt")
            run.set_tags({"sweeplab.reproduce_run": f"sweeplab-rerun {run.run_id}"})
        else:  # an epoch checkpointed but killed before its metrics were logged
            logged = max((m.step for m in run.metric_history("val_acc")), default=0)
            for row in resumed["history"]:
                if row["epoch"] > logged:
                    run.log_metrics(_epoch_metrics(row), step=row["epoch"])
        yield run


# --- fit: the epochs ----------------------------------------------------------------------------


def fit(cfg: DictConfig, where: Where, parts: Parts, state: FitState, run, chash: str,
        trial: TrialReporter) -> None:  # fmt: skip
    """Train epoch after epoch; keep the best checkpoint by validation accuracy, a last.pt to
    resume from after each epoch, and stop early when validation stops improving (or when an
    Optuna search's pruner says this trial will not win)."""
    tc, ranks, output_dir = cfg.trainer, where.ranks, Path(cfg.output_dir)
    trial.replay(state.history)
    for epoch in range(state.start_epoch, tc.epochs + 1):
        progress = Progress(parts.steps_per_epoch, f"epoch {epoch}/{tc.epochs}")
        batches = parts.data.train.batches(
            tc.batch_size, True, parts.generators["shuffle"], drop_last=True
        )
        stats = train_epoch(
            parts.net, distributed.shard(batches, ranks), optimizer=parts.optimizer,
            scheduler=parts.scheduler, loss_fn=parts.train_loss, augment=parts.augment,
            normalize=parts.normalize, generator=parts.generators["augment"],
            device=where.device, amp=where.amp, scaler=parts.scaler, grad_clip=tc.grad_clip,
            on_step=progress, epoch=epoch, reduce=_reducer(ranks),
        )  # fmt: skip
        progress.close()
        val_loss, val_acc, _ = evaluate_split(cfg, where, parts, parts.data.val)
        row = {"epoch": epoch, **stats, "val_loss": val_loss, "val_acc": val_acc}
        state.history.append(row)
        if epoch == 1 and tc.compile:
            run.log_metrics({"compile_time_s": stats["first_step_time_s"]}, step=0)
        improved = val_acc > state.best_acc
        if improved:
            state.best_acc, state.best_epoch = val_acc, epoch
            keep_best(cfg, where, parts, state, run, epoch, val_acc)
        if ranks.is_main:  # last.pt before the metrics: a resume re-logs what a kill cut off
            last = save_checkpoint(training_state(
                model=parts.model, optimizer=parts.optimizer, scheduler=parts.scheduler,
                scaler=parts.scaler, generators=parts.generators, epoch=epoch,
                best_acc=state.best_acc, best_epoch=state.best_epoch, history=state.history,
                run_id=run.run_id, config_hash=chash,
            ), output_dir / "checkpoints" / "last.pt")  # fmt: skip
            run.log_artifact(last, "checkpoints")
        run.log_metrics(_epoch_metrics(row), step=epoch)
        log.info(
            "epoch %d/%d  train_loss %.4f  train_acc %.4f  val_loss %.4f  val_acc %.4f  "
            "lr %.2e  %.1fs  %.0f img/s%s",
            epoch, tc.epochs, stats["train_loss"], stats["train_acc"], val_loss, val_acc,
            row["lr"], stats["epoch_time_s"], stats["train_images_per_s"],
            "  *best" if improved else "",
        )  # fmt: skip
        if tc.early_stopping and epoch - state.best_epoch >= tc.early_stopping:
            log.info("early stop: no val_acc gain for %d epochs", tc.early_stopping)
            break
        if trial.should_stop(row, state.best_acc):
            break


def end_pruned(state: FitState, run, epoch: int) -> dict:
    """A pruned trial: no test score (it is not a candidate); the run keeps its best.pt and
    ends KILLED with the pruned epoch as a tag, neither a crash (FAILED) nor a result."""
    final = {"best_val_acc": state.best_acc, "best_epoch": state.best_epoch,
             "train_time_s": _train_time(state), PRUNED_TAG: epoch}  # fmt: skip
    run.log_metrics({k: v for k, v in final.items() if k != PRUNED_TAG}, step=state.best_epoch)
    run.set_tags({PRUNED_TAG: str(epoch)})
    run.end_status = "KILLED"
    return final


def _train_time(state: FitState) -> float:
    return float(sum(row.get("epoch_time_s", 0.0) for row in state.history))


def keep_best(cfg, where: Where, parts: Parts, state: FitState, run, epoch: int, val_acc):
    """best.pt (weights + what is needed to rebuild the model), logged to the run; DDP ranks
    other than 0 keep the weights in memory instead."""
    if not where.ranks.is_main:
        state.best_weights = {k: v.clone() for k, v in parts.model.state_dict().items()}
        return
    ckpt = model_checkpoint(
        parts.model, OmegaConf.to_container(cfg.model, resolve=True), str(cfg.dataset.name),
        parts.data.classes, epoch, val_acc,
    )  # fmt: skip
    run.log_artifact(save_checkpoint(ckpt, _best_path(cfg)), "checkpoints")


# --- test: once, with the checkpoint chosen on validation --------------------------------------


def score_test_set(cfg: DictConfig, where: Where, parts: Parts, state: FitState, run) -> dict:
    """The test set, once, with the best-on-val weights; they become the run's logged model,
    and the final metrics are linked to it and to the split each was computed on."""
    weights = state.best_weights or load_checkpoint(_best_path(cfg))["model"]
    parts.model.load_state_dict(weights)
    test_loss, test_acc, confusion = evaluate_split(cfg, where, parts, parts.data.test)
    per_class = per_class_table(confusion, parts.data.classes)
    test = {"test_loss": test_loss, "test_acc": test_acc, **macro_metrics(per_class)}
    other = {"best_epoch": state.best_epoch, "train_time_s": _train_time(state)}
    if where.ranks.is_main:
        model_id = None
        if cfg.tracking.log_model:  # parts.model holds the best weights now
            model_id = logged_model.log_run_model(cfg, parts.model, parts.data, state.best_epoch,
                                                  state.best_acc, run)  # fmt: skip
        step, datasets = state.best_epoch, parts.datasets
        run.log_metrics({"best_val_acc": state.best_acc}, step, model_id, datasets["val"])
        run.log_metrics(test, step, model_id, datasets["test"])
        run.log_metrics(other, step, model_id)
        run.log_table(per_class, "metrics/test_per_class.json")
        png = Path(cfg.output_dir) / "plots" / "confusion_matrix.png"
        run.log_artifact(plot_confusion(confusion, parts.data.classes, png), "plots")
    log.info(
        "best epoch %d: val_acc %.4f  test_acc %.4f  test_loss %.4f",
        state.best_epoch, state.best_acc, test_acc, test_loss,
    )  # fmt: skip
    return {"best_val_acc": state.best_acc, **other, **test}


def evaluate_split(cfg: DictConfig, where: Where, parts: Parts, split) -> tuple:
    """(loss, accuracy, confusion) over the whole split, across DDP ranks; never augmented."""
    return evaluate(
        parts.net, distributed.shard(split.batches(cfg.trainer.eval_batch_size), where.ranks),
        normalize=parts.normalize, loss_fn=torch.nn.CrossEntropyLoss(),
        num_classes=len(parts.data.classes), device=where.device, amp=where.amp,
        reduce=_reducer(where.ranks),
    )  # fmt: skip


# --- a sweep job that failed before its run existed --------------------------------------------


def record_failed_job(cfg: DictConfig, error: Exception) -> None:
    try:
        t = cfg.tracking
        experiment_id = store.prepare_store(t.uri, t.root, t.experiment)
        name, tags = tracking.failed_job_tags(cfg, error, config_hash(cfg))
        client = tracking.client(t.uri)
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        client.set_terminated(run_id, status="FAILED")
    except Exception as e:  # e.g. the store itself is what failed: the job's error stands
        log.warning("could not record the failed job in MLflow: %s", e)


def _best_path(cfg: DictConfig) -> Path:
    return Path(cfg.output_dir) / "checkpoints" / "best.pt"


def _reducer(ranks: distributed.Ranks):
    return lambda t: distributed.all_reduce_sum(t, ranks)


def _epoch_metrics(row: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in row.items() if k != "epoch"}
