"""Kill a training process (SIGKILL) at random moments while it writes checkpoints: nothing is lost.

After every kill the latest checkpoint on disk must load; after all of them,
resuming to the end must give exactly the weights of a run never interrupted.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gpu_backprop as gb
from gpu_backprop.checkpoint import read_checkpoint

WORKER = Path(__file__).with_name("_checkpoint_worker.py")
EPOCHS = 1000
KILLS = 10


def _start(ckpt: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(WORKER), str(ckpt), str(EPOCHS)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_while_checkpointing_never_loses_the_latest_checkpoint(tmp_path: Path) -> None:
    straight = tmp_path / "straight" / "ckpt.npz"
    straight.parent.mkdir()
    assert subprocess.run([sys.executable, str(WORKER), str(straight), str(EPOCHS), "--straight"],
                          timeout=300).returncode == 0
    expected = np.load(straight.with_name("final.npy"))

    ckpt = tmp_path / "killed" / "ckpt.npz"
    ckpt.parent.mkdir()
    rnd = random.Random(0)
    epochs_seen = []
    for _ in range(KILLS):
        before = ckpt.stat().st_mtime_ns if ckpt.exists() else None
        proc = _start(ckpt)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:  # wait until it checkpoints once more
            if ckpt.exists() and ckpt.stat().st_mtime_ns != before:
                break
            time.sleep(0.01)
        time.sleep(rnd.uniform(0.0, 0.25))  # then kill it at a random moment of its training
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if ckpt.exists():
            meta, _ = read_checkpoint(ckpt)  # raises if the file were half-written or corrupt
            epochs_seen.append(meta["state"]["epoch"])
            twin = gb.MLP([8, 16, 3], backend="numpy", seed=1, dropout=0.1)
            gb.checkpoint.load_checkpoint(ckpt, twin, gb.SGD(twin, lr=0.05, momentum=0.9))
    assert epochs_seen and epochs_seen == sorted(epochs_seen)  # progress is never lost
    assert epochs_seen[-1] < EPOCHS, "the kills came too late to interrupt anything"
    proc = _start(ckpt)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    np.testing.assert_array_equal(np.load(ckpt.with_name("final.npy")), expected)
    leftovers = [p.name for p in ckpt.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == [], leftovers
