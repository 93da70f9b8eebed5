"""Gradient checking by central differences in float64.

``gradcheck(net, X, y)`` compares the gradients of a network's loss with
``(L(θ + εe) − L(θ − εe)) / 2ε``; ``gradcheck(layer, X)`` does the same for a
single layer under the scalar objective ``L = Σ layer(X) ⊙ R`` with a fixed
random ``R``, checking ``dX`` too. Small tensors are checked element by
element ("full"); large ones along random directions ("direction"), where
``⟨∇L, u⟩`` must match the directional difference.

It also asserts two invariants (after PyTorch's gradcheck): running backward
twice gives the same gradients, and a zero upstream gradient gives zero
gradients. A failure raises :class:`GradcheckError` with the inputs, the
direction and both gradients in the message.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import get_array_module, to_numpy
from .layers import Dense, Layer
from .network import Sequential
from .state import copied_state, load_layer_state

__all__ = ["GradcheckError", "GradcheckResult", "gradcheck"]

Array = Any


class GradcheckError(AssertionError):
    """Analytic and numerical gradients disagree (or an invariant fails)."""


@dataclass(frozen=True)
class GradcheckResult:
    """What was checked and the worst disagreement found."""

    checked: int  #: number of scalar comparisons made
    max_abs_error: float
    max_rel_error: float


def _fmt(a: Any, limit: int = 8) -> str:
    a = np.asarray(to_numpy(a)).ravel()
    body = np.array2string(a[:limit], precision=6, separator=", ")
    return body + (f" ... ({a.size} values)" if a.size > limit else "")


class _Checker:
    """Accumulates comparisons and builds the failure message."""

    def __init__(self, atol: float, rtol: float, what: str, inputs: str) -> None:
        self.atol, self.rtol, self.what, self.inputs = atol, rtol, what, inputs
        self.checked, self.max_abs, self.max_rel = 0, 0.0, 0.0

    def compare(self, name: str, analytic: np.ndarray, numeric: np.ndarray, direction: Any = None) -> None:
        analytic = np.asarray(analytic, dtype=np.float64)
        numeric = np.asarray(numeric, dtype=np.float64)
        err = np.abs(analytic - numeric)
        rel = err / np.maximum(np.abs(numeric), 1e-12)
        self.checked += analytic.size
        if analytic.size:
            self.max_abs = max(self.max_abs, float(err.max()))
            self.max_rel = max(self.max_rel, float(np.where(err > self.atol, rel, 0.0).max()))
        bad = ~(err <= self.atol + self.rtol * np.abs(numeric))
        if bad.any():
            k = int(np.argmax(np.where(bad, err, -1.0)))
            msg = [
                (f"gradcheck failed for {self.what}, {name}: {int(bad.sum())} of {analytic.size} values differ "
                 f"(worst at flat index {k}: analytic {analytic.ravel()[k]:.8g}, numerical {numeric.ravel()[k]:.8g}; "
                 f"atol={self.atol:g}, rtol={self.rtol:g})"),
                f"  inputs: {self.inputs}",
            ]
            if direction is not None:
                msg.append(f"  direction: {_fmt(direction)}")
            msg += [f"  analytic:  {_fmt(analytic)}", f"  numerical: {_fmt(numeric)}"]
            raise GradcheckError("\n".join(msg))

    def result(self) -> GradcheckResult:
        return GradcheckResult(self.checked, self.max_abs, self.max_rel)


def _numerical(f: Callable[[], float], x: Array, eps: float, mode: str, directions: int,
               rng: np.random.Generator) -> tuple[list[tuple[str, Any, np.ndarray]], str]:
    """Numerical derivatives of ``f`` w.r.t. array ``x`` (perturbed in place, then restored bit for bit)."""
    flat = x.reshape(-1)
    original = flat.copy()
    try:
        if mode == "full" or (mode == "auto" and flat.size <= 512):
            num = np.empty(flat.size)
            for i in range(flat.size):
                old = float(flat[i])
                flat[i] = old + eps
                fp = f()
                flat[i] = old - eps
                fm = f()
                flat[i] = old
                num[i] = (fp - fm) / (2 * eps)
            return [("full", None, num)], "full"
        xp = get_array_module(x)
        out = []
        for _ in range(directions):
            u_host = rng.standard_normal(flat.size)
            u_host /= np.linalg.norm(u_host)
            u = xp.asarray(u_host, dtype=x.dtype)
            flat[...] = original + eps * u  # (from the saved x each time: x + εu − 2εu + εu need not be x)
            fp = f()
            flat[...] = original - eps * u
            fm = f()
            out.append(("direction", u_host, np.array((fp - fm) / (2 * eps))))
        return out, "direction"
    finally:  # on an error in f too
        flat[...] = original


def _project(analytic: np.ndarray, kind: str, u: np.ndarray | None) -> np.ndarray:
    a = np.asarray(to_numpy(analytic), dtype=np.float64).ravel()
    if kind == "full":
        return a
    assert u is not None
    return np.array(a @ u)


def gradcheck(
    target: Sequential | Layer,
    X: Array,
    y: Array | None = None,
    *,
    eps: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-4,
    mode: str = "auto",
    directions: int = 6,
    train: bool = True,
    seed: int = 0,
) -> GradcheckResult:
    """Check the analytic gradients of ``target`` against float64 central differences.

    Parameters
    ----------
    target : a network (its loss on ``(X, y)`` is differentiated) or a single
        layer (the objective is ``Σ layer(X) ⊙ R`` for a fixed random R). A
        layer is checked on a copy, with float64 parameters drawn from ``seed``:
        the layer itself, and the network it belongs to, are left as they were.
    X, y : the batch (``y`` only for networks); copied to float64.
    eps, atol, rtol : the step and the tolerances: a value passes when
        ``|analytic − numerical| ≤ atol + rtol·|numerical|``.
    mode : ``"full"`` (every element), ``"direction"`` (``directions`` random
        unit directions per tensor) or ``"auto"`` (full up to 512 elements).
    train : run layers in training mode (batch statistics, dropout masks).
    seed : seeds R and the directions.

    Raises :class:`GradcheckError` on a mismatch; returns a summary otherwise.
    """
    if mode not in ("auto", "full", "direction"):
        raise ValueError(f"unknown gradcheck mode {mode!r}; choose 'auto', 'full' or 'direction'")
    rng = np.random.default_rng(seed)
    if isinstance(target, Sequential):
        return _check_network(target, X, y, eps, atol, rtol, mode, directions, train, rng)
    if isinstance(target, Layer):
        return _check_layer(target, X, eps, atol, rtol, mode, directions, train, rng)
    raise TypeError(f"gradcheck takes a network or a layer, got {type(target).__name__}")


def _check_network(net: Sequential, X: Array, y: Array, eps: float, atol: float, rtol: float, mode: str,
                   directions: int, train: bool, rng: np.random.Generator) -> GradcheckResult:
    if y is None:
        raise ValueError("gradcheck of a network needs targets y")
    net64 = net if net.dtype == np.float64 else net.copy(dtype="float64")
    X, y = net64.check_inputs(X, y)  # converts X to the network's float64
    chk = _Checker(atol, rtol, f"{type(net).__name__} ({net64.loss!r})", f"X {X.shape}: {_fmt(X)}; y: {_fmt(y)}")
    saved = net64.layer_states()

    def loss() -> float:
        net64.restore_layer_states(saved)
        out = net64.forward(X, train=train)
        return float(net64.loss.forward(out, y))

    def grads() -> dict[str, np.ndarray]:
        net64.restore_layer_states(saved)
        out = net64.forward(X, train=train)
        _, dout = net64.loss.forward_backward(out, y)
        net64.backward(dout)
        return {k: to_numpy(g).copy() for k, g in net64.grads.items()}

    try:
        analytic = grads()
        again = grads()
        for k in analytic:
            if not np.array_equal(analytic[k], again[k]):
                raise GradcheckError(f"backward run twice gave different gradients for {k} (state leaks between calls)")
        # a zero upstream gradient must give zero gradients
        net64.restore_layer_states(saved)
        out = net64.forward(X, train=train)
        net64.backward(net64.xp.zeros_like(out))
        for k, g in net64.grads.items():
            if np.any(to_numpy(g) != 0):
                raise GradcheckError(f"a zero upstream gradient gave a non-zero gradient for {k}")
        for name, p in net64.params.items():
            for kind, u, num in _numerical(loss, p, eps, mode, directions, rng)[0]:
                chk.compare(name, _project(analytic[name], kind, u), num, u)
    finally:  # on a failure too: the running statistics and dropout counters as they were
        net64.restore_layer_states(saved)
    return chk.result()


def _check_layer(layer: Layer, X: Array, eps: float, atol: float, rtol: float, mode: str, directions: int,
                 train: bool, rng: np.random.Generator) -> GradcheckResult:
    xp = get_array_module(X)
    X = xp.array(X, dtype=np.float64)
    n, d = X.shape
    if isinstance(layer, Dense) and layer.activation is not None:
        raise ValueError("check the Dense layer and its activation separately (or check the network)")
    layer = copy.deepcopy(layer)  # the caller's layer keeps its views into its network's buffers, and its state
    for name, value in layer.initial_params(rng, d).items():
        layer.params[name] = xp.asarray(value + 0.1 * rng.standard_normal(value.shape))
        layer.grads[name] = xp.empty_like(layer.params[name])
    layer.param_shapes(d)  # validates the width
    R = xp.asarray(rng.standard_normal((n, layer.out_dim(d))))
    saved = copied_state(layer.state())
    chk = _Checker(atol, rtol, repr(layer), f"X {X.shape}: {_fmt(X)}")

    def restore() -> None:
        load_layer_state(layer, copied_state(saved))

    def objective() -> float:
        restore()
        return float((layer.forward(X, train) * R).sum())

    def backward(upstream: Array) -> dict[str, np.ndarray]:
        restore()
        layer.forward(X, train)
        dx = layer.backward(upstream.copy(), need_dx=True)
        g = {k: to_numpy(v).copy() for k, v in layer.grads.items()}
        g["X"] = to_numpy(dx).copy()
        return g

    analytic = backward(R)
    again = backward(R)
    for k in analytic:
        if not np.array_equal(analytic[k], again[k]):
            raise GradcheckError(f"{layer!r}: backward run twice gave different gradients for {k}")
    for k, g in backward(xp.zeros_like(R)).items():
        if np.any(g != 0):
            raise GradcheckError(f"{layer!r}: a zero upstream gradient gave a non-zero gradient for {k}")
    for name, arr in [("X", X), *layer.params.items()]:
        for kind, u, num in _numerical(objective, arr, eps, mode, directions, rng)[0]:
            chk.compare(f"d{name}", _project(analytic[name], kind, u), num, u)
    return chk.result()
