"""Weights for other frameworks: a safetensors file that PyTorch loads without gpu_backprop.

    gb.export_weights(net, "model.safetensors")

    # elsewhere, with only torch and safetensors installed:
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    model.load_state_dict(safetensors.torch.load_file("model.safetensors"))

The names are those of a ``torch.nn.Sequential`` holding the same layers in
the same order: ``layers[i]`` of ours is module ``i`` of theirs. A
:class:`~gpu_backprop.Dense` layer ``i`` becomes ``i.weight`` of shape
``(out, in)`` (ours is ``(in, out)``: ``Z = X W + b``, theirs ``Z = X Wᵀ + b``,
so the matrix is written transposed) and ``i.bias``; a
:class:`~gpu_backprop.BatchNorm` becomes ``BatchNorm1d``'s ``i.weight``
(γ), ``i.bias`` (β), ``i.running_mean``, ``i.running_var`` and
``i.num_batches_tracked`` (its ``eps`` and ``momentum`` are in the header's
config: build ``BatchNorm1d`` with them); activations and dropout hold nothing.
A layer of the user's own kind is refused. The
loss is not a module: apply softmax (or sigmoid) to the outputs for
probabilities.

The safetensors format: 8 bytes, the little-endian length ``H`` of a JSON
header; the header ``{name: {"dtype": "F32", "shape": [...], "data_offsets":
[begin, end]}, "__metadata__": {...}}``, padded with spaces to a multiple of
8 bytes; then the tensors' bytes, little-endian and row-major, one after
another, at those offsets from the end of the header.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write_bytes
from .backend import to_numpy
from .layers import Activation, BatchNorm, Dense, Dropout
from .network import Sequential

__all__ = ["export_weights", "torch_state_dict"]

_DTYPES = {"float32": "F32", "float64": "F64", "int64": "I64"}


def torch_state_dict(net: Sequential) -> dict[str, np.ndarray]:
    """The network's weights as NumPy arrays, under the names and in the layouts of a ``torch.nn.Sequential``."""
    if not isinstance(net, Sequential):
        raise TypeError(f"export takes a gpu_backprop network, got {type(net).__name__}")
    out: dict[str, np.ndarray] = {}
    for i, layer in enumerate(net.layers):
        if type(layer) is Dense:  # (a subclass of ours computes something else: its counterpart is the user's)
            out[f"{i}.weight"] = to_numpy(layer.params["W"]).T.copy()
            out[f"{i}.bias"] = to_numpy(layer.params["b"]).copy()
        elif type(layer) is BatchNorm:
            n = layer.num_features
            out[f"{i}.weight"] = to_numpy(layer.params["gamma"]).copy()
            out[f"{i}.bias"] = to_numpy(layer.params["beta"]).copy()
            running = layer.state()
            out[f"{i}.running_mean"] = (to_numpy(running["running_mean"]).astype(net.dtype) if running
                                        else np.zeros(n, net.dtype))
            out[f"{i}.running_var"] = (to_numpy(running["running_var"]).astype(net.dtype) if running
                                       else np.ones(n, net.dtype))
            out[f"{i}.num_batches_tracked"] = np.array(0, dtype=np.int64)  # not tracked here; torch's default
        elif not isinstance(layer, (Activation, Dropout)):
            raise TypeError(f"layers[{i}] is a {type(layer).__name__}, which has no PyTorch counterpart to export to")
    return out


def export_weights(net: Sequential, path: str | os.PathLike[str]) -> Path:
    """Write ``net``'s weights to ``path`` as a safetensors file that a ``torch.nn.Sequential`` loads.

    See the module's docstring for the names and layouts. The file is written
    atomically; ``path`` is returned as a :class:`~pathlib.Path`.
    """
    tensors = torch_state_dict(net)
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "gpu_backprop_config": json.dumps(net.config())}}
    offset = 0
    for name, a in tensors.items():
        header[name] = {"dtype": _DTYPES[a.dtype.name], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    data = b"".join(np.asarray(a, dtype=a.dtype.newbyteorder("<"), order="C").tobytes() for a in tensors.values())
    path = Path(path)
    atomic_write_bytes(path, struct.pack("<Q", len(text)) + text + data)
    return path
