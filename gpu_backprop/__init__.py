"""gpu_backprop: backpropagation in matrix form over whole batches, on NumPy or CuPy.

    import gpu_backprop as gb
    net = gb.MLP([784, 256, 256, 10], activation="relu", backend="auto", seed=0)
    opt = gb.SGD(net, lr=0.1, momentum=0.9)
    loss, grads = net.loss_and_grads(X, y)
    opt.step()
"""

from __future__ import annotations

from .backend import (
    Backend,
    BackendError,
    backend_info,
    get_array_module,
    get_backend,
    to_device,
    to_numpy,
)
from .gradcheck import GradcheckError, GradcheckResult, gradcheck
from .layers import (
    Activation,
    BatchNorm,
    Dense,
    Dropout,
    Identity,
    Layer,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Tanh,
)
from .losses import Loss, MeanSquaredError, SigmoidBinaryCrossEntropy, SoftmaxCrossEntropy
from .network import MLP, Sequential
from .optim import SGD, Adam, AdamW, Optimizer
from .trainer import DeviceMemoryError, History, evaluate, fit
from .checkpoint import CheckpointError, load_model
from .export import export_weights
from .data import load_dataset
from . import checkpoint, data, kernels, trainer  # noqa: E402 - submodules as attributes

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "SGD",
    "Activation",
    "Adam",
    "AdamW",
    "Backend",
    "BackendError",
    "BatchNorm",
    "CheckpointError",
    "Dense",
    "DeviceMemoryError",
    "Dropout",
    "GradcheckError",
    "GradcheckResult",
    "Identity",
    "Layer",
    "LeakyReLU",
    "Loss",
    "MeanSquaredError",
    "Optimizer",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "SigmoidBinaryCrossEntropy",
    "SoftmaxCrossEntropy",
    "Tanh",
    "backend_info",
    "export_weights",
    "get_array_module",
    "get_backend",
    "gradcheck",
    "fit",
    "load_dataset",
    "load_model",
    "evaluate",
    "History",
    "to_device",
    "to_numpy",
]
