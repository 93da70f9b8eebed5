"""gpu_backprop: backpropagation in matrix form over whole batches, on NumPy or CuPy.

    import gpu_backprop as gb
    net = gb.MLP([784, 256, 256, 10], activation="relu", backend="auto", seed=0)
    opt = gb.SGD(net, lr=0.1, momentum=0.9)
    history = gb.fit(net, opt, X, y, epochs=5, batch_size=128, validation_fraction=0.1)
    loss, accuracy = gb.evaluate(net, X_test, y_test)
"""

from __future__ import annotations

from . import checkpoint, data, kernels, trainer
from .backend import Backend, BackendError, get_array_module, get_backend, to_device, to_numpy
from .checkpoint import CheckpointError, load_model
from .data import load_dataset
from .devices import backend_info
from .export import export_weights
from .gradcheck import GradcheckError, GradcheckResult, gradcheck
from .layers import Activation, BatchNorm, Dense, Dropout, Identity, Layer, LeakyReLU, ReLU, Sigmoid, Tanh
from .losses import Loss, MeanSquaredError, SigmoidBinaryCrossEntropy, SoftmaxCrossEntropy
from .network import MLP, Sequential
from .optim import SGD, Adam, AdamW, Optimizer
from .trainer import DeviceMemoryError, FitConfig, History, StopReason, TrainingDiverged, evaluate, fit

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
    "FitConfig",
    "GradcheckError",
    "GradcheckResult",
    "History",
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
    "StopReason",
    "Tanh",
    "TrainingDiverged",
    "backend_info",
    "checkpoint",
    "data",
    "evaluate",
    "export_weights",
    "fit",
    "get_array_module",
    "get_backend",
    "gradcheck",
    "kernels",
    "load_dataset",
    "load_model",
    "to_device",
    "to_numpy",
    "trainer",
]
