"""libcrosslayer_ortops in onnxruntime (Python): PoolCodes / PoolFloat give exactly crosslayer.pool's results."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import crosslayer

from _cpp_runner import build_cpp_runner, ort_ops_library, run_cpp
from _ortops_models import pool_model, random_inputs

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def ops_library() -> str:
    return ort_ops_library()


_SESSIONS = {}


def session(op: str, pca: bool, threads: int = 0, ranked: bool = True):
    key = (op, pca, threads, ranked)
    if key not in _SESSIONS:
        options = ort.SessionOptions()
        options.register_custom_ops_library(ops_library())
        options.intra_op_num_threads = threads
        _SESSIONS[key] = ort.InferenceSession(pool_model(op, pca, ranked), options, providers=["CPUExecutionProvider"])
    return _SESSIONS[key]


def expected(inputs, output):
    pca = (inputs["pca_mean"], inputs["pca_projection"]) if "pca_mean" in inputs else None
    return crosslayer.pool(inputs["local"], inputs["guidance"], pca=pca, output=output, return_channel_mean=True)


shapes = st.tuples(
    st.integers(0, 20),  # n: below and above the op's channel-splitting threshold (16)
    st.integers(1, 9),   # dt_in
    st.integers(1, 40),  # dk
    st.integers(1, 5),   # h
    st.integers(1, 5),   # w
    st.one_of(st.none(), st.integers(1, 130)),  # dt after PCA (None: no PCA); > 64 spans two words
    st.sampled_from([0, 1, 3]),  # onnxruntime intra-op threads (0: its default)
)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_pool_codes_matches_crosslayer_pool_bit_for_bit(shape, seed):
    *dims, dt, threads = shape
    inputs = random_inputs(np.random.default_rng(seed), *dims, dt=dt)
    bits, channel_mean = session("PoolCodes", dt is not None, threads).run(None, inputs)
    codes = expected(inputs, "codes")
    assert bits.dtype == np.uint64 and bits.shape == codes.bits.shape
    np.testing.assert_array_equal(bits, codes.bits)
    np.testing.assert_array_equal(channel_mean, codes.channel_mean)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_pool_float_matches_crosslayer_pool_exactly(shape, seed):
    *dims, dt, threads = shape
    inputs = random_inputs(np.random.default_rng(seed), *dims, dt=dt)
    (representation,) = session("PoolFloat", dt is not None, threads).run(None, inputs)
    reference, _ = expected(inputs, "float")
    assert representation.dtype == np.float32 and representation.shape == reference.shape
    # the same kernel on the same GEMM shapes per channel: identical, not merely close
    np.testing.assert_array_equal(representation, reference)


def test_all_zero_inputs_give_zero_codes_and_zero_floats():
    inputs = {"local": np.zeros((2, 3, 2, 2), np.float32), "guidance": np.zeros((2, 4, 2, 2), np.float32)}
    bits, channel_mean = session("PoolCodes", False).run(None, inputs)
    (representation,) = session("PoolFloat", False).run(None, inputs)
    assert not bits.any() and not channel_mean.any() and not representation.any()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda i: i.update(guidance=i["guidance"][:, :, :1]), "guidance: expected the n, H, W of local"),
        (lambda i: i.update(local=i["local"][0]), "local: expected float32 (n, Dt_in, H, W)"),
        (lambda i: i.update(pca_mean=i["pca_mean"][:2]), "pca_mean: expected shape (3,)"),
        (lambda i: i.update(pca_projection=i["pca_projection"][:2]), "pca_projection: expected shape (3, Dt)"),
        (lambda i: i.update(local=np.zeros((2, 0, 2, 2), np.float32)), "Dt_in, Dk, H and W must be >= 1"),
    ],
)
def test_bad_shapes_fail_with_a_message_naming_the_input(change, message):
    inputs = random_inputs(np.random.default_rng(0), 2, 3, 4, 2, 2, dt=5)
    change(inputs)
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
        session("PoolCodes", True, ranked=False).run(None, inputs)


def test_non_finite_input_fails_instead_of_giving_garbage_signs():
    inputs = random_inputs(np.random.default_rng(0), 1, 3, 4, 2, 2)
    inputs["local"][0, 0, 0, 0] = np.nan
    inputs["guidance"][0, :, 0, 0] = 1.0
    with pytest.raises(Exception, match="not finite"):
        session("PoolCodes", False).run(None, inputs)


def test_ops_library_path_names_the_built_library():
    path = ops_library()
    assert path.endswith("libcrosslayer_ortops.so")


# ---- the same ops from C++ through onnxruntime's C API, no Python in the process --------------------------------
@pytest.fixture(scope="module")
def cpp_runner(tmp_path_factory):
    ops_library()
    return build_cpp_runner(tmp_path_factory)


def run_model(runner, model: bytes, inputs: dict, folder: Path):
    (folder / "model.onnx").write_bytes(model)
    return run_cpp(runner, folder / "model.onnx", ops_library(), inputs, folder)


@pytest.mark.parametrize("dt", [None, 70])
def test_cpp_runner_gives_the_codes_python_gives(cpp_runner, tmp_path, dt):
    inputs = random_inputs(np.random.default_rng(7), 5, 6, 33, 4, 3, dt=dt)
    result = run_model(cpp_runner, pool_model("PoolCodes", dt is not None), inputs, tmp_path)
    assert result.returncode == 0, result.stderr
    codes = expected(inputs, "codes")
    n, dk, _, words = codes.bits.shape
    assert result.stdout.splitlines() == [f"bits uint64 {n}x{dk}x2x{words}", f"channel_mean float32 {n}x{dk}"]
    np.testing.assert_array_equal(np.fromfile(tmp_path / "bits.bin", "<u8").reshape(codes.bits.shape), codes.bits)
    np.testing.assert_array_equal(np.fromfile(tmp_path / "channel_mean.bin", "<f4").reshape(n, dk), codes.channel_mean)


def test_cpp_runner_gives_the_floats_python_gives(cpp_runner, tmp_path):
    inputs = random_inputs(np.random.default_rng(8), 2, 6, 5, 3, 3, dt=4)
    result = run_model(cpp_runner, pool_model("PoolFloat", True), inputs, tmp_path)
    assert result.returncode == 0, result.stderr
    reference, _ = expected(inputs, "float")
    np.testing.assert_array_equal(np.fromfile(tmp_path / "representation.bin", "<f4").reshape(reference.shape), reference)


def test_cpp_runner_reports_the_ops_error_and_exits_nonzero(cpp_runner, tmp_path):
    inputs = random_inputs(np.random.default_rng(9), 2, 3, 4, 2, 2, dt=5)
    inputs["pca_mean"] = inputs["pca_mean"][:2]
    result = run_model(cpp_runner, pool_model("PoolCodes", True, ranked=False), inputs, tmp_path)
    assert result.returncode == 1
    assert "pca_mean: expected shape (3,), got (2,)" in result.stderr
