"""`train(cfg) -> dict`: build everything from the config, run the loop, track it. Nothing else.

Order matters for reliability: the config is validated and data, model and optimizer are built
*before* an MLflow run exists, so bad input fails fast and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sweeplab import distributed, tracking
from sweeplab.augment import Normalize
from sweeplab.checkpoint import (
    load_checkpoint,
    model_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from sweeplab.device import resolve_device, seed_everything
from sweeplab.errors import SweeplabError
from sweeplab.job import job_info
from sweeplab.loop import Progress, evaluate, train_epoch
from sweeplab.metrics import per_class_metrics, plot_confusion, plot_curves
from sweeplab.optim import build_optimizer
from sweeplab.params import flatten_config, write_config_files
from sweeplab.resume import config_hash, load_resume_state, sigterm_exits
from sweeplab.schema import ConfigError, launch_dir, option, validate
from sweeplab.sweep import in_multirun, job_placement, job_tags, plan_job

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


def record_failed_job(cfg: DictConfig, error: Exception) -> None:
    try:
        t = cfg.tracking
        experiment_id = tracking.prepare_store(t.uri, t.root, t.experiment)
        job = job_info(cfg)
        tags = {
            **job["tags"],
            **job_tags(run_is_new=True),
            "sweeplab.config_hash": config_hash(cfg),
        }
        tags["error"] = f"{type(error).__name__}: {error}"[:500]
        client = tracking._client(t.uri)
        run_id = client.create_run(experiment_id, run_name=job["run_name"], tags=tags).info.run_id
        client.set_terminated(run_id, status="FAILED")
    except Exception as e:  # e.g. the store itself is what failed: the job's error stands
        log.warning("could not record the failed job in MLflow: %s", e)


def _train(cfg: DictConfig) -> dict[str, Any]:
    validate(cfg)
    tc = cfg.trainer
    amp = option(tc.amp)
    device = resolve_device(tc.device)
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"trainer.amp=fp16 needs a CUDA device (got {device}); use bf16 or none")
    ranks = distributed.setup(option(tc.strategy), tc.device)  # ddp under torchrun, else single
    device = distributed.device_for(ranks, device)
    distributed.check_batch(ranks, tc.batch_size)
    place = job_placement()  # parallel sweep jobs split the cores and GPUs between them
    if device.type == "cuda" and device.index is None and place.gpu is not None:
        device = torch.device("cuda", place.gpu)
    threads = tc.num_threads or place.threads
    if threads:
        torch.set_num_threads(threads)
    seed_everything(tc.seed, tc.deterministic)
    output_dir = Path(cfg.output_dir)
    tracking.ensure_writable(output_dir, "output_dir")
    uri = cfg.tracking.uri
    chash = config_hash(cfg)
    resume_from, experiment_id = tc.resume, None
    if ranks.active and (resume_from or in_multirun()):
        raise ConfigError("trainer.strategy=ddp runs one configuration: no -m, no trainer.resume")
    planned = not resume_from and (in_multirun() or cfg.sweep.dry_run)
    if planned:  # plan_job also ends this config's dead RUNNING runs
        experiment_id = tracking.prepare_store(uri, cfg.tracking.root, cfg.tracking.experiment)
        plan = plan_job(uri, experiment_id, chash, cfg.sweep.rerun_finished)
        if cfg.sweep.dry_run:
            log.info("dry run: this job would %s", plan.describe())
            return {"planned": plan.action, "run_id": plan.run_id, "history": [],
                    cfg.optimized_metric: float("nan")}  # fmt: skip
        if plan.action == "skip":
            tracking.Run(tracking._client(uri), plan.run_id).set_tags(job_tags(run_is_new=False))
            log.info(
                "skipped: run %s already FINISHED this config (sweep.rerun_finished=true to "
                "train it again)", plan.run_id,
            )  # fmt: skip
            return {**plan.metrics, "run_id": plan.run_id, "history": [], "skipped": True}
        if plan.action == "resume":
            log.info("resuming interrupted run %s of this config", plan.run_id)
            resume_from = plan.run_id
    resumed = load_resume_state(resume_from, uri, output_dir, chash) if resume_from else None

    data = build(cfg.dataset, device=device, seed=tc.seed)
    model = build(cfg.model).to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(build(cfg.optimizer), model)
    net = model  # what runs the batches: DDP and/or compiled; `model` holds the weights
    if ranks.active:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    if tc.compile:
        net = torch.compile(net)
    steps_per_epoch = data.train.num_batches(tc.batch_size, drop_last=True)
    scheduler = build(cfg.scheduler)(optimizer, steps_per_epoch=steps_per_epoch, epochs=tc.epochs)
    augment = build(cfg.augmentation)
    normalize = Normalize(data.mean, data.std, device, tc.channels_last)
    train_loss = torch.nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)
    eval_loss = torch.nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    generators = {
        "shuffle": torch.Generator().manual_seed(tc.seed),
        "augment": torch.Generator(device).manual_seed(tc.seed + 1 + ranks.rank),
    }
    num_classes = len(data.classes)

    def reduce(t):
        return distributed.all_reduce_sum(t, ranks)

    def run_eval(split):
        return evaluate(
            net,
            distributed.shard(split.batches(tc.eval_batch_size), ranks),
            normalize=normalize,
            loss_fn=eval_loss,
            num_classes=num_classes,
            device=device,
            amp=amp,
            reduce=reduce,
        )

    job = job_info(cfg)
    main = ranks.is_main  # with ddp, only rank 0 talks to MLflow and writes files
    if experiment_id is None and main:
        experiment_id = tracking.prepare_store(uri, cfg.tracking.root, cfg.tracking.experiment)
    if resumed is None and not planned and main:
        for stale in tracking.mark_stale_runs(uri, experiment_id, chash):
            log.warning("run %s of this config was left RUNNING by a dead process: KILLED", stale)
    log.info(
        "%s: %d train / %d val / %d test images, %s on %s, %d params",
        cfg.dataset.name, len(data.train), len(data.val), len(data.test),
        cfg.model._target_.rsplit(".", 1)[-1], device,
        sum(p.numel() for p in model.parameters()),
    )  # fmt: skip
    best_path = output_dir / "checkpoints" / "best.pt"
    last_path = output_dir / "checkpoints" / "last.pt"
    history: list[dict[str, float]] = []
    best_acc, best_epoch, start_epoch = -1.0, 0, 1
    best_weights = None  # ddp ranks > 0 keep the best weights in memory instead of best.pt
    if resumed is not None:
        restore_training_state(
            resumed, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
            generators=generators,
        )  # fmt: skip
        history = resumed["history"]
        best_acc, best_epoch = resumed["best_acc"], resumed["best_epoch"]
        start_epoch = resumed["epoch"] + 1
        log.info("resuming run %s after epoch %d", resumed["mlflow_run_id"], resumed["epoch"])
    resume_id = resumed["mlflow_run_id"] if resumed else None
    tags = {**job["tags"], **tracking.process_tags(), "sweeplab.config_hash": chash,
            "sweeplab.threads": str(torch.get_num_threads()), "sweeplab.device": str(device),
            **job_tags(run_is_new=resume_id is None)}  # fmt: skip

    tracked = (
        tracking.tracked_run(uri, experiment_id, job["run_name"], tags, resume_id)
        if main
        else contextlib.nullcontext(tracking.NullRun())
    )
    with sigterm_exits(), tracked as run:
        log.info("MLflow run %s (experiment %r)", run.run_id, cfg.tracking.experiment)
        if resumed is None:
            run.log_params(flatten_config(cfg, launch_dir()))
            for path in write_config_files(cfg, output_dir):
                run.log_artifact(path, "hydra")
            run.set_tags({"sweeplab.reproduce_run": f"sweeplab-rerun {run.run_id}"})
        else:  # an epoch checkpointed but killed before its metrics were logged
            logged = max((m.step for m in run.metric_history("val_acc")), default=0)
            for row in history:
                if row["epoch"] > logged:
                    run.log_metrics(_epoch_metrics(row), step=row["epoch"])
        try:
            for epoch in range(start_epoch, tc.epochs + 1):
                progress = Progress(steps_per_epoch, f"epoch {epoch}/{tc.epochs}")
                batches = data.train.batches(
                    tc.batch_size, True, generators["shuffle"], drop_last=True
                )
                stats = train_epoch(
                    net,
                    distributed.shard(batches, ranks),
                    optimizer=optimizer,
                    scheduler=scheduler,
                    loss_fn=train_loss,
                    augment=augment,
                    normalize=normalize,
                    generator=generators["augment"],
                    device=device,
                    amp=amp,
                    scaler=scaler,
                    grad_clip=tc.grad_clip,
                    on_step=progress,
                    epoch=epoch,
                    reduce=reduce,
                )
                progress.close()
                val_loss, val_acc, _ = run_eval(data.val)
                row = {"epoch": epoch, **stats, "val_loss": val_loss, "val_acc": val_acc}
                row["lr"] = optimizer.param_groups[0]["lr"]
                history.append(row)
                improved = val_acc > best_acc
                if epoch == 1 and tc.compile:
                    run.log_metrics({"compile_time_s": stats["first_step_time_s"]}, step=0)
                if improved:
                    best_acc, best_epoch = val_acc, epoch
                    if main:
                        ckpt = model_checkpoint(
                            model, OmegaConf.to_container(cfg.model, resolve=True),
                            str(cfg.dataset.name), data.classes, epoch, val_acc,
                        )  # fmt: skip
                        save_checkpoint(ckpt, best_path)
                        run.log_artifact(best_path, "checkpoints")
                    else:
                        best_weights = {k: v.clone() for k, v in model.state_dict().items()}
                if main:  # last.pt before the metrics: a resume re-logs what a kill cut off
                    state = training_state(
                        model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                        generators=generators, epoch=epoch, best_acc=best_acc,
                        best_epoch=best_epoch, history=history, run_id=run.run_id,
                        config_hash=chash,
                    )  # fmt: skip
                    save_checkpoint(state, last_path)
                    run.log_artifact(last_path, "checkpoints")
                run.log_metrics(_epoch_metrics(row), step=epoch)
                log.info(
                    "epoch %d/%d  train_loss %.4f  train_acc %.4f  val_loss %.4f  val_acc %.4f  "
                    "lr %.2e  %.1fs  %.0f img/s%s",
                    epoch, tc.epochs, stats["train_loss"], stats["train_acc"], val_loss, val_acc,
                    row["lr"], stats["epoch_time_s"], stats["train_images_per_s"],
                    "  *best" if improved else "",
                )  # fmt: skip
                if tc.early_stopping and epoch - best_epoch >= tc.early_stopping:
                    log.info("early stop: no val_acc gain for %d epochs", tc.early_stopping)
                    break

            # Score the test set once, with the checkpoint chosen on validation.
            model.load_state_dict(best_weights or load_checkpoint(best_path)["model"])
            test_loss, test_acc, confusion = run_eval(data.test)
            final = {
                "best_val_acc": best_acc,
                "best_epoch": best_epoch,
                "test_loss": test_loss,
                "test_acc": test_acc,
                **per_class_metrics(confusion, data.classes),
            }
            run.log_metrics(final, step=best_epoch)
            if main:
                png = output_dir / "plots" / "confusion_matrix.png"
                run.log_artifact(plot_confusion(confusion, data.classes, png), "plots")
            log.info(
                "best epoch %d: val_acc %.4f  test_acc %.4f  test_loss %.4f",
                best_epoch, best_acc, test_acc, test_loss,
            )  # fmt: skip
        finally:  # whatever happened, keep the curves of what was learned
            if history and main:
                curves = plot_curves(history, output_dir / "plots" / "curves.png")
                run.log_artifact(curves, "plots")
    distributed.cleanup(ranks)
    return {**final, "run_id": run.run_id, "history": history}


def _epoch_metrics(row: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in row.items() if k != "epoch"}
