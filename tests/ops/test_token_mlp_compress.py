import pytest
import torch

import aurora_kernels as ak
from aurora_kernels.ops import reference
from aurora_kernels.testing import check_op, randn
from tests.catalogue import DTYPE_IDS, DTYPES, far_apart


def _inputs(batch, tokens, hidden, out_tokens, channels, dtype, device, gen):
    """Weights scaled like a trained layer (unit-variance hidden), so no activation saturates everywhere."""
    x = randn((batch, tokens, channels), dtype, device, gen)
    w1 = randn((hidden, tokens), dtype, device, gen, scale=tokens**-0.5)
    w2 = randn((out_tokens, hidden), dtype, device, gen, scale=hidden**-0.5)
    return x, w1, randn((hidden,), dtype, device, gen), w2, randn((out_tokens,), dtype, device, gen)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("activation", ["gelu_tanh", "gelu", "silu"])
@pytest.mark.parametrize(
    "shape",
    [(2, 64, 48, 16, 40), (1, 16, 200, 5, 33), (3, 100, 130, 64, 17)],
    ids=["tiny-preset", "odd-hidden", "odd-tokens"],
)
def test_parity(dtype, activation, shape, device, gen):
    check_op(ak.token_mlp_compress, reference.token_mlp_compress, *_inputs(*shape, dtype, device, gen), activation)


def test_model_shape_one_image(device, gen):
    # N 256 -> M 64 with the model's hidden, on a slice of the 1536 channels (interpreter time)
    check_op(ak.token_mlp_compress, reference.token_mlp_compress, *_inputs(1, 256, 256, 64, 48, torch.bfloat16, device, gen))


def test_strided_x(device, gen):
    x, w1, b1, w2, b2 = _inputs(2, 64, 48, 16, 40, torch.float16, device, gen)
    seq = randn((2, 1 + 64, 56), torch.float16, device, gen)
    x = seq[:, 1:, 8:48]  # token stride 56, batch stride 65 * 56
    check_op(ak.token_mlp_compress, reference.token_mlp_compress, x, w1, b1, w2, b2)


def test_empty_batch(device, gen):
    args = _inputs(0, 16, 32, 4, 8, torch.float32, device, gen)
    assert ak.token_mlp_compress(*args).shape == (0, 4, 8)


def test_bad_inputs(device, gen):
    x, w1, b1, w2, b2 = _inputs(2, 16, 32, 4, 8, torch.float32, device, gen)
    with pytest.raises(ValueError, match="w1: expected shape \\[32, 16\\] \\[D, N\\]"):
        ak.token_mlp_compress(x, w1[:, :15], b1, w2, b2)
    with pytest.raises(TypeError, match="w2: expected dtype torch.float32 \\(the dtype of x\\)"):
        ak.token_mlp_compress(x, w1, b1, w2.half(), b2)
    with pytest.raises(ValueError, match="w1: expected the last dim to be contiguous"):
        ak.token_mlp_compress(x, w1.t().contiguous().t(), b1, w2, b2)
    big_w2 = randn((300, 32), torch.float32, device, gen)
    with pytest.raises(ValueError, match="w2: expected at most 256 output tokens"):
        ak.token_mlp_compress(x, w1, b1, big_w2, randn((300,), torch.float32, device, gen))


def test_int64_offsets(device, gen):
    _, w1, b1, w2, b2 = _inputs(3, 16, 24, 4, 8, torch.float16, device, gen)
    check_op(
        ak.token_mlp_compress, reference.token_mlp_compress, far_apart((3, 16, 8), torch.float16, device, gen), w1, b1, w2, b2
    )
