"""Each trainer knob does what it says, measured on what it changes (not only that a run ends):
label smoothing, gradient clipping, every scheduler, deterministic mode, re-running finished
sweep jobs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers.config import GROUPS
from helpers.core import history, trainer_for
from sweeplab.job import train
from sweeplab.sweep.jobs import plan_job
from sweeplab.train import loop
from sweeplab.train.hooks import Hook


def test_label_smoothing_reaches_the_loss_as_computed_by_hand(small_cfg):
    """The training loss with trainer.label_smoothing=eps is
    (1 - eps) * cross-entropy + eps * mean over classes of -log p."""
    trainer = trainer_for(small_cfg("trainer.label_smoothing=0.2"))
    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 10
    log_p = logits.log_softmax(1)
    by_hand = (0.8 * -log_p[torch.arange(16), y] + 0.2 * -log_p.mean(1)).mean()
    assert torch.allclose(trainer.train_loss(logits, y), by_hand)
    assert not torch.allclose(nn.functional.cross_entropy(logits, y), by_hand)


class RecordingSGD(torch.optim.SGD):
    """SGD that records the total gradient norm each step sees (after any clipping)."""

    def __init__(self, params, **kw):
        super().__init__(params, **kw)
        self.norms: list[float] = []

    def step(self, closure=None):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return super().step(closure)


def _one_epoch(grad_clip: float | None) -> list[float]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    optimizer = RecordingSGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    batches = [(x[i : i + 16], y[i : i + 16] * 0 + 3) for i in range(0, 64, 16)]  # one class
    loop.train_epoch(
        model,
        batches,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        loss_fn=nn.CrossEntropyLoss(),
        augment=lambda x, y, g=None: (x, y),
        normalize=lambda x: x.float() / 255 * 40,
        generator=None,
        device=torch.device("cpu"),
        grad_clip=grad_clip,
    )
    return optimizer.norms


def test_grad_clip_bounds_the_gradient_norm_of_every_step():
    free = _one_epoch(None)
    clipped = _one_epoch(0.5)
    assert max(free) > 2  # large inputs, large gradients: there is something to clip
    assert all(n <= 0.5 + 1e-5 for n in clipped)
    assert clipped[0] == pytest.approx(0.5, rel=1e-4)  # clipped to the bound, not zeroed


SCHEDULE_KNOBS = {"step": ["scheduler.step_epochs=1"]}  # decay every epoch, to see it in 3


@pytest.mark.parametrize("scheduler", GROUPS["scheduler"])
def test_every_scheduler_runs_inside_train_and_moves_the_lr_as_configured(
    scheduler, small_cfg, client
):
    cfg = small_cfg(
        f"scheduler={scheduler}", "trainer.epochs=3", *SCHEDULE_KNOBS.get(scheduler, [])
    )
    result = train(cfg)
    assert client.get_run(result["run_id"]).info.status == "FINISHED"
    lrs = [row["lr"] for row in result["history"]]  # used by each epoch's last step
    base, end = cfg.optimizer.lr, cfg.optimizer.lr / 25 / 1e4  # onecycle: down to lr/25/1e4
    expected = {
        "none": lambda: lrs == [base] * 3,
        "step": lambda: lrs == pytest.approx([base, base * 0.1, base * 0.01]),
        "cosine": lambda: base > lrs[0] > lrs[1] > lrs[2] > 0 and lrs[2] < base / 100,
        "onecycle": lambda: max(lrs) <= base and lrs[2] == pytest.approx(end, rel=1e-3),
    }
    assert expected[scheduler](), lrs


class DeterminismProbe(Hook):
    """Records, after each epoch, whether torch's deterministic algorithms were on."""

    def __init__(self):
        self.states: list[bool] = []

    def on_epoch_end(self, trainer, row, improved) -> bool:
        self.states.append(torch.are_deterministic_algorithms_enabled())
        return False


def test_deterministic_mode_is_on_during_the_run_and_runs_are_identical(small_cfg):
    overrides = ("trainer.deterministic=true", "trainer.epochs=2", "augmentation=randaugment")
    runs = []
    for _ in range(2):
        probe, trainer = DeterminismProbe(), trainer_for(small_cfg(*overrides))
        runs.append((history(trainer.fit([probe])), trainer.evaluate(trainer.data.test)[1]))
        assert probe.states == [True, True]
    torch.use_deterministic_algorithms(False)
    assert runs[0] == runs[1]


def test_rerun_finished_trains_a_finished_config_again_instead_of_skipping(store_root, client):
    from mlflow.entities import RunTag

    uri = f"sqlite:///{store_root}/mlflow.db"
    experiment_id = client.create_experiment("rerun-finished-plan")
    done = client.create_run(experiment_id, tags={"sweeplab.config_hash": "abc"})
    client.log_metric(done.info.run_id, "test_acc", 0.5)
    client.set_terminated(done.info.run_id, "FINISHED")
    other = client.create_run(experiment_id, tags={"sweeplab.config_hash": "other"})
    client.log_batch(other.info.run_id, tags=[RunTag("x", "y")])
    skip = plan_job(uri, experiment_id, "abc", rerun_finished=False)
    assert (skip.action, skip.run_id, skip.metrics) == ("skip", done.info.run_id, {"test_acc": 0.5})
    assert plan_job(uri, experiment_id, "abc", rerun_finished=True).action == "run"
    assert plan_job(uri, experiment_id, "new", rerun_finished=False).action == "run"
