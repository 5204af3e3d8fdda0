"""Programmatic dependent launch (ops/_pdl.py): the switch, the ops that take it giving the
reference's answer with it on, and (on a GPU) a decode chain replayed from a CUDA graph under PDL
giving bit for bit what it gives without. A missing or misplaced grid dependency wait is a race:
a kernel reading its input before the kernel before has written it."""

import pytest
import torch

import aurora_kernels as ak
from aurora_kernels.ops import _pdl, fused_linear, reference
from aurora_kernels.ops._pdl import pdl_options
from aurora_kernels.testing import check_op, randn
from tests.catalogue import cuda_only


@pytest.fixture
def pdl_on():
    with ak.using_programmatic_dependent_launch(True):
        yield


def test_the_switch_launches_with_pdl_on_hopper_and_later(pdl_on, device):
    """On a GPU of sm_90+: the PDL path and launch option. Under the interpreter: the PDL path, its
    waits left out (the next test checks its arithmetic there). Off: neither."""
    assert ak.programmatic_dependent_launch()
    if device.type == "cpu":
        assert pdl_options(device) == {"USE_PDL": True}
    elif torch.cuda.get_device_capability(device)[0] >= 9:
        assert pdl_options(device) == {"USE_PDL": True, "launch_pdl": True}
        assert pdl_options(torch.device("cpu")) == {"USE_PDL": False}
    with ak.using_programmatic_dependent_launch(False):
        assert pdl_options(device) == {"USE_PDL": False}


def test_the_ops_that_take_it_match_the_reference_with_it_on(pdl_on, device, gen):
    """The GEMV at 1 and 3 rows (its first step peeled off the loop, its weight tile read before the
    wait), the tensor-core tiles at 5 rows with K split in two and the kernel that sums the splits,
    and decode attention's split and merge kernels, each on its PDL path."""
    dtype = torch.bfloat16
    for rows in (1, 3, 5):
        x, residual = randn((rows, 300), dtype, device, gen), randn((rows, 300), dtype, device, gen)
        norm_weight = randn((300,), dtype, device, gen, scale=0.5, shift=1.0)
        weight, bias = randn((100, 300), dtype, device, gen, scale=300**-0.5), randn((100,), dtype, device, gen)
        check_op(ak.rms_norm_linear, reference.rms_norm_linear, x, norm_weight, weight, bias, 1e-6, residual)
    assert fused_linear.k_splits(300, 100, 1, torch.device("cpu"), "wgmma")[0] == 2  # the 5 rows' splits on an H100
    seqlens = torch.tensor([70, 0, 33], dtype=torch.int32, device=device)
    q = randn((3, 1, 12, 64), dtype, device, gen)
    k_cache, v_cache = (randn((3, 96, 2, 64), dtype, device, gen) for _ in range(2))
    check_op(ak.decode_attention, reference.decode_attention, q, k_cache, v_cache, seqlens, num_kv_splits=4)
    with _pdl.using_weight_prefetch(True):  # the merge lets the next kernel launch at its start
        check_op(ak.decode_attention, reference.decode_attention, q, k_cache, v_cache, seqlens, num_kv_splits=4)


def test_the_merge_launches_the_next_kernel_early_only_under_pdl_with_the_weight_prefetch():
    """NEXT_LAUNCHED of decode attention's merge: the thread's weight prefetch under PDL, nothing else
    (the sm_90 compile report checks where the launch lands in the machine code)."""
    assert not _pdl.early_next_launch_option(True)
    with _pdl.using_weight_prefetch(True):
        assert _pdl.early_next_launch_option(True)
        assert not _pdl.early_next_launch_option(False)


def test_the_weight_prefetch_is_asked_for_under_pdl_on_aligned_weights_on_a_gpu(monkeypatch, device, gen):
    """The GEMV's L2 prefetch (PREFETCH_L2): only under PDL, only where the thread turned it on, never
    under the interpreter (no inline PTX there), only for weights whose rows the bulk prefetch can
    take (16-byte aligned starts, whole rows a multiple of 16 bytes); the sm_90 compile report
    checks the instructions themselves."""
    weight = randn((64, 256), torch.bfloat16, device, gen)
    with _pdl.using_weight_prefetch(True):
        assert _pdl.weight_prefetch_option(True, weight) == (not _pdl.INTERPRETER)
        monkeypatch.setattr(_pdl, "INTERPRETER", False)  # the rule as a GPU applies it
        assert _pdl.weight_prefetch_option(True, weight)
        assert not _pdl.weight_prefetch_option(False, weight)  # no PDL
        assert not _pdl.weight_prefetch_option(True, weight[:, :100])  # 200-byte rows
        assert not _pdl.weight_prefetch_option(True, randn((64, 260), torch.bfloat16, device, gen)[:, 4:])  # start
        assert not _pdl.weight_prefetch_option(True, randn((64, 260), torch.bfloat16, device, gen)[:, :256])  # stride
    assert not _pdl.weight_prefetch_option(True, weight)  # off outside the block


@cuda_only
@pytest.mark.parametrize("weight_prefetch", [False, True])
def test_a_decode_chain_under_pdl_replays_bit_for_bit_like_without(weight_prefetch, device, gen):
    """Four layers of a one-sequence decode step (norm + qkv GEMV, decode attention appending to its
    cache, o_proj, norm + gate_up, SwiGLU + down_proj), each kernel reading the one before's output,
    behind a torch kernel that advances the length (as the runtime does, without PDL), captured in
    one CUDA graph with PDL (and the GEMV's L2 weight prefetch) and in another without, on copies of
    the caches. 50 replays each, every one at a new position: the outputs, the caches and the
    lengths of the two are equal bit for bit (the same kernels and tiles, so no rounding differs)."""
    dtype, hidden, heads_q, heads_kv, head_dim, inter = torch.bfloat16, 256, 4, 2, 64, 512
    layers = [
        {
            "norm1": randn((hidden,), dtype, device, gen, scale=0.1, shift=1.0),
            "qkv": randn(((heads_q + 2 * heads_kv) * head_dim, hidden), dtype, device, gen, scale=hidden**-0.5),
            "o": randn((hidden, heads_q * head_dim), dtype, device, gen, scale=(heads_q * head_dim) ** -0.5),
            "norm2": randn((hidden,), dtype, device, gen, scale=0.1, shift=1.0),
            "gate_up": randn((2 * inter, hidden), dtype, device, gen, scale=hidden**-0.5),
            "down": randn((hidden, inter), dtype, device, gen, scale=inter**-0.5),
        }
        for _ in range(4)
    ]
    x0 = randn((1, 1, hidden), dtype, device, gen)
    caches = [(randn((1, 512, heads_kv, head_dim), dtype, device, gen), randn((1, 512, heads_kv, head_dim), dtype, device, gen))
              for _ in layers]  # fmt: skip

    def chain(caches, seqlens):
        seqlens.add_(1)
        x, residual = x0, torch.zeros_like(x0)
        for w, (k_cache, v_cache) in zip(layers, caches):
            qkv, residual = ak.rms_norm_linear(x, w["norm1"], w["qkv"], None, 1e-6, residual)
            q, k, v = qkv.view(1, 1, -1, head_dim).split([heads_q, heads_kv, heads_kv], dim=2)
            attn = ak.decode_attention(q, k_cache, v_cache, seqlens, k, v, num_kv_splits=8)
            o = ak.linear(attn.flatten(-2), w["o"])
            gate_up, residual = ak.rms_norm_linear(o, w["norm2"], w["gate_up"], None, 1e-6, residual)
            x = ak.silu_and_mul_linear(gate_up, w["down"])
        return x + residual

    def captured(pdl):
        """The chain on copies of the caches and lengths, run once (compiling its kernels outside the
        capture), then captured; with PDL on or off for this thread."""
        state = [(k.clone(), v.clone()) for k, v in caches], torch.tensor([300], dtype=torch.int32, device=device)
        with ak.using_programmatic_dependent_launch(pdl), _pdl.using_weight_prefetch(weight_prefetch):
            chain(*state)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = chain(*state)
        return graph, out, state

    plain_graph, plain_out, plain_state = captured(pdl=False)
    pdl_graph, pdl_out, pdl_state = captured(pdl=True)
    for replay in range(50):
        pdl_out.fill_(float("nan"))
        plain_graph.replay()
        pdl_graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(pdl_out, plain_out), f"replay {replay} differs from the chain without PDL"
    assert torch.equal(pdl_state[1], plain_state[1]) and int(pdl_state[1]) == 300 + 51
    for (k_pdl, v_pdl), (k_plain, v_plain) in zip(*(state[0] for state in (pdl_state, plain_state))):
        assert torch.equal(k_pdl, k_plain) and torch.equal(v_pdl, v_plain)
