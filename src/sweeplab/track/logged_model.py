"""The best checkpoint as an MLflow 3 logged model, linked to its run, and how to load it back.

The logged model takes raw images (uint8, N x C x H x W, pixel values as read from files) and
returns logits: the dataset's normalisation and the memory layout the weights were trained in
are part of it, so using it needs nothing from sweeplab, only torch and mlflow.

Format: "pt2" (torch.export). It holds the traced graph and the weights, and loading it runs no
pickled code; MLflow's other format, "pickle", executes whatever the file says on load and needs
sweeplab's classes importable. The graph is exported from a CPU float32 copy of the bare module
(never the DDP or torch.compile wrapper, which cannot be exported or loaded elsewhere), with a
dynamic batch dimension. `checkpoints/best.pt` stays the source for resume and re-runs.

Exporting is most of what logging a model costs (simple_cnn 0.25 s, resnet18 0.7 s per job).
Each job exports its own: MLflow's log_model traces inside itself and takes no exported
program, and reusing one job's graph for the next meant patching `torch.export.export`
(docs/benchmarks.md, issue 21, has the figures).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import mlflow.pytorch
import numpy as np
import torch
from mlflow.entities import LoggedModelOutput
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, get_model_info
from mlflow.types import Schema, TensorSpec
from omegaconf import OmegaConf
from torch import nn

from sweeplab.config.resolvers import launch_dir
from sweeplab.errors import SweeplabError
from sweeplab.track import tracking
from sweeplab.track.params import flatten_config
from sweeplab.track.tags import MODEL_ERROR
from sweeplab.train.augment import Normalize

log = logging.getLogger("sweeplab")

METADATA_KEY = "sweeplab"  # MLmodel metadata: what is needed to read images for the model
EXAMPLE_SIZE = 2  # images in the input example (> 1, or export fixes the batch size to 1)


class ModelLookupError(SweeplabError, LookupError):
    """A model URI, run id or registered name that does not lead to a logged model."""


class ImageClassifier(nn.Module):
    """uint8 images -> logits: the trained network behind the dataset's normalisation (the
    training loop's own Normalize module)."""

    def __init__(
        self, net: nn.Module, mean: Sequence[float], std: Sequence[float], channels_last: bool
    ):
        super().__init__()
        self.net, self.normalize = net, Normalize(mean, std, channels_last=channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))


def serving_module(model: nn.Module, mean, std, channels_last: bool) -> ImageClassifier:
    """A CPU float32 eval-mode copy of the bare model behind its normalisation. Its weights are
    stored contiguous (torch.export saves channels-last weights only with a warning); inputs
    are still made channels-last when training used that, so the same kernels run."""
    net = copy.deepcopy(model).to("cpu", torch.float32, memory_format=torch.contiguous_format)
    net.eval()
    return ImageClassifier(net, mean, std, channels_last).eval()


def signature(in_channels: int, image_size: int, num_classes: int):
    """Tensor in (uint8 N x C x H x W), tensor out (float32 logits N x classes)."""

    images = TensorSpec(np.dtype(np.uint8), (-1, in_channels, image_size, image_size))
    logits = TensorSpec(np.dtype(np.float32), (-1, num_classes))
    return ModelSignature(inputs=Schema([images]), outputs=Schema([logits]))


def pip_requirements() -> list[str]:
    """What loading a pt2 model needs: torch (mlflow adds itself). The local version label
    (+cu130) is dropped so the pin installs from PyPI."""
    return [f"torch=={torch.__version__.split('+')[0]}"]


def log_best_model(
    uri: str,
    run,
    name: str,
    module: ImageClassifier,
    example: torch.Tensor,
    metadata: dict[str, Any],
    params: dict[str, str],
    step: int,
) -> str | None:
    """Log `module` as the run's logged model, an output of the run at `step` (the best
    epoch); returns its model id. The caller links the final metrics to it (MLflow's own
    linking would also attach every epoch metric of that step). A model that cannot be
    exported is marked FAILED with a warning: the training it came from stands."""

    client = run.client
    # created here, not by log_model: it would take the process's active experiment
    model = client.create_logged_model(
        run.experiment_id,
        name=name,
        source_run_id=run.run_id,
        params=params,
        model_type="image-classifier",
    )
    c, size = example.shape[1], example.shape[-1]
    num_classes = int(metadata["num_classes"])
    try:
        with tracking.fluent_uri(uri):
            mlflow.pytorch.log_model(
                module,
                name=name,
                model_id=model.model_id,
                input_example=example.cpu().numpy(),
                signature=signature(c, size, num_classes),
                pip_requirements=pip_requirements(),
                metadata={METADATA_KEY: metadata},
                serialization_format="pt2",
                validate_serving_input=False,
            )
        client.log_outputs(run.run_id, [LoggedModelOutput(model.model_id, step)])
    except Exception as e:
        client.finalize_logged_model(model.model_id, "FAILED")
        run.set_tags({MODEL_ERROR: f"{type(e).__name__}: {e}"[:500]})
        log.warning("could not log the best model as an MLflow model: %s: %s", type(e).__name__, e)
        return None
    return model.model_id


def log_run_model(cfg, model: nn.Module, data, best_epoch: int, best_acc: float, run) -> str | None:
    """The best weights (in `model`) of a training run as its MLflow model; the metadata says
    how to feed it and how it was made."""
    d = cfg.dataset
    module = serving_module(model, data.mean, data.std, cfg.trainer.channels_last)
    metadata = {
        "dataset": str(d.name),
        "classes": list(data.classes),
        "num_classes": len(data.classes),
        "in_channels": int(d.in_channels),
        "image_size": int(d.image_size),
        "input": "uint8 images, N x C x H x W, pixel values 0-255 (not normalised)",
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "best_epoch": best_epoch,
        "best_val_acc": best_acc,
        "run_id": run.run_id,
    }
    name = str(cfg.model.get("name") or cfg.model._target_.rsplit(".", 1)[-1])  # the UI's label
    return log_best_model(
        cfg.tracking.uri,
        run,
        name,
        module,
        input_example(data.val),
        metadata,
        flatten_config(cfg, launch_dir()),
        step=best_epoch,
    )


def input_example(split) -> torch.Tensor:
    """EXAMPLE_SIZE images of `split`, the first ones repeated when it holds fewer: an example
    batch of 1 would export a graph that only takes batches of 1."""
    images = split.head(EXAMPLE_SIZE)
    return images[torch.arange(EXAMPLE_SIZE) % len(images)]


# --- finding and loading a logged model ------------------------------------------------------


def model_uri(client, target: str) -> str:
    """`models:/...` as given; a run id -> the model that run logged (`models:/<model id>`)."""

    if target.startswith("models:/"):
        return target
    try:
        run = client.get_run(target)
    except MlflowException:
        raise ModelLookupError(
            f"{target!r} is neither a model URI (models:/NAME@best, models:/NAME/VERSION, "
            "models:/<model id>) nor a run id in this tracking store"
        ) from None
    outputs = run.outputs.model_outputs if run.outputs else []
    if not outputs:
        raise ModelLookupError(
            f"run {target} logged no model (trained with tracking.log_model=false, pruned by a "
            "search, or by a sweeplab before MLflow models)"
        )
    return f"models:/{outputs[-1].model_id}"


PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


@contextmanager
def pickle_refused() -> Iterator[None]:
    """MLflow loads a `model.pth` (pickle: runs whatever code the file holds) in preference to
    `model.pt2` when both are in the model's folder, and allows pickle by default. sweeplab
    logs pt2 only, so while it loads a model pickle is off: a planted model.pth is refused."""
    before = os.environ.get(PICKLE_ENV)
    os.environ[PICKLE_ENV] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PICKLE_ENV, None)
        else:
            os.environ[PICKLE_ENV] = before


def load(uri: str, tracking_uri: str) -> tuple[nn.Module, dict[str, Any]]:
    """(the model, its sweeplab metadata) through MLflow; never by unpickling."""

    with tracking.fluent_uri(tracking_uri), pickle_refused():
        try:
            meta = (get_model_info(uri).metadata or {}).get(METADATA_KEY)
            if meta is None:
                raise ModelLookupError(f"{uri} was not logged by sweeplab (no image metadata)")
            return mlflow.pytorch.load_model(uri), meta
        except MlflowException as e:
            raise ModelLookupError(f"{uri}: {str(e).splitlines()[0]}") from None
