"""Classify image files with a logged model: `sweeplab-predict MODEL PATH... [--out preds.csv]`.

MODEL is `models:/NAME@best`, `models:/NAME/VERSION`, `models:/<model id>` or a run id (the
model that run logged). PATHs are image files or folders (searched recursively). Each image is
read exactly as image folders are read in training (`images.ImageFile`: the model's channels, the
short side resized to the model's image size, centre-cropped) and given to the model as uint8:
the model normalises it itself. Writes one CSV row per image: file, class, probability.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from sweeplab.errors import SweeplabError
from sweeplab.track import logged_model, tracking
from sweeplab.train.images import ImageFile, UnreadableImage

log = logging.getLogger("sweeplab")

# What image folders hold in training: the files torchvision's ImageFolder reads.
IMAGE_SUFFIXES = frozenset(IMG_EXTENSIONS)


class PredictError(SweeplabError):
    """No images where the command points, or none of them readable."""


def image_files(paths: list[str]) -> list[Path]:
    """The image files named, and those under the folders named (sorted, recursive)."""
    found: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            found += sorted(p for p in given.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif given.is_file():
            found.append(given)
        else:
            raise PredictError(f"{given}: no such file or folder")
    if not found:
        raise PredictError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {paths}")
    return found


def predict(
    model, meta: dict, files: list[Path], batch_size: int = 256
) -> Iterator[tuple[Path, str | None, float | str]]:
    """(file, predicted class, its probability) per file; (file, None, why) for a file that
    cannot be read, and the rest go on."""
    classes = meta["classes"]
    read = ImageFile(int(meta["in_channels"]), int(meta["image_size"]))
    for start in range(0, len(files), batch_size):
        batch, images = [], []
        for path in files[start : start + batch_size]:
            try:
                images.append(read(path))
                batch.append(path)
            except UnreadableImage as e:  # not an image, truncated, a decompression bomb
                yield path, None, str(e)
        if not images:
            continue
        with torch.no_grad():
            probs = torch.softmax(model(torch.stack(images)), dim=1)
        p, idx = probs.max(dim=1)
        for path, prob, i in zip(batch, p.tolist(), idx.tolist(), strict=True):
            yield path, classes[i], prob


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sweeplab-predict", description="Classify images with a model logged by sweeplab."
    )
    parser.add_argument(
        "model", help="models:/NAME@best, models:/NAME/VERSION, models:/<model id>, or a run id"
    )
    parser.add_argument("paths", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--out", type=Path, help="CSV file to write (default: standard output)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or ./mlruns")
    args = parser.parse_args(argv)
    uri = args.tracking_uri or tracking.default_uri()
    try:
        if args.batch_size < 1:
            raise PredictError(f"--batch-size {args.batch_size}: give a number >= 1")
        if args.out and not args.out.parent.is_dir():
            raise PredictError(f"--out {args.out}: the folder {args.out.parent} does not exist")
        files = image_files(args.paths)
        source = logged_model.model_uri(tracking.client(uri), args.model)
        model, meta = logged_model.load(source, uri)
    except SweeplabError as e:
        print(f"sweeplab-predict: error: {e}", file=sys.stderr)
        return 2
    out = args.out.open("w", newline="") if args.out else sys.stdout
    failed, done = [], 0
    try:
        writer = csv.writer(out)
        writer.writerow(["file", "class", "probability"])
        for path, label, prob in predict(model, meta, files, args.batch_size):
            if label is None:
                failed.append(prob)
                continue
            writer.writerow([str(path), label, f"{prob:.6f}"])
            done += 1
            if args.out and done % (20 * args.batch_size) == 0:
                print(f"{done}/{len(files)} images", file=sys.stderr, flush=True)
    finally:
        if args.out:
            out.close()
    where = f" -> {args.out}" if args.out else ""
    print(f"{source}: {done} images classified{where}", file=sys.stderr)
    for line in failed:
        print(f"sweeplab-predict: unreadable: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
