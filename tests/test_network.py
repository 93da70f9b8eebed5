"""The network API: one flat buffer, state, purity, description, and clear errors at the boundary."""

from __future__ import annotations

import copy
import gc

import numpy as np
import pytest

import gpu_backprop as gb


@pytest.fixture
def net() -> gb.MLP:
    return gb.MLP([6, 5, 4, 3], activation="relu", backend="numpy", seed=0)


@pytest.fixture
def batch(rng: np.random.Generator):
    return rng.standard_normal((8, 6)).astype(np.float32), rng.integers(0, 3, 8)


def test_params_and_grads_are_views_into_one_buffer(net: gb.MLP) -> None:
    assert list(net.params) == ["layers.0.W", "layers.0.b", "layers.2.W", "layers.2.b", "layers.4.W", "layers.4.b"]
    for p in net.params.values():
        assert np.shares_memory(p, net.flat_params)
    for g in net.grads.values():
        assert np.shares_memory(g, net.flat_grads)
    net.flat_params[...] = 7.0
    assert all(np.all(p == 7.0) for p in net.params.values())
    assert net.num_params == 6 * 5 + 5 + 5 * 4 + 4 + 4 * 3 + 3


def test_weights_come_first_so_decay_is_a_prefix(net: gb.MLP) -> None:
    flat = net.flat_params
    net.flat_params[...] = 0
    for name, p in net.params.items():
        p[...] = 1 if name.endswith(".W") else 2
    assert np.all(flat[: net.n_decay][flat[: net.n_decay] != 0] == 1)
    assert np.all(flat[net.n_decay:][flat[net.n_decay:] != 0] == 2)


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    a = gb.MLP([5, 4, 2], seed=11, backend="numpy")
    b = gb.MLP([5, 4, 2], seed=11, backend="numpy")
    c = gb.MLP([5, 4, 2], seed=12, backend="numpy")
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
    assert not np.array_equal(a.flat_params, c.flat_params)


def test_sequential_equals_mlp() -> None:
    seq = gb.Sequential([gb.Dense(5, 4), gb.ReLU(), gb.Dense(4, 2)], backend="numpy", seed=3)
    mlp = gb.MLP([5, 4, 2], activation="relu", backend="numpy", seed=3)
    np.testing.assert_array_equal(seq.flat_params, mlp.flat_params)


def test_loss_and_grads_is_pure(rng: np.random.Generator, batch) -> None:
    X, y = batch
    net = gb.MLP([6, 5, 3], batchnorm=True, dropout=0.5, backend="numpy", seed=1)
    before = net.state_dict()
    l1, g1 = net.loss_and_grads(X, y)
    l2, g2 = net.loss_and_grads(X, y)
    assert l1 == l2
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k])
        assert not np.shares_memory(g1[k], net.flat_grads)  # fresh arrays, safe to keep
    after = net.state_dict()
    assert after.keys() == before.keys()  # no running statistics made up from this batch
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_layer_states_can_be_restored_more_than_once(rng: np.random.Generator) -> None:
    net = gb.MLP([6, 5, 3], batchnorm=True, dropout=0.5, backend="numpy", seed=1)
    X1, X2 = (rng.standard_normal((8, 6)).astype(np.float32) for _ in range(2))
    net.forward(X1, train=True)
    saved = net.layer_states()
    runs = []
    for _ in range(2):
        net.restore_layer_states(saved)
        net.forward(X2, train=True)  # updates the running statistics in place
        runs.append(net.state_dict())
    assert runs[0].keys() == runs[1].keys()
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k])


def test_state_dict_round_trip(net: gb.MLP, batch) -> None:
    X, y = batch
    other = gb.MLP([6, 5, 4, 3], activation="relu", backend="numpy", seed=99)
    other.load_state_dict(net.state_dict())
    np.testing.assert_array_equal(other.predict(X), net.predict(X))


def test_state_dict_from_another_architecture_is_refused(net: gb.MLP) -> None:
    small = gb.MLP([6, 5, 3], backend="numpy")
    before = net.flat_params.copy()
    with pytest.raises(ValueError, match="different architecture"):
        net.load_state_dict(small.state_dict())
    wrong = net.state_dict()
    wrong["layers.2.W"] = np.zeros((5, 5))
    with pytest.raises(ValueError, match=r"layers.2.W has shape \(5, 5\)"):
        net.load_state_dict(wrong)
    poisoned = net.state_dict()
    poisoned["layers.0.b"][0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        net.load_state_dict(poisoned)
    np.testing.assert_array_equal(net.flat_params, before)  # nothing changed


def test_copy_to_float64_gives_the_same_predictions(net: gb.MLP, batch) -> None:
    X, _ = batch
    net64 = net.copy(dtype="float64")
    assert net64.dtype == np.float64 and net64.flat_params.dtype == np.float64
    np.testing.assert_allclose(net64.predict(X), net.predict(X), rtol=1e-5, atol=1e-6)


def test_describe_fills_in_every_shape(net: gb.MLP) -> None:
    text = net.describe(batch=128)
    assert "X: (128, 6)  W: (6, 5)" in text
    assert "dW = Xᵀ dZ   (6, 128)(128, 5) -> (6, 5)" in text
    assert "no dX" in text  # the first layer skips dX
    assert "dX = dZ Wᵀ   (128, 3)(3, 4) -> (128, 4)" in text
    assert "dZ = (A − Y) / 128" in text


def test_predict_gives_probabilities_in_batches(net: gb.MLP, rng: np.random.Generator) -> None:
    X = rng.standard_normal((50, 6)).astype(np.float32)
    p = net.predict(X, batch_size=16)
    assert p.shape == (50, 3)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
    np.testing.assert_allclose(p, net.predict(X), rtol=1e-6)


def test_non_contiguous_read_only_and_float64_inputs_work(net: gb.MLP, batch) -> None:
    X, y = batch
    expected, _ = net.loss_and_grads(X, y)
    wide = np.zeros((8, 12), np.float32)
    wide[:, ::2] = X
    ro = X.astype(np.float64)
    ro.setflags(write=False)
    assert net.loss_and_grads(wide[:, ::2], y)[0] == pytest.approx(expected)
    assert net.loss_and_grads(ro, y)[0] == pytest.approx(expected, rel=1e-6)
    assert net.loss_and_grads(X.tolist(), y.tolist())[0] == pytest.approx(expected)


@pytest.mark.parametrize("X,y,error,match", [
    (np.zeros((4, 5, 1), np.float32), np.zeros(4, int), ValueError, r"5 features per sample \(shape \(4, 5, 1\)\)"),
    (np.zeros((4, 5), np.float32), np.zeros(4, int), ValueError, "5 features per sample .* the network takes 6"),
    (np.zeros((0, 6), np.float32), np.zeros(0, int), ValueError, "empty"),
    (np.zeros((4, 6), np.int16), np.zeros(4, int), TypeError, r"dtype int16.*/ 255"),
    (np.zeros((4, 6), np.complex64), np.zeros(4, int), TypeError, "complex dtype complex64; pass real numbers"),
    (np.zeros((4, 6), np.float16), np.zeros(4, int), TypeError, "float16"),
    (np.full((4, 6), np.nan, np.float32), np.zeros(4, int), ValueError, "NaN or Inf"),
    (np.full((4, 6), np.inf, np.float32), np.zeros(4, int), ValueError, "NaN or Inf"),
    (np.zeros((4, 6), np.float32), np.array([0, 1, 2, 3]), ValueError, r"\[0, 2\].*from 0 to 3"),
    (np.zeros((4, 6), np.float32), np.array([0, -1, 2, 1]), ValueError, "from -1 to 2"),
    (np.zeros((4, 6), np.float32), np.array([0.0, 1.0, 2.0, 1.0]), TypeError, "integer class labels"),
    (np.zeros((4, 6), np.float32), np.zeros(3, int), ValueError, "y has 3 rows but there are 4 samples"),
    (np.zeros((4, 6), np.float32), np.zeros((4, 5)), ValueError, r"\(4, 3\)"),
    (np.zeros((4, 6), np.float32), np.full((4, 3), np.nan), ValueError, "NaN"),
    ("not an array", np.zeros(4, int), TypeError, "X must be a numeric array"),
])
def test_bad_input_is_one_clear_error(net: gb.MLP, X, y, error, match) -> None:
    with pytest.raises(error, match=match):
        net.loss_and_grads(X, y)


@pytest.mark.parametrize("build,match", [
    (lambda: gb.MLP([4, 3], activation="swish"), "unknown activation 'swish'"),
    (lambda: gb.MLP([4, 3], loss="hinge"), "unknown loss 'hinge'"),
    (lambda: gb.MLP([4, 3], init="orthogonal"), "unknown initializer 'orthogonal'"),
    (lambda: gb.MLP([4, 3], dtype="float16"), "unsupported dtype"),
    (lambda: gb.MLP([4, 3], dtype="int32"), "unsupported dtype"),
    (lambda: gb.MLP([4]), "at least two positive integers"),
    (lambda: gb.MLP([4, 0, 3]), "at least two positive integers"),
    (lambda: gb.MLP([4, 3], backend="opencl"), "unknown backend"),
    (lambda: gb.Sequential([gb.Dense(4, 3), gb.Dense(5, 2)]), r"receives 3 features"),
    (lambda: gb.Sequential([]), "at least one layer"),
    (lambda: gb.Sequential(["dense"]), "not a gpu_backprop Layer"),
    (lambda: gb.Dense(0, 3), "positive integer"),
    (lambda: gb.Dropout(1.0), r"Dropout probability must be in \[0.0, 1.0\)"),
    (lambda: gb.MLP([4, 3], seed=-1), r"seed must be an integer from 0 to 2\*\*64 - 1, got -1"),
    (lambda: gb.MLP([4, 3], seed=1.5), "seed must be an integer"),  # not quietly 1
    (lambda: gb.Dropout(0.5, seed=-1), r"Dropout seed must be an integer from 0 to 2\*\*64 - 1, got -1"),
    (lambda: gb.Dropout(0.5, seed=2**64), r"Dropout seed must be an integer from 0 to 2\*\*64 - 1"),  # not wrapped to 0
    (lambda: gb.FitConfig(seed=2**70), "seed must be an integer"),  # not the run of seed 0 (the hash is 64-bit)
    (lambda: gb.FitConfig(validation_fraction="0.1"), "validation_fraction must be a number, got '0.1'"),
    (lambda: gb.FitConfig(max_grad_norm="1"), "max_grad_norm must be a number"),
    (lambda: gb.FitConfig(schedule="step:1:inf"), "multiplies the rate by GAMMA .finite, above 0."),  # not inf later
    (lambda: gb.Dropout("0.5"), "Dropout probability must be a number"),
    (lambda: gb.BatchNorm(4, eps=0), r"BatchNorm eps must be in \(0.0, inf\)"),
    (lambda: gb.BatchNorm(4, momentum=2), r"BatchNorm momentum must be in \(0, 1\]"),
    (lambda: gb.BatchNorm(4, momentum=float("nan")), r"BatchNorm momentum must be in \(0, 1\], got nan"),
    (lambda: gb.MLP([4, 3], output_activation=5), "unknown activation 5"),
    (lambda: gb.Adam(gb.MLP([4, 3]), betas=(0.9,)), "betas are two numbers"),
    (lambda: gb.SGD(gb.MLP([4, 3]), momentum=0.9, nesterov="no"), "nesterov must be True or False"),
])
def test_bad_construction_is_one_clear_error(build, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        build()


def test_a_layer_belongs_to_one_network_and_one_place_in_it(rng: np.random.Generator) -> None:
    layers = [gb.Dense(4, 8), gb.ReLU(), gb.Dense(8, 3)]
    net = gb.Sequential(layers, backend="numpy")
    before = net.state_dict()
    with pytest.raises(ValueError, match=r"layers\[0\] .* belongs to another network"):
        gb.Sequential(layers, backend="numpy", seed=1)
    X = rng.standard_normal((6, 4)).astype(np.float32)
    assert np.array_equal(net.predict(X), gb.Sequential(copy.deepcopy(layers), backend="numpy").predict(X))
    assert all(np.array_equal(v, before[k]) for k, v in net.state_dict().items())  # the refused call took nothing
    relu = gb.ReLU()  # an activation fused into each Dense keeps nothing of its own: one object may serve both
    gb.Sequential([gb.Dense(4, 4), relu, gb.Dense(4, 4), relu], backend="numpy")
    dense = gb.Dense(4, 4)
    with pytest.raises(ValueError, match=r"layers\[2\] is layers\[0\] again"):
        gb.Sequential([dense, gb.ReLU(), dense], backend="numpy")
    dropout = gb.Dropout(0.5)
    for refused in ([gb.Dense(4, 4), dropout, relu, relu], [gb.Dense(4, 4), dropout, gb.Dense(5, 2)]):
        with pytest.raises(ValueError, match="again|receives 4 features"):
            gb.Sequential(refused, backend="numpy", seed=5)
    assert dropout.seed == 0  # a refused network leaves its layers as they were: the seed is still the network's
    fresh = gb.Sequential([gb.Dense(4, 4), gb.Dropout(0.5)], backend="numpy", seed=7)
    assert gb.Sequential([gb.Dense(4, 4), dropout], backend="numpy", seed=7).layers[1].seed == fresh.layers[1].seed
    del net
    gc.collect()
    gb.Sequential(layers, backend="numpy")  # a network that is gone holds nothing


def test_batchnorm_needs_two_samples_in_training() -> None:
    net = gb.MLP([3, 4, 2], batchnorm=True, backend="numpy")
    states = net.layer_states()
    with pytest.raises(ValueError, match="at least 2 samples"):
        net.loss_and_grads(np.ones((1, 3), np.float32), np.array([0]))
    assert net.layer_states() == states  # the refused batch left nothing behind (no running statistics)
    assert net.predict(np.ones((1, 3), np.float32)).shape == (1, 2)  # eval mode is fine


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_a_bad_batch_size_for_predictions_and_evaluation_is_one_sentence(batch_size) -> None:
    net = gb.MLP([3, 4, 2], backend="numpy")
    X, y = np.ones((5, 3), np.float32), np.zeros(5, np.int64)
    for call in (lambda: net.predict_proba(X, batch_size), lambda: net.predict_classes(X, batch_size),
                 lambda: gb.evaluate(net, X, y, batch_size)):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            call()


def test_batchnorm_running_statistics_follow_the_data(rng: np.random.Generator) -> None:
    net = gb.MLP([3, 4, 2], batchnorm=True, backend="numpy", dtype="float64")
    bn = net.layers[1]
    X = rng.standard_normal((64, 3)) * 3 + 5
    for _ in range(200):
        net.train_step_grads(X, rng.integers(0, 2, 64))
    h = X @ net.params["layers.0.W"] + net.params["layers.0.b"]
    np.testing.assert_allclose(bn.running_mean, h.mean(0), rtol=1e-6)
    np.testing.assert_allclose(bn.running_var, h.var(0, ddof=1), rtol=1e-6)


def test_predict_takes_what_fit_takes_and_names_what_it_returns() -> None:
    """uint8 images of any shape, as in a data set; probabilities and classes under names nobody misreads."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (20, 2, 3), dtype=np.uint8)  # (N, H, W), as load_dataset gives them
    y = rng.integers(0, 3, 20)
    net = gb.MLP([6, 5, 3], backend="numpy", seed=0)
    as_floats = images.reshape(20, 6).astype(np.float32) / 255
    proba = net.predict_proba(images)
    np.testing.assert_allclose(proba, net.predict_proba(as_floats), rtol=1e-6)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    classes = net.predict_classes(images)
    assert classes.dtype == np.int64 and classes.shape == (20,)
    np.testing.assert_array_equal(classes, proba.argmax(axis=1))
    np.testing.assert_array_equal(net.predict(images), proba)  # the old name: probabilities, as before
    assert net.loss_and_grads(images, y)[0] == pytest.approx(net.loss_and_grads(as_floats, y)[0], rel=1e-6)


def test_predict_classes_of_a_binary_classifier_are_zero_and_one() -> None:
    net = gb.MLP([4, 3, 1], loss="bce", backend="numpy", seed=1)
    X = np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32)
    p = net.predict_proba(X)
    np.testing.assert_array_equal(net.predict_classes(X), (p[:, 0] > 0.5).astype(np.int64))


def test_softmax_cross_entropy_with_one_output_is_refused() -> None:
    with pytest.raises(ValueError, match="softmax cross-entropy needs at least 2 outputs.*loss='bce'"):
        gb.MLP([4, 3, 1], backend="numpy")
    gb.MLP([4, 3, 1], loss="bce", backend="numpy")  # the binary classifier it should be


def test_every_built_in_layer_rebuilds_from_its_init_args() -> None:
    layers = [gb.Dense(4, 6, init="he_normal"), gb.BatchNorm(6, momentum=0.2, eps=1e-3), gb.LeakyReLU(0.2),
              gb.Dropout(0.3, seed=7), gb.Dense(6, 3), gb.Sigmoid(), gb.Tanh(), gb.Identity(), gb.ReLU()]
    for layer in layers:
        twin = type(layer)(**layer.init_args())
        assert twin.init_args() == layer.init_args() and twin.spec() == layer.spec()
    from gpu_backprop.layers import LAYER_TYPES
    assert {type(layer).__name__ for layer in layers} == set(LAYER_TYPES)  # the registry holds every built-in


def test_numbers_of_any_kind_are_taken_where_a_number_is_asked_for() -> None:
    net = gb.MLP([4, 3], backend="numpy", seed=np.uint64(3))
    assert gb.SGD(net, lr=np.array(0.1)).lr == 0.1 and gb.Dropout(np.float32(0.5)).p == 0.5  # a 0-d array, a scalar
    seed = gb.FitConfig(seed=np.int64(5)).seed
    assert seed == 5 and type(seed) is int
    with pytest.raises(ValueError, match="seed must be an integer from 0"):
        net.reset_parameters(-1)
    with pytest.raises(TypeError, match="must be a number, got True"):
        gb.SGD(net, lr=True)
    with pytest.raises(ValueError, match="betas are two numbers"):
        gb.Adam(net, betas=0.9)
    with pytest.raises(ValueError, match=r"BatchNorm momentum must be in \(0, 1\], got 0"):
        gb.BatchNorm(3, momentum=0)
