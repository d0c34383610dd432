"""`train(cfg) -> dict`: one configuration, as a recipe.

    place -> plan -> restore point -> Trainer -> open the run -> fit(hooks) -> score the test set

Order matters for reliability: the config is validated and data, model and optimizer are built
*before* an MLflow run exists, so bad input fails fast and leaves nothing behind. The epochs are
`Trainer.fit` (train/trainer.py); what happens around them is hooks: checkpoints
(train/checkpoint.py), metrics on the run (track/hooks.py), early stopping (train/hooks.py),
an Optuna trial's pruning (sweep/search.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from sweeplab.config.identity import config_hash
from sweeplab.config.resolvers import in_multirun, launch_dir
from sweeplab.config.schema import ConfigError, option, validate
from sweeplab.sweep.jobs import Plan, plan_for
from sweeplab.sweep.placement import job_placement
from sweeplab.sweep.search import TrialReporter
from sweeplab.track import environment, lineage, logged_model, store, tags, tracking
from sweeplab.track.hooks import MetricLogger, epoch_metrics
from sweeplab.track.params import flatten_config, write_config_files
from sweeplab.track.plots import plot_confusion
from sweeplab.track.resume import drop_resume_state, load_resume_state, sigterm_exits
from sweeplab.train import distributed
from sweeplab.train.checkpoint import CheckpointSaver
from sweeplab.train.device import resolve_device, seed_everything
from sweeplab.train.hooks import EarlyStopping
from sweeplab.train.metrics import macro_metrics, per_class_table
from sweeplab.train.trainer import Trainer, Where

log = logging.getLogger("sweeplab")


@dataclass
class Job:
    """A configuration ready to train: placed, planned, built, its run's experiment known."""

    cfg: DictConfig
    where: Where
    config_hash: str
    trainer: Trainer
    resumed: dict | None  # the last.pt it continues from
    experiment_id: str | None  # None on DDP ranks > 0, which log nothing
    trial: TrialReporter
    datasets: dict[str, Any]  # MLflow dataset entities of train / val / test (lineage.py)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one configuration end to end; returns its final metrics and MLflow run id."""
    try:
        job = prepare(cfg)
    except Exception as e:
        # A sweep job that failed before its run existed (e.g. an unknown model name) still
        # gets a FAILED run in the sweep, so the report lists it whatever the launcher.
        if in_multirun() and not cfg.sweep.dry_run:
            record_failed_job(cfg, e)
        raise
    if isinstance(job, dict):  # a dry run, or a sweep job whose config already FINISHED
        return job
    with sigterm_exits():
        final, run = in_run(job)
    if job.where.ranks.is_main and not cfg.tracking.keep_last_checkpoint:
        drop_resume_state(run, Path(cfg.output_dir))  # ended as intended: never resumed
    distributed.cleanup(job.where.ranks)
    return {**final, "run_id": run.run_id, "history": job.trainer.progress.history}


def prepare(cfg: DictConfig) -> Job | dict:
    """Everything before the run: a Job, or the result of a job that need not train."""
    where = place(cfg)
    chash = config_hash(cfg)
    plan = plan_for(cfg, chash)
    if plan.result is not None:
        return plan.result
    resume_from = cfg.trainer.resume or (plan.run_id if plan.action == "resume" else None)
    resumed = None
    if resume_from:
        resumed = load_resume_state(resume_from, cfg.tracking.uri, Path(cfg.output_dir), chash)
    trainer = Trainer(cfg, where)
    if resumed is not None:
        trainer.load_state_dict(resumed)
        log.info("resuming run %s after epoch %d", resumed["mlflow_run_id"], resumed["epoch"])
    trial = TrialReporter.for_job(cfg)  # an Optuna search's job: report epochs, maybe prune
    experiment_id = experiment_for(cfg, where, plan, chash, resumed)
    splits = lineage.split_datasets(cfg.dataset, trainer.data) if where.ranks.is_main else {}
    return Job(cfg, where, chash, trainer, resumed, experiment_id, trial, splits)


# --- place: device, processes, threads, seed ----------------------------------------------------


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


def experiment_for(cfg: DictConfig, where: Where, plan: Plan, chash: str, resumed) -> str | None:
    """The run's experiment (its store prepared); runs of this config that a dead process
    left RUNNING are marked KILLED. None on DDP ranks > 0."""
    if not where.ranks.is_main:
        return None
    t = cfg.tracking
    experiment_id = plan.experiment_id or store.prepare_store(t.uri, t.root, t.experiment)
    if resumed is None and plan.experiment_id is None:  # planning already did this
        for stale in store.mark_stale_runs(t.uri, experiment_id, chash):
            log.warning("run %s of this config was left RUNNING by a dead process: KILLED", stale)
    return experiment_id


# --- the run: opened with its tags, params and config files; fit; test ------------------------


def in_run(job: Job) -> tuple[dict, tracking.Run | tracking.NullRun]:
    """`fit_and_score` in the MLflow run this training logs into (a stand-in on DDP ranks >
    0): created with its tags, params and config files, or reopened to resume. Returns (the
    final metrics, the run); the run ends as fit_and_score says, or FAILED / KILLED."""
    cfg, where, trainer = job.cfg, job.where, job.trainer
    if not where.ranks.is_main:  # with ddp, only rank 0 talks to MLflow and writes files
        run = tracking.NullRun()
        return fit_and_score(job, run)[0], run
    data, t = trainer.data, cfg.tracking
    log.info(
        "%s: %d train / %d val / %d test images, %s on %s, %d params",
        *(cfg.dataset.name, len(data.train), len(data.val), len(data.test)),
        *(cfg.model._target_.rsplit(".", 1)[-1], where.device),
        sum(p.numel() for p in trainer.model.parameters()),
    )
    resume_id = job.resumed["mlflow_run_id"] if job.resumed else None
    name, start_tags = tags.run_tags(
        cfg, config_hash=job.config_hash, device=where.device, run_is_new=resume_id is None
    )
    interval = t.system_metrics_interval if t.system_metrics else None

    def opened(run: tracking.Run) -> tuple[dict, str]:
        log.info("MLflow run %s (experiment %r)", run.run_id, t.experiment)
        record_start(job, run)
        return fit_and_score(job, run)

    return tracking.run_to_end(
        t.uri, job.experiment_id, name, start_tags, opened, resume_id, interval
    )


def record_start(job: Job, run: tracking.Run) -> None:
    """A new run: params, dataset inputs, config files, environment. A resumed one: the epoch
    metrics a kill cut off after last.pt was written."""
    cfg = job.cfg
    if job.resumed is None:
        run.log_params(flatten_config(cfg, launch_dir()))
        run.log_inputs(lineage.dataset_inputs(job.datasets))
        for path in write_config_files(cfg, Path(cfg.output_dir)):
            run.log_artifact(path, "hydra")
        run.log_text(environment.requirements(), "environment/requirements.txt")
        run.set_tags({"sweeplab.reproduce_run": f"sweeplab-rerun {run.run_id}"})
        return
    logged = max((m.step for m in run.metric_history("val_acc")), default=0)
    for row in job.resumed["history"]:
        if row["epoch"] > logged:
            run.log_metrics(epoch_metrics(row), step=row["epoch"])


def fit_and_score(job: Job, run) -> tuple[dict, str]:
    """The epochs, with checkpoints, metrics, early stopping and pruning as hooks; then the
    test set once, or (a pruned trial) no test score and the run ends KILLED."""
    cfg, trainer = job.cfg, job.trainer
    main = job.where.ranks.is_main
    saver = CheckpointSaver(
        Path(cfg.output_dir) / "checkpoints" if main else None,
        model_config=OmegaConf.to_container(cfg.model, resolve=True),
        dataset=str(cfg.dataset.name),
        resume_extra={"mlflow_run_id": run.run_id, "config_hash": job.config_hash},
        saved=lambda path: run.log_artifact(path, "checkpoints"),
    )
    hooks = [
        saver,
        *([MetricLogger(run, cfg.trainer.compile)] if main else []),
        EarlyStopping(cfg.trainer.early_stopping),
        job.trial,
    ]
    trainer.fit(hooks)
    if job.trial.pruned_epoch is not None:
        return end_pruned(trainer, run, job.trial.pruned_epoch), "KILLED"
    return score_test_set(job, saver, run), "FINISHED"


def end_pruned(trainer: Trainer, run, epoch: int) -> dict:
    """A pruned trial: no test score (it is not a candidate); the run keeps its best.pt and
    ends KILLED with the pruned epoch as a tag, neither a crash (FAILED) nor a result."""
    p = trainer.progress
    final = {
        "best_val_acc": p.best_acc,
        "best_epoch": p.best_epoch,
        "train_time_s": trainer.train_time_s(),
    }
    run.log_metrics(final, step=p.best_epoch)
    run.set_tags({tags.PRUNED_TAG: str(epoch)})
    return {**final, tags.PRUNED_TAG: epoch}


def score_test_set(job: Job, saver: CheckpointSaver, run) -> dict:
    """The test set, once, with the best-on-val weights; they become the run's logged model,
    and the final metrics are linked to it and to the split each was computed on."""
    cfg, trainer, p = job.cfg, job.trainer, job.trainer.progress
    trainer.model.load_state_dict(saver.best_weights())
    test_loss, test_acc, confusion = trainer.evaluate(trainer.data.test)
    classes = trainer.data.classes
    per_class = per_class_table(confusion, classes)
    test = {"test_loss": test_loss, "test_acc": test_acc, **macro_metrics(per_class)}
    other = {"best_epoch": p.best_epoch, "train_time_s": trainer.train_time_s()}
    if job.where.ranks.is_main:
        model_id = None
        if cfg.tracking.log_model:  # trainer.model holds the best weights now
            model_id = logged_model.log_run_model(
                cfg, trainer.model, trainer.data, p.best_epoch, p.best_acc, run
            )
        splits = job.datasets
        run.log_metrics({"best_val_acc": p.best_acc}, p.best_epoch, model_id, splits["val"])
        run.log_metrics(test, p.best_epoch, model_id, splits["test"])
        run.log_metrics(other, p.best_epoch, model_id)
        run.log_table(per_class, "metrics/test_per_class.json")
        png = Path(cfg.output_dir) / "plots" / "confusion_matrix.png"
        run.log_artifact(plot_confusion(confusion, classes, png), "plots")
    log.info(
        "best epoch %d: val_acc %.4f  test_acc %.4f  test_loss %.4f",
        p.best_epoch,
        p.best_acc,
        test_acc,
        test_loss,
    )
    return {"best_val_acc": p.best_acc, **other, **test}


# --- a sweep job that failed before its run existed --------------------------------------------


def record_failed_job(cfg: DictConfig, error: Exception) -> None:
    try:
        t = cfg.tracking
        experiment_id = store.prepare_store(t.uri, t.root, t.experiment)
        name, failed = tags.failed_job_tags(cfg, error, config_hash(cfg))
        client = tracking.client(t.uri)
        run_id = client.create_run(experiment_id, run_name=name, tags=failed).info.run_id
        client.set_terminated(run_id, status="FAILED")
    except Exception as e:  # e.g. the store itself is what failed: the job's error stands
        log.warning("could not record the failed job in MLflow: %s", e)
