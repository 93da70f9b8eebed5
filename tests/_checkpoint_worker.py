"""Run by tests/test_crash_safety.py: train a toy network, checkpointing every epoch, resuming if it can.

Usage: python _checkpoint_worker.py CKPT EPOCHS [--straight]   (--straight: no checkpoints, no resume)
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gpu_backprop as gb


def main() -> None:
    ckpt, epochs = Path(sys.argv[1]), int(sys.argv[2])
    straight = "--straight" in sys.argv
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 8)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    net = gb.MLP([8, 16, 3], backend="numpy", seed=1, dropout=0.1)
    opt = gb.SGD(net, lr=0.05, momentum=0.9)
    gb.fit(net, opt, X, y, epochs=epochs, batch_size=8, seed=2, progress=False,
           checkpoint=None if straight else ckpt, resume=ckpt if ckpt.exists() and not straight else None)
    np.save(ckpt.with_name("final.npy"), net.flat_params)


if __name__ == "__main__":
    main()
