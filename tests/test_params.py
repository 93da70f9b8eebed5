"""The flat parameter buffer: its layout, its views, and the network's public way to it."""

from __future__ import annotations

import itertools

import numpy as np

import gpu_backprop as gb
from gpu_backprop.params import ALIGN, FlatParameters, Slot, layout


def test_the_layout_drawn_in_the_docstring() -> None:
    # Dense(784, 256), ReLU(), Dense(256, 10): the picture at the top of params.py, every number worked out
    shapes = {"layers.0.W": (784, 256), "layers.0.b": (256,), "layers.2.W": (256, 10), "layers.2.b": (10,)}
    slots, n_decay, length = layout(shapes, {"layers.0.W", "layers.2.W"})
    assert slots == {"layers.0.W": Slot(0, (784, 256)), "layers.0.b": Slot(203_264, (256,)),
                     "layers.2.W": Slot(200_704, (256, 10)), "layers.2.b": Slot(203_520, (10,))}
    assert list(slots) == list(shapes)  # the declared order, whatever the offsets
    assert n_decay == 200_704 + 2_560 == 203_264
    assert length == 203_520 + 32  # 10 values padded to 32


def test_every_entry_is_aligned_and_decayed_ones_come_first() -> None:
    shapes = {"a": (3,), "w1": (5, 7), "g": (1,), "w2": (33,), "b": (64,)}
    slots, n_decay, length = layout(shapes, ["w1", "w2"])
    assert [name for name, _ in sorted(slots.items(), key=lambda kv: kv[1].offset)] == ["w1", "w2", "a", "g", "b"]
    assert all(s.offset % ALIGN == 0 for s in slots.values())
    assert n_decay == slots["a"].offset == 64 + 64  # 35 -> 64, 33 -> 64
    assert length == n_decay + 32 + 32 + 64
    ends = sorted((s.offset, s.offset + s.size) for s in slots.values())
    assert all(e0 <= s1 for (_, e0), (s1, _) in itertools.pairwise(ends))  # no overlap


def test_nothing_decayed_means_an_empty_prefix() -> None:
    slots, n_decay, length = layout({"gamma": (4,), "beta": (4,)}, ())
    assert n_decay == 0 and length == 64 and slots["beta"].offset == 32


def test_views_share_the_buffers_and_a_state_buffer_is_reached_by_name() -> None:
    flat = FlatParameters({"W": (3, 4), "b": (4,)}, {"W"}, np, np.float64)
    assert flat.flat_params.dtype == np.float64 and flat.flat_grads.shape == (len(flat),) == (64,)
    assert flat.num_params == 16 and flat.n_decay == 32
    flat.params["b"][...] = 5.0
    flat.grads["W"][...] = 1.0
    np.testing.assert_array_equal(flat.flat_params[32:36], 5.0)
    assert flat.flat_grads[:12].sum() == 12 and flat.flat_grads.sum() == 12
    velocity = np.arange(len(flat), dtype=np.float64)
    v = flat.view(velocity, "b")
    assert v.shape == (4,) and np.shares_memory(v, velocity)
    np.testing.assert_array_equal(v, [32, 33, 34, 35])
    assert "n_decay=32" in repr(flat)


def test_the_network_delegates_to_its_flat_parameters() -> None:
    net = gb.MLP([6, 5, 3], backend="numpy", batchnorm=True)
    assert isinstance(net.flat, FlatParameters)
    assert net.flat_params is net.flat.flat_params and net.flat_grads is net.flat.flat_grads
    assert net.params is net.flat.params and net.grads is net.flat.grads
    assert (net.n_decay, net.num_params) == (net.flat.n_decay, net.flat.num_params)
    dense = net.layers[0]
    slot = net.slot(dense, "W")
    assert slot == net.flat.slots["layers.0.W"] == (0, (6, 5))
    assert dense.params["W"] is net.params["layers.0.W"]  # the layer computes through the buffer's view
    velocity = np.zeros_like(net.flat_params)
    net.view(velocity, net.layers[1], "gamma")[...] = 1.0
    gamma = net.flat.slots["layers.1.gamma"]
    assert velocity.sum() == 5 and velocity[gamma.offset:gamma.offset + 5].sum() == 5


def test_steps_are_the_layers_as_they_run() -> None:
    layers = [gb.Dense(4, 6), gb.Tanh(), gb.BatchNorm(6), gb.ReLU(), gb.Dense(6, 2)]
    net = gb.Sequential(layers, backend="numpy")
    assert net.steps == (layers[0], layers[2], layers[3], layers[4])  # Tanh runs inside the first Dense
    assert layers[0].activation is layers[1] and layers[4].activation is None
    assert isinstance(net.steps, tuple)  # a read-only picture: changing it cannot change the network


def test_a_pickle_holds_only_the_attributes_a_subclass_added() -> None:
    # everything Sequential.__init__ builds is rebuilt on unpickling; an array among the extras would be pickled twice
    net = gb.MLP([4, 3, 2], backend="numpy", dropout=0.1)
    net.forward(np.ones((2, 4), dtype=np.float32))
    assert net.__getstate__()["extra"] == {"sizes": [4, 3, 2]}
