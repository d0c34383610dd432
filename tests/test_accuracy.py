"""Real learning on real data: MNIST to >= 97 % test accuracy (slow; still run in CI)."""

from __future__ import annotations

import pytest

from sweeplab.job import train


@pytest.mark.slow
def test_mnist_reaches_97_percent_test_accuracy(small_cfg, client, data_dir):
    cfg = small_cfg(
        "dataset=mnist",
        "model=simple_cnn",
        "optimizer=adam",
        "augmentation=none",
        "trainer.epochs=2",
        "trainer.batch_size=128",
    )
    result = train(cfg)
    assert result["test_acc"] >= 0.97, result["test_acc"]
    run = client.get_run(result["run_id"])
    assert run.data.metrics["test_acc"] == result["test_acc"]
    # the test set is scored with the checkpoint picked on validation
    assert result["best_epoch"] == max(result["history"], key=lambda h: h["val_acc"])["epoch"]
