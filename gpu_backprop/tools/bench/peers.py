"""The steps that are timed: ours, as ``gpu_backprop.fit`` runs it, and the peers' (PyTorch, scikit-learn).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ... import kernels
from ...backend import Backend
from ...devices import tf32_enabled
from ...network import MLP
from ...optim import SGD
from .timing import Runner

N_TRAIN = 60_000  # rows of the timed data set (MNIST's training set)
LR, MOMENTUM = 0.01, 0.9  # the timed optimiser: SGD with momentum


def random_data(n: int, d: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random bytes of the training set's shape (60,000 × 784 for MNIST) and random labels."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, d), dtype=np.uint8), rng.integers(0, classes, n)


class OurStep:
    """gpu_backprop's step as :func:`gpu_backprop.fit` runs it: batch from the device-resident data, update.

    ``opt.train_step(Xb, yb)`` is ``net.train_step_grads(Xb, yb)`` then ``opt.step()``; for a single
    sample on NumPy with SciPy present it fuses the rank-1 update (same weights, tested).
    """

    def __init__(self, be: Backend, sizes: list[int], batch: int) -> None:
        from ...batches import Batches

        xp = be.xp
        Xh, yh = random_data(max(N_TRAIN, batch), sizes[0], sizes[-1])
        self.X, self.y = xp.asarray(Xh), xp.asarray(yh)
        self.net = MLP(sizes, activation="relu", backend=be, seed=0)
        self.opt = SGD(self.net, lr=LR, momentum=MOMENTUM)
        self.batches = Batches(self.net, self.X, self.y)
        self.order = kernels.random_permutation(xp, self.X.shape[0], 0, 0)
        self.batch, self.i = batch, 0

    def next_batch(self) -> tuple[Any, Any]:
        """The next batch, gathered and scaled on the device (the whole set for a full batch)."""
        if self.batch == self.X.shape[0]:  # full batch: the whole set, scaled once (as fit does)
            return self.batches.full(), self.batches.y
        i = self.i if self.i + self.batch <= self.X.shape[0] else 0
        rows = self.order[i:i + self.batch]
        self.i = i + self.batch
        return self.batches.get(rows), self.batches.y[rows]

    def __call__(self) -> None:
        self.opt.train_step(*self.next_batch())


def ours(be: Backend, sizes: list[int], batch: int) -> Runner:
    """A runner for gpu_backprop's training step (see :class:`OurStep`)."""
    return Runner(OurStep(be, sizes, batch), be.synchronize, be.xp.cuda if be.name == "cupy" else None,
                  context=lambda: kernels.blas_threads(be, batch),  # as gb.fit does
                  precision="tf32" if be.name == "cupy" and tf32_enabled() else "fp32")


class TorchCudaEvents:
    """PyTorch's CUDA events behind CuPy's interface (``Event()``, ``get_elapsed_time``), for :class:`Runner`.

    PyTorch records no time unless asked: ``torch.cuda.Event(enable_timing=True)``, then
    ``start.elapsed_time(end)`` in milliseconds (there is no ``torch.cuda.get_elapsed_time``).
    CuPy's ``cupy.cuda.Event()`` times by default and ``cupy.cuda.get_elapsed_time(start, end)``
    gives milliseconds too.
    """

    def __init__(self, torch: Any) -> None:
        self._torch = torch

    def Event(self) -> Any:
        return self._torch.cuda.Event(enable_timing=True)

    @staticmethod
    def get_elapsed_time(start: Any, stop: Any) -> float:
        return float(start.elapsed_time(stop))


@contextlib.contextmanager
def torch_precision(torch: Any, tf32: bool) -> Iterator[None]:
    """PyTorch's float32 products on CUDA with TF32 or not (cuBLAS and cuDNN) within; the settings before after.

    ``torch.backends.cuda.matmul.allow_tf32`` (False by default) and ``torch.backends.cudnn.allow_tf32``
    (True by default): both set, so that the peer runs at the precision ours runs.
    """
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


def torch_peer(device: str, sizes: list[int], batch: int, tf32: bool = False, compiled: bool = False) -> Runner | None:
    """The same model, data handling and optimiser in PyTorch, eager or compiled (None if torch is missing).

    On CUDA the blocks are timed with CUDA events, and ``tf32`` lets PyTorch's float32 products
    use TF32 during the peer's blocks (restored after each); on a CPU ``tf32`` changes nothing.
    ``compiled``: the model through ``torch.compile``, compiled here by three warm-up steps.
    """
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    dev = torch.device(device)
    layers: list[Any] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    forward = torch.compile(model) if compiled else model
    lossf = torch.nn.CrossEntropyLoss()
    Xh, yh = random_data(max(N_TRAIN, batch), sizes[0], sizes[-1])
    X, y = torch.from_numpy(Xh).to(dev), torch.from_numpy(yh).to(dev)
    order = torch.randperm(X.shape[0], device=dev)
    whole = X.float().mul_(1.0 / 255) if batch == X.shape[0] else None  # full batch: scaled once, like ours
    state = {"i": 0}

    def step() -> None:
        if whole is not None:
            xb, yb = whole, y
        else:
            i = state["i"] if state["i"] + batch <= X.shape[0] else 0
            rows = order[i:i + batch]
            state["i"] = i + batch
            xb, yb = X.index_select(0, rows).float().mul_(1.0 / 255), y.index_select(0, rows)
        opt.zero_grad(set_to_none=True)
        lossf(forward(xb), yb).backward()
        opt.step()

    if compiled:
        with torch_precision(torch, tf32):
            for _ in range(3):  # compiles the forward and the backward
                step()

    if dev.type != "cuda":
        return Runner(step, lambda: None)
    return Runner(step, torch.cuda.synchronize, TorchCudaEvents(torch), context=lambda: torch_precision(torch, tf32),
                  precision="tf32" if tf32 else "fp32")


def sklearn_peer(sizes: list[int], batch: int, budget: float) -> Runner | None:
    """scikit-learn's MLPClassifier (SGD with momentum); one call is a ``partial_fit`` pass over k batches.

    ``partial_fit`` checks its input, shuffles and runs ``k`` mini-batch steps of ``batch_size``
    rows on data already scaled to floats; ``k`` is chosen so one call fills the block budget,
    which spreads the per-call overhead as thinly as the framework allows.
    """
    try:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
    except ImportError:
        return None
    Xh, yh = random_data(max(N_TRAIN, batch), sizes[0], sizes[-1])
    X = Xh.astype(np.float32) / 255
    clf = MLPClassifier(hidden_layer_sizes=tuple(sizes[1:-1]), activation="relu", solver="sgd",
                        learning_rate_init=LR, momentum=MOMENTUM, nesterovs_momentum=False, batch_size=batch,
                        random_state=0)
    warnings.simplefilter("ignore", ConvergenceWarning)
    clf.partial_fit(X[:batch], yh[:batch], classes=np.arange(sizes[-1]))
    t0 = time.perf_counter()
    clf.partial_fit(X[:batch], yh[:batch])
    k = max(1, min(N_TRAIN // batch, int(budget / max(time.perf_counter() - t0, 1e-6))))
    chunk = X[: k * batch], yh[: k * batch]
    return Runner(lambda: clf.partial_fit(*chunk), lambda: None, samples_per_call=k)  # k steps per call
