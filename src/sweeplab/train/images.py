"""Image files as a model's input: decoding (16-bit grey scaled, not clamped), resizing, the
one-line error for a file PIL cannot read, and image folders (root/<class>/*) read through
torchvision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import pil_to_tensor

from sweeplab.train.splits import DatasetError


class UnreadableImage(DatasetError):
    """An image file PIL cannot decode. One line wherever it surfaces: a DataLoader worker's
    error reaches the training process as this type built from a message with the worker's
    traceback in it, whose last line is this error's own text."""

    def __init__(self, message: str):
        marker = f"{type(self).__name__}: "
        last = message.rstrip().splitlines()[-1] if message.strip() else message
        super().__init__(
            last.split(marker, 1)[1] if "\n" in message and marker in last else message
        )


class ImageFile:
    """How an image file becomes a model's input, in training (image folders) and in
    `sweeplab-predict`: decoded by PIL into the dataset's channels, its short side resized to
    `image_size` and centre-cropped square; uint8 C x H x W. (PIL's "L" keeps a grey file's
    values exactly; torchvision's Grayscale of the RGB image rounds some of them down by 1.)"""

    def __init__(self, in_channels: int, image_size: int):
        self.mode, self.size = ("L" if in_channels == 1 else "RGB"), image_size
        self.fit = v2.Compose([v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)])

    def __call__(self, path: str | Path) -> torch.Tensor:
        try:
            with Image.open(path) as image:
                if image.mode in WIDE_GREY:
                    image = _to_8_bits(image)
                x = pil_to_tensor(image.convert(self.mode))
        # PIL: not an image, truncated, or a decompression bomb (over twice its pixel limit)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            cause = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
            raise UnreadableImage(
                f"{path}: not a readable image ({cause}); remove or replace the file"
            ) from None
        return x if x.shape[-2:] == (self.size, self.size) else self.fit(x)


# PIL's modes for 16-bit grey files (PNG, TIFF): convert("L") would clamp every value above 255
# to 255 (a medical or microscope image reads as nearly all white); they are scaled instead.
WIDE_GREY = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def _to_8_bits(image):
    """A 16-bit grey image as 8-bit grey: value * 255 / 65535, rounded."""
    wide = np.asarray(image).astype(np.float64)
    return Image.fromarray(np.clip(np.rint(wide * (255 / 65535)), 0, 255).astype(np.uint8), "L")


def read_image_folders(base: Path, read_file: ImageFile) -> tuple[Path, Any, dict[str, Any]]:
    """(train folder, its ImageFolder, {"val"/"test": ImageFolder} for those that exist)."""

    def read(folder: Path) -> ImageFolder:
        try:
            return ImageFolder(str(folder), loader=read_file)
        except (FileNotFoundError, OSError) as e:
            raise DatasetError(f"image folder {folder}: {e}") from None

    train_dir = base / "train" if (base / "train").is_dir() else base
    if not train_dir.is_dir():
        raise DatasetError(f"dataset.root: image folder {base} does not exist")
    full = read(train_dir)
    if len(full.classes) < 2:
        raise DatasetError(f"image folder {train_dir} has {len(full.classes)} class(es); need 2+")
    splits = {}
    for split in ("val", "test"):
        if (base / split).is_dir():
            splits[split] = read(base / split)
            if splits[split].classes != full.classes:
                raise DatasetError(
                    f"{base / split} has classes {splits[split].classes}, "
                    f"but {train_dir} has {full.classes}"
                )
    return train_dir, full, splits
