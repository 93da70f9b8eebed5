"""Saved state: what a network and an optimiser take back, checked before anything changes.

:meth:`Sequential.load_state_dict <gpu_backprop.network.Sequential.load_state_dict>`
and :meth:`Optimizer.load_state_dict <gpu_backprop.optim.Optimizer.load_state_dict>`
come here: a state from a file (a checkpoint, a pickle, a dict built by hand)
is checked entry by entry — names, shapes, dtypes, finite values once converted,
hyper-parameters in range — and only then written into the network's buffers,
so a state that does not fit is one sentence and changes nothing. The pickling
of networks and optimisers (host arrays only, device buffers rebuilt) is here
too. Read after the walk from ``backend.py`` to ``trainer.py``: training never
needs it.
"""

from __future__ import annotations

import copy
import math
import types
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, cast

import numpy as np

from .backend import Backend, BackendError, get_backend, is_cupy_array, to_device, to_numpy
from .checks import check_int, check_range
from .layers import Activation, BatchNorm, Dense, Dropout, Layer, LeakyReLU
from .layers.base import Buffers

if TYPE_CHECKING:
    from .network import Sequential

__all__ = ["BUILT_ATTRIBUTES", "HYPER_RANGES", "NetworkState", "OptimizerState", "StateEntry", "check_hyper",
           "copied_state", "load_layer_state"]


# --------------------------------------------------------------------------
# A network's state
# --------------------------------------------------------------------------
class NetworkState:
    """What a :class:`~gpu_backprop.network.Sequential` saves, restores, copies and pickles (mixed into it).

    It uses the network's public attributes: ``layers``, ``loss``, ``backend``,
    ``dtype``, ``seed``, ``input_dim``, ``flat`` and ``params``.
    """

    layers: list[Layer]
    loss: Any
    backend: Backend
    dtype: np.dtype
    seed: int
    input_dim: int
    flat: Any
    params: dict[str, Any]

    def layer_states(self) -> list[dict[str, Any]]:
        """A copy of every layer's state that is not a parameter (running statistics, dropout counters).

        One dict per layer, on this network's device. :meth:`restore_layer_states`
        puts it back, as often as needed, so that a computation can be repeated
        from the same state (:meth:`loss_and_grads` and :func:`gpu_backprop.gradcheck` do).
        """
        return [copied_state(layer.state()) for layer in self.layers]

    def restore_layer_states(self, states: Sequence[Mapping[str, Any]]) -> None:
        """Put back (copies of) what :meth:`layer_states` returned.

        A BatchNorm layer that had no running statistics yet (no forward pass in
        training mode) has none again.
        """
        for layer, st in zip(self.layers, states):
            load_layer_state(layer, copied_state(st))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every parameter and layer state (running statistics, dropout counters) as NumPy arrays."""
        host = to_numpy(self.flat.flat_params)  # one copy from the device, not one per parameter
        d: dict[str, np.ndarray] = {k: self.flat.view(host, k).copy() for k in self.params}
        for idx, layer in enumerate(self.layers):
            for k, v in layer.state().items():
                d[f"layers.{idx}.{k}"] = np.array(to_numpy(v), copy=True)
        return d

    def state_spec(self) -> dict[str, StateEntry]:
        """Every entry :meth:`load_state_dict` takes: its shape, its dtype and whether it must be there.

        The parameters are required. So are layer states that exist now
        (dropout seed and counter); a BatchNorm layer's running statistics are
        optional: they exist only after its first forward pass in training mode.
        """
        spec = {name: StateEntry(shape, self.dtype, True) for name, (_, shape) in self.flat.slots.items()}
        for idx, layer in enumerate(self.layers):
            if isinstance(layer, BatchNorm):
                for k in ("running_mean", "running_var"):
                    spec[f"layers.{idx}.{k}"] = StateEntry((layer.num_features,), self.dtype, False)
                continue
            for k, v in layer.state().items():
                dtype = v.dtype if hasattr(v, "dtype") else np.asarray(v).dtype
                spec[f"layers.{idx}.{k}"] = StateEntry(tuple(np.shape(v)), np.dtype(dtype), True)
        return spec

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load what :meth:`state_dict` returned; keys and shapes must match exactly.

        Values are converted to this network's dtype first, then checked: an
        entry that holds NaN or Inf, or a value that overflows the dtype (1e300
        in float32), is refused with its name. A BatchNorm layer whose running
        statistics are not in ``state`` starts them afresh. Nothing is changed
        unless every entry fits (see :mod:`gpu_backprop.state`).
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"a network state is a dict of arrays, got {type(state).__name__}")
        spec = self.state_spec()
        missing = sorted(k for k, e in spec.items() if e.required and k not in state)
        unexpected = sorted(k for k in state if k not in spec)
        if missing or unexpected:
            raise ValueError(
                "state does not fit this network"
                + (f"; missing {', '.join(missing[:5])}" if missing else "")
                + (f"; unexpected {', '.join(map(str, unexpected[:5]))}" if unexpected else "")
                + " (was it saved from a different architecture?)"
            )
        values: dict[str, np.ndarray] = {}
        for name, value in state.items():
            entry = spec[name]
            try:
                a = np.asarray(to_numpy(value))
            except (TypeError, ValueError) as exc:
                raise TypeError(f"state entry {name} is not an array ({type(value).__name__}: {exc})") from None
            if tuple(a.shape) != entry.shape:
                raise ValueError(f"state entry {name} has shape {tuple(a.shape)}, this network needs {entry.shape}")
            values[name] = _converted(f"state entry {name}", a, entry.dtype)
        for idx, layer in enumerate(self.layers):
            counter = values.get(f"layers.{idx}.counter") if isinstance(layer, Dropout) else None
            if counter is not None and int(counter) < 0:  # (a seed may look negative: it is 64 bits in an int64)
                raise ValueError(f"state entry layers.{idx}.counter is {int(counter)}; a dropout counter is 0 or more")
            if isinstance(layer, BatchNorm):
                var = values.get(f"layers.{idx}.running_var")
                if var is not None and (var < 0).any():
                    raise ValueError(f"state entry layers.{idx}.running_var has negative variances; "
                                     "refusing to load it")
                if (f"layers.{idx}.running_mean" in values) != (var is not None):
                    raise ValueError(f"state holds only one of layers.{idx}.running_mean and running_var; "
                                     "pass both or neither")
        for name in self.flat.slots:
            self.params[name][...] = to_device(values[name], self.backend)
        for idx, layer in enumerate(self.layers):
            prefix = f"layers.{idx}."
            st = {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix) and k not in self.flat.slots}
            if isinstance(layer, Dropout):
                load_layer_state(layer, {k: int(v) for k, v in st.items()})
            else:  # (a BatchNorm saved before its first forward pass has no statistics again)
                load_layer_state(layer, {k: to_device(v, self.backend) for k, v in st.items()})

    def config(self) -> dict[str, Any]:
        """A JSON-able description of the architecture (checked when a checkpoint is loaded)."""
        return {
            "input_dim": self.input_dim,
            "layers": [layer.spec() for layer in self.layers],
            "loss": self.loss.name,
            "dtype": self.dtype.name,
        }

    def copy(self, *, dtype: Any = None, backend: str | Backend | None = None) -> Sequential:
        """A deep copy, optionally in another dtype or on another backend: of the same class, as a pickle is."""
        from .network import Sequential  # the class this is mixed into (it imports this module)

        be = self.backend if backend is None else get_backend(backend)
        new = cast(Sequential, object.__new__(type(self)))  # an MLP stays an MLP (its attributes, such as sizes, follow)
        _build(new, [copied_layer(layer, self.backend, be) for layer in self.layers], type(self.loss)(), be,
               self.dtype if dtype is None else dtype, self.seed, self.input_dim, self.state_dict(),
               _deep_copy(self._extra()))
        return new

    def _extra(self) -> dict[str, Any]:
        """The attributes a subclass or its user added (``MLP.sizes``): what a copy or a pickle carries besides."""
        return {k: v for k, v in vars(self).items() if k not in BUILT_ATTRIBUTES}

    def __getstate__(self) -> dict[str, Any]:
        """What :mod:`pickle` (and ``copy.deepcopy``, joblib, multiprocessing, Ray) stores.

        The layers as their classes and constructor arguments, the loss's class,
        the backend by name, the dtype, the seed, :meth:`state_dict` (NumPy
        arrays) and any attribute a subclass added (``MLP.sizes``). The flat
        buffers, the views into them and the cached work buffers are rebuilt on
        unpickling, so a pickle holds each parameter once and no device memory.
        """
        return {
            "layers": [pickled_layer(layer) for layer in self.layers],
            "loss": type(self.loss),
            "backend": self.backend.name,
            "dtype": self.dtype.name,
            "seed": self.seed,
            "input_dim": self.input_dim,
            "state": self.state_dict(),
            "extra": self._extra(),
        }

    def __setstate__(self, saved: dict[str, Any]) -> None:
        """Rebuild the network on the backend it was pickled from.

        A network pickled on CuPy comes back on CuPy; where CuPy cannot run, it
        comes back on NumPy with a :class:`RuntimeWarning` (the weights are the
        same, only the device differs).
        """
        backend = unpickled_backend(saved["backend"])
        _build(self, [unpickled_layer(entry, backend) for entry in saved["layers"]], saved["loss"](), backend,
               saved["dtype"], saved["seed"], saved["input_dim"], saved["state"], saved["extra"])


def _build(net: Any, layers: list[Any], loss: Any, backend: Backend, dtype: Any, seed: int, input_dim: int,
           state: dict[str, Any], extra: dict[str, Any]) -> None:
    """Build ``net``, a bare instance (a copy, or an unpickled network), from its parts; then load its state."""
    from .network import Sequential  # the class this is mixed into (it imports this module)

    Sequential.__init__(net, layers, loss=loss, backend=backend, dtype=dtype, seed=seed, input_dim=input_dim)
    net.load_state_dict(state)
    net.__dict__.update(extra)


def copied_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A layer's state with its arrays copied (so that running the layer does not change it)."""
    return {k: (v.copy() if hasattr(v, "copy") else v) for k, v in state.items()}


#: the attributes Sequential.__init__ makes (a pickle rebuilds them); any other attribute is pickled as is
BUILT_ATTRIBUTES = frozenset({"layers", "loss", "backend", "dtype", "seed", "input_dim", "_steps", "_needs_dx",
                              "output_dim", "flat", "flat_params", "flat_grads", "params", "grads", "n_decay",
                              "_name_of", "last_output"})


class StateEntry(NamedTuple):
    """One entry of :meth:`Sequential.state_spec <gpu_backprop.network.Sequential.state_spec>`."""

    shape: tuple[int, ...]
    dtype: np.dtype
    required: bool


def _converted(what: str, a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``a`` as ``dtype`` (a float array, or an integer counter), refused, naming ``what``, if it does not fit."""
    if dtype.kind == "f":
        if a.dtype.kind not in "fiu":
            raise TypeError(f"{what} has dtype {a.dtype}; it needs numbers ({dtype.name})")
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.array(a, dtype=dtype)
        if not np.isfinite(out).all():
            raise ValueError(f"{what} contains NaN or Inf in {dtype.name} (or values too large for it); "
                             "refusing to load it")
        return out
    if a.dtype.kind not in "iu":
        raise TypeError(f"{what} has dtype {a.dtype}; it needs integers")
    info = np.iinfo(dtype)
    if a.size and (int(a.min()) < info.min or int(a.max()) > info.max):
        raise ValueError(f"{what} holds values outside the range of {dtype.name}; refusing to load it")
    return np.array(a, dtype=dtype)


# --------------------------------------------------------------------------
# Pickling a network: layers as constructor arguments, the backend by name
# --------------------------------------------------------------------------
def pickled_layer(layer: Layer) -> tuple[type[Layer], dict[str, Any]] | tuple[Layer, list[str]]:
    """A built-in layer as ``(class, constructor arguments)``; another one as ``(copy, names)``.

    The copy of a layer of another class (a subclass of Dense, say) has no
    parameter views (rebuilt on unpickling), no buffers and not the last batch
    (its :attr:`~gpu_backprop.layers.Layer.per_batch` attributes): both come back
    on the next step. Its other device arrays are on the host, and ``names``
    says which go back to the device.
    """
    if type(layer) in (Dense, BatchNorm, Dropout, LeakyReLU) or (isinstance(layer, Activation)
                                                                 and type(layer).__init__ is Layer.__init__):
        return type(layer), layer.init_args()
    bare = copy.copy(layer)
    bare.params, bare.grads, bare.buffers = {}, {}, Buffers()
    Layer.release_buffers(bare)  # the last batch
    attrs, on_device = on_host(vars(bare))
    vars(bare).update(attrs)
    return bare, on_device


def copied_layer(layer: Layer, source: Backend, target: Backend) -> Layer:
    """A copy of ``layer`` for a network on ``target``, as a pickle makes it, for ``Sequential.copy``.

    A layer of the user's own keeps its attributes (copies of them), and the
    arrays it held on ``source``'s device go to ``target``'s.
    """
    entry = pickled_layer(layer)
    if isinstance(entry[0], Layer):
        bare, on_device = entry
        if not source.is_gpu and target.is_gpu:
            on_device = [k for k, v in vars(bare).items() if isinstance(v, np.ndarray)]
        vars(bare).update(_deep_copy(vars(bare)))  # (bare is the pickle's own shallow copy)
        entry = (bare, on_device)
    return unpickled_layer(entry, target)


def _deep_copy(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``attrs``, value by value: a module (``self.xp = np``), or what cannot be copied (a lock,
    say), is shared; the rest is copied."""
    memo: dict[int, Any] = {}
    copied = {}
    for k, v in attrs.items():
        try:
            copied[k] = v if isinstance(v, types.ModuleType) else copy.deepcopy(v, memo)
        except TypeError:
            copied[k] = v
    return copied


def unpickled_layer(entry: Any, backend: Backend) -> Layer:
    """The layer that :func:`pickled_layer` described, its device arrays on ``backend``."""
    if isinstance(entry, Layer):  # a pickle from before the device arrays were named
        return entry
    first, rest = entry
    if not isinstance(first, Layer):
        return first(**rest)
    back_on_device(first, rest, backend)
    return first


def on_host(attrs: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``attrs`` with each CuPy array copied to the host, and the names of those (for :func:`back_on_device`)."""
    on_device = [k for k, v in attrs.items() if is_cupy_array(v)]
    return {**attrs, **{k: to_numpy(attrs[k]) for k in on_device}}, on_device


def back_on_device(obj: Any, names: Sequence[str], backend: Backend) -> None:
    """Put ``obj``'s attributes ``names`` (what :func:`on_host` moved) on ``backend``'s device."""
    for k in names:
        setattr(obj, k, to_device(getattr(obj, k), backend))


def unpickled_backend(name: str) -> Backend:
    """The backend called ``name``, or NumPy with a :class:`RuntimeWarning` where it cannot run."""
    try:
        return get_backend(name)
    except BackendError as exc:
        warnings.warn(f"this network was pickled on {name}, which cannot run here ({exc}); "
                      "it is on NumPy now", RuntimeWarning, stacklevel=3)
        return get_backend("numpy")


def load_layer_state(layer: Layer, state: dict[str, Any]) -> None:
    """``layer.load_state(state)``; an empty state only puts a BatchNorm back before its first forward pass."""
    if state or isinstance(layer, BatchNorm):  # a layer of the user's own is never asked to load an empty one
        layer.load_state(state)


# --------------------------------------------------------------------------
# An optimiser's state
# --------------------------------------------------------------------------
#: the valid values of each hyper-parameter, for the optimisers and the state they restore: (low, high, low excluded)
HYPER_RANGES: dict[str, tuple[float, float, bool]] = {
    "lr": (0.0, math.inf, True), "momentum": (0.0, 1.0, False), "weight_decay": (0.0, math.inf, False),
    "beta1": (0.0, 1.0, False), "beta2": (0.0, 1.0, False), "eps": (0.0, math.inf, True),
}


def check_hyper(key: str, value: Any, what: str | None = None) -> float:
    """``value`` as a float if it is in ``HYPER_RANGES[key]`` (any number for another key), else one sentence."""
    return check_range(what or key, value, *HYPER_RANGES.get(key, (-math.inf, math.inf, False)))


class OptimizerState:
    """What an :class:`~gpu_backprop.optim.Optimizer` saves, restores and pickles (mixed into it).

    It uses the optimiser's ``name``, ``net``, ``steps``, :meth:`hyper` and :meth:`state_buffers`.
    The buffers named in ``work_space`` are not pickled: :meth:`make_work_space` makes them again.
    """

    name: str
    net: Any
    steps: int
    work_space: ClassVar[tuple[str, ...]] = ()  #: work buffers, not state: left out of a pickle

    def make_work_space(self) -> None:
        """Make each ``work_space`` buffer, laid out like the parameters (at the start, and after unpickling)."""
        for name in self.work_space:
            setattr(self, name, self.net.xp.empty_like(self.net.flat_params))

    def hyper(self) -> dict[str, Any]:
        raise NotImplementedError

    def state_buffers(self) -> dict[str, Any]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Hyper-parameters, step count and state buffers (as NumPy arrays)."""
        d: dict[str, Any] = {"name": self.name, "steps": self.steps, "hyper": self.hyper()}
        d.update({k: to_numpy(v).copy() for k, v in self.state_buffers().items()})
        return d

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (for the same network): buffers, step count, hyper-parameters.

        The state must hold exactly the buffers this optimiser keeps (e.g. an
        SGD without momentum keeps no velocity), each of the network's shape and
        finite once converted to its dtype; the hyper-parameters must be among
        :meth:`hyper`'s names, each a valid value. Anything else is one sentence
        (ValueError or TypeError), and nothing is changed unless all of it fits.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"an optimizer state is a dict, got {type(state).__name__}")
        if state.get("name") != self.name:
            raise ValueError(f"optimizer state is for {state.get('name')!r}, not {self.name!r}")
        buffers = self.state_buffers()
        given = sorted(k for k in state if k not in ("name", "steps", "hyper"))
        extra, missing = [k for k in given if k not in buffers], [k for k in buffers if k not in state]
        if extra or missing:
            raise ValueError(
                f"the optimizer state {'holds ' + ', '.join(extra) if extra else 'lacks ' + ', '.join(missing)}, "
                f"which this {self!r} {'does not keep' if extra else 'needs'}; "
                "it was saved with other settings (e.g. momentum)"
            )
        values = {}
        for k, buf in buffers.items():
            v = np.asarray(to_numpy(state[k]))
            if v.shape != buf.shape:
                raise ValueError(f"optimizer state {k} has shape {v.shape}, the network needs {buf.shape}")
            values[k] = _converted(f"optimizer state {k}", v, np.dtype(buf.dtype))
        steps = check_int("optimizer state steps", state.get("steps"), lo=0)
        hyper = _checked_hyper(state.get("hyper", {}), self.hyper())
        for k, v in values.items():
            buffers[k][...] = to_device(v, self.net.backend)
        for k, v in hyper.items():
            setattr(self, k, v)
        self.steps = steps

    def __getstate__(self) -> dict[str, Any]:
        """What :mod:`pickle` stores: the attributes but the work space, with device arrays copied to the host."""
        saved, on_device = on_host({k: v for k, v in vars(self).items() if k not in self.work_space})
        saved["__on_device__"] = on_device
        return saved

    def __setstate__(self, saved: dict[str, Any]) -> None:
        """Put the state buffers back on the network's device (NumPy if the network came back on NumPy)."""
        saved = dict(saved)
        on_device = saved.pop("__on_device__", [])
        self.__dict__.update(saved)
        back_on_device(self, on_device, self.net.backend)
        self.make_work_space()


def _checked_hyper(saved: Any, current: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters in a saved state, each known, of the right type and in range (else one sentence)."""
    if not isinstance(saved, Mapping):
        raise TypeError(f"optimizer state hyper must be a dict, got {type(saved).__name__}")
    out: dict[str, Any] = {}
    for k, v in saved.items():
        if k not in current:
            raise ValueError(f"optimizer state has an unknown hyper-parameter {k!r}; "
                             f"this optimizer has {', '.join(current)}")
        if isinstance(current[k], bool):
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"optimizer state hyper-parameter {k} must be true or false, got {v!r}")
            out[k] = bool(v)
            continue
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"optimizer state hyper-parameter {k} must be a number, got {v!r}")
        out[k] = check_hyper(k, float(v), f"optimizer state hyper-parameter {k}")
    if out.get("nesterov", current.get("nesterov")) and out.get("momentum", current.get("momentum", 1.0)) == 0.0:
        raise ValueError("optimizer state has Nesterov momentum with momentum 0")
    if "momentum" in out and (out["momentum"] > 0) != (current["momentum"] > 0):  # a velocity is kept with momentum
        raise ValueError(f"optimizer state has momentum {out['momentum']:g}, this optimizer {current['momentum']:g}; "
                         f"build it with momentum={out['momentum']:g} to load this state")
    return out
