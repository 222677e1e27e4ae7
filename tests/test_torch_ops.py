"""crosslayer.torch: the pooling as torch custom operators (opcheck, torch.compile fullgraph, the CUDA route)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import crosslayer  # noqa: E402
import crosslayer.torch as xlt  # noqa: E402
from crosslayer import reference  # noqa: E402
from crosslayer.errors import UsageError  # noqa: E402


def _inputs(rng, n=2, dt_in=70, dk=5, h=3, w=4, dt=40, device="cpu"):
    local = torch.from_numpy(rng.standard_normal((n, dt_in, h, w), dtype=np.float32))
    guidance = torch.relu(torch.from_numpy(rng.standard_normal((n, dk, h, w), dtype=np.float32)))
    mean = torch.from_numpy(rng.standard_normal(dt_in, dtype=np.float32))
    projection = torch.from_numpy(rng.standard_normal((dt_in, dt), dtype=np.float32))
    return [t.to(device) for t in (local, guidance, mean, projection)]


@settings(max_examples=15)
@given(st.integers(1, 3), st.integers(1, 130), st.integers(1, 6), st.integers(1, 4), st.booleans(),
       st.integers(0, 2**32 - 1))
def test_ops_equal_the_numpy_api_and_the_reference(n, dt_in, dk, hw, with_pca, seed):
    rng = np.random.default_rng(seed)
    local, guidance, mean, projection = _inputs(rng, n, dt_in, dk, hw, hw, dt=max(1, dt_in // 2))
    pca_args = (mean, projection) if with_pca else ()
    pca = (mean.numpy(), projection.numpy()) if with_pca else None
    bits, channel_mean = xlt.pool_codes(local, guidance, *pca_args)
    codes = crosslayer.pool(local.numpy(), guidance.numpy(), pca, output="codes")
    assert bits.dtype == torch.uint64 and channel_mean.dtype == torch.float32
    np.testing.assert_array_equal(bits.numpy(), codes.bits)
    np.testing.assert_array_equal(channel_mean.numpy(), codes.channel_mean)
    np.testing.assert_array_equal(xlt.pool_float(local, guidance, *pca_args).numpy(),
                                  crosslayer.pool(local.numpy(), guidance.numpy(), pca, output="float"))
    exact = reference.cross_layer_pool(local.numpy(), guidance.numpy(), pca)
    bound = reference.float32_pool_bound(local.numpy(), guidance.numpy(), pca)
    assert reference.sign_violations(reference.unpack_ternary(bits.numpy(), exact.shape[2]), exact, bound) == 0


@pytest.mark.parametrize("with_pca", [True, False])
def test_opcheck_passes(rng, with_pca):
    local, guidance, mean, projection = _inputs(rng)
    args = (local, guidance, mean, projection) if with_pca else (local, guidance)
    torch.library.opcheck(torch.ops.crosslayer.pool_codes.default, args)
    torch.library.opcheck(torch.ops.crosslayer.pool_float.default, args)


def test_inside_a_fullgraph_compiled_function(rng):
    """aot_eager: dynamo must trace without a graph break and AOTAutograd through the fake implementations
    (inductor would add only code generation, and half a minute)."""
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager", dynamic=True)
    def embed(local, guidance, mean, projection):
        bits, channel_mean = xlt.pool_codes(torch.relu(local), guidance * 2, mean, projection)
        return bits, channel_mean + 1, xlt.pool_float(local, guidance)

    for n in (2, 3):  # a second batch size: the fake shapes are symbolic
        local, guidance, mean, projection = _inputs(rng, n=n)
        bits, shifted_mean, representation = embed(local, guidance, mean, projection)
        expected = crosslayer.pool(torch.relu(local).numpy(), (guidance * 2).numpy(), (mean.numpy(), projection.numpy()),
                                   output="codes")
        np.testing.assert_array_equal(bits.numpy(), expected.bits)
        np.testing.assert_array_equal(shifted_mean.numpy(), expected.channel_mean + 1)
        assert representation.shape == (n, 5 * 70)


def test_bad_arguments_are_named(rng):
    local, guidance, mean, projection = _inputs(rng)
    with pytest.raises(UsageError, match="pca_mean, pca_projection: expected both"):
        xlt.pool_codes(local, guidance, mean)
    with pytest.raises(UsageError, match="local, guidance: expected float32 CPU tensors"):
        xlt.pool_codes(local.double(), guidance.double())
    with pytest.raises(ValueError, match="a_t1"):
        xlt.pool_codes(local, guidance[:, :, :2])


def test_cuda_tensors_take_the_device_path(rng):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if not crosslayer.build_info()["cuda"]:
        pytest.skip("crosslayer was built without CUDA")
    local, guidance, mean, projection = _inputs(rng, device="cuda")
    bits, channel_mean = xlt.pool_codes(local, guidance, mean, projection)
    assert bits.is_cuda and channel_mean.is_cuda
    codes = crosslayer.pool(local, guidance, (mean, projection), output="codes")
    np.testing.assert_array_equal(bits.cpu().numpy(), codes.bits.cpu().numpy())
    np.testing.assert_array_equal(channel_mean.cpu().numpy(), codes.channel_mean.cpu().numpy())
    assert xlt.pool_float(local, guidance).is_cuda
