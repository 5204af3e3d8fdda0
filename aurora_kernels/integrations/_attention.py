"""The "aurora" entry of transformers' attention registry, shared by the model patches: the module's
q, k, v ([B, H, L, D], transformers' layout) through this package's attention, causal as the module
says (Qwen2 yes, SigLIP's vision tower no), GQA by index. A decode step (one query a sequence) runs
decode_attention over the cache's views, in one launch (eager) or with its keys split over programs
(compiled or captured), padded or not: the kernel drops the keys the padding mask clears
(`key_mask`), reading the cache in place.

Padded prefills run unpadded, as flash-attn's entry does: the entry's mask builder is transformers'
flash_attention_mask (`_padding_mask`), which hands over the 2-D padding mask [B, tokens seen]
(None where nothing is padded). The queries and keys are gathered into packed sequences, attention_varlen runs over them
(causal aligned bottom-right within each sequence, which is right for left and right padding),
and the outputs go back to their padded places (0 at padding). A key past the
mask's length (the unwritten slots of a static cache) is padding. flash-attn's entry gathers the
real rows alone, whose count is a read of the mask (a host sync) in every layer, and a graph break
under torch.compile. Here every row is gathered, the real ones first, and the padding rows form
packed sequences of their own that see no key (`_UnpadPlan`): every shape is the batch's, and
nothing of the mask is read on the host. transformers builds the mask once and hands that object
to every layer, so the plan made for it serves the layers after the first.
"""

from __future__ import annotations

import copy
import threading
from typing import NamedTuple

import torch

import aurora_kernels as ak
from aurora_kernels.integrations._undo import record_undo

ATTENTION_NAME = "aurora"


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None, **kwargs):
    if sliding_window is not None:
        raise ValueError(f"sliding_window: expected None (full attention), got {sliding_window}")
    if dropout:
        raise ValueError(f"dropout: expected 0 (inference only), got {dropout}")
    backend = getattr(module, "_aurora_backend", "triton")
    causal = getattr(module, "is_causal", True)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [B, L, H, D] views, no copies
    if attention_mask is not None and attention_mask.ndim != 2:
        raise ValueError(
            f"attention_mask: expected the 2-D padding mask [B, tokens] that the aurora entry's mask builder makes, got "
            f"shape {list(attention_mask.shape)} (a model that builds its own 4-D mask is not supported)"
        )
    if q.shape[1] == 1:
        return _decode_step(q, k, v, attention_mask, scaling, backend), None
    if attention_mask is None:
        return ak.attention(q, k, v, causal=causal, softmax_scale=scaling, backend=backend), None
    plan = _unpad_plan(attention_mask, q.shape[1])
    return _unpadded_attention(q, k, v, plan, causal, scaling, backend), None


def _decode_step(q, k, v, padding_mask, scaling, backend: str) -> torch.Tensor:
    """One query a sequence (causal or not, it sees every key) over k and v read as the cache, in
    place: every key, or with a padding mask [B, S] the first S (a static cache's written ones) as
    the mask keeps them (decode_attention's key_mask; the query of a padded row, which nothing reads,
    attends the kept keys too). Split over programs where launches are cheap (a compiled graph, a
    CUDA-graph capture), as flash-attn's forward splits one query row; eager, one split, one launch:
    an eager step is host-bound, ~100 us a launch (docs/performance-log.md, tenth session)."""
    graphed = torch.compiler.is_compiling() or (q.is_cuda and torch.cuda.is_current_stream_capturing())
    key_mask = None
    if padding_mask is not None:
        key_mask = padding_mask if padding_mask.dtype == torch.bool else padding_mask != 0
        k, v = k[:, : key_mask.shape[1]], v[:, : key_mask.shape[1]]
    seen = _all_keys(q.shape[0], k.shape[1], q.device)
    return ak.decode_attention(q, k, v, seen, softmax_scale=scaling, num_kv_splits=None if graphed else 1,
                               key_mask=key_mask, backend=backend)  # fmt: skip


class PerTensorCache(threading.local):
    """Values computed from a tensor, kept in each thread for the next call with the same tensor
    object (the `size` latest): transformers hands one mask, or one cu_seqlens, to every layer of a
    forward. A value is kept with its tensor, so that no other tensor can take its memory (and its
    id) meanwhile, and with the tensor's version counter, which an in-place change moves. Nothing
    is kept while torch.compile traces (a graph holds no Python state)."""

    def __init__(self, size: int):
        self.size, self.kept = size, []

    def get(self, tensor: torch.Tensor, key, make):
        """make()'s value for (tensor, key), made now or kept from an earlier call."""
        if torch.compiler.is_compiling():
            return make()
        for kept_tensor, kept_key, value in self.kept:
            if kept_tensor is tensor and kept_key == (tensor._version, key):
                return value
        value = make()
        self.kept = [(tensor, (tensor._version, key), value), *self.kept][: self.size]
        return value


# the unpadding plan of the last mask the thread saw (one a forward)
_PLANS = PerTensorCache(1)
# `all_keys`: ((B, keys, device), the cache_seqlens of a decode step) the thread made last
_this_thread = threading.local()


def _all_keys(batch: int, keys: int, device: torch.device) -> torch.Tensor:
    """cache_seqlens [B] = keys (int32): the last one made in this thread where it fits (every layer
    of a decode step asks for the same; decode_attention only reads it), not while torch.compile
    traces."""
    if torch.compiler.is_compiling():
        return torch.full((batch,), keys, dtype=torch.int32, device=device)
    kept = getattr(_this_thread, "all_keys", None)
    if kept is None or kept[0] != (batch, keys, device):
        kept = _this_thread.all_keys = ((batch, keys, device), torch.full((batch,), keys, dtype=torch.int32, device=device))
    return kept[1]


class _UnpadPlan(NamedTuple):
    """A padded batch as packed sequences, every shape the batch's (B, Lq, S), none the mask's
    contents: q's B x Lq rows and k's first B x S rows in an order that puts each tensor's real
    rows first, in (sequence, position) order, and its padding after (`query_index`, `key_index`:
    (sequence, position) pairs; `query_order`: q's rows in that order, in their [B x Lq]
    flattening). The packed sequences: 0..B-1 the real rows of each sequence; then B that each
    hold one sequence's padding queries and no key (a row that sees no key comes out 0); then one
    of every padding key and no query. So max_seqlen_q is Lq, and B x S bounds max_seqlen_k."""

    query_order: torch.Tensor
    query_index: tuple[torch.Tensor, torch.Tensor]
    key_index: tuple[torch.Tensor, torch.Tensor]
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int


def _unpad_plan(attention_mask: torch.Tensor, len_q: int) -> _UnpadPlan:
    """The plan of a 2-D padding mask [B, S] (S <= Lk: key j < S is real where mask[b, j], and keys
    past S are padding, never gathered; the queries are the last Lq of the S), or the one made for
    this very mask by the layer before."""
    return _PLANS.get(attention_mask, len_q, lambda: _make_unpad_plan(attention_mask, len_q))


def _make_unpad_plan(attention_mask: torch.Tensor, len_q: int) -> _UnpadPlan:
    key_real = attention_mask.bool()
    batch, seen = key_real.shape
    query_real = key_real[:, seen - len_q : seen]
    query_counts, key_counts = query_real.sum(1, dtype=torch.int32), key_real.sum(1, dtype=torch.int32)

    def real_first(real):  # flattened positions, the real ones first, each group in (sequence, position) order
        return torch.argsort((~real).flatten().to(torch.int8), stable=True)

    query_order, key_order = real_first(query_real), real_first(key_real)
    query_ends, key_ends = query_counts.cumsum(0, dtype=torch.int32), key_counts.cumsum(0, dtype=torch.int32)
    padding_ends = query_ends[-1:] + (len_q - query_counts).cumsum(0, dtype=torch.int32)
    start = query_ends.new_zeros(1)
    return _UnpadPlan(
        query_order, (query_order // len_q, query_order % len_q), (key_order // seen, key_order % seen),
        torch.cat([start, query_ends, padding_ends, padding_ends[-1:]]),
        torch.cat([start, key_ends, key_ends[-1:].expand(batch), start + batch * seen]),
        len_q, batch * seen,
    )  # fmt: skip


def _unpadded_attention(q, k, v, plan: _UnpadPlan, causal: bool, scaling, backend: str) -> torch.Tensor:
    """q [B, Lq, Hq, D], k and v [B, Lk, Hkv, D] -> [B, Lq, Hq, D]: attention over the plan's real
    rows, 0 at padded queries."""
    batch, len_q, heads_q, head_dim = q.shape
    # one gather each, on any strides: k and v are views of transformers' [B, Hkv, L, D] cache,
    # which a reshape to rows would first copy whole
    out = ak.attention_varlen(
        q[plan.query_index], k[plan.key_index], v[plan.key_index],
        plan.cu_seqlens_q, plan.cu_seqlens_k, plan.max_seqlen_q, plan.max_seqlen_k, causal=causal, softmax_scale=scaling,
        backend=backend,
    )  # fmt: skip
    padded = out.new_empty(batch * len_q, heads_q, head_dim).index_copy_(0, plan.query_order, out)
    return padded.view(batch, len_q, heads_q, head_dim)


def register_attention() -> None:
    """The "aurora" attention implementation in transformers' registries (idempotent): then
    `from_pretrained(..., attn_implementation="aurora")` and `model.set_attn_implementation("aurora")`
    select it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, _attention)
    AttentionMaskInterface.register(ATTENTION_NAME, _padding_mask)


def _padding_mask(*args, attention_mask=None, kv_length=None, **kwargs):
    """transformers' flash_attention_mask (the 2-D padding mask, None where nothing is padded), but
    while torch.compile traces, the mask as it is: its test for a padded token is a host read, a
    graph break in every forward. An unpadded batch's mask then takes the padded way (the same
    result). Where that leaves no mask but the keys include a static cache's unwritten slots, the
    mask of the written ones (`_written_keys`). transformers calls mask builders with keywords, in
    4.x and 5 alike."""
    from transformers.masking_utils import flash_attention_mask

    if attention_mask is not None and torch.compiler.is_compiling():
        return attention_mask[:, -kv_length:]
    mask = flash_attention_mask(*args, attention_mask=attention_mask, kv_length=kv_length, **kwargs)
    return mask if mask is not None else _written_keys(kv_length, **kwargs)


def _written_keys(kv_length: int, batch_size: int, **kwargs):
    """None where every one of the kv_length keys holds a token, else a padding mask of the written
    ones. A static cache hands attention all of its slots, written or not, and transformers' generate
    drops a padding mask of ones (it keeps it for flash-attn's entries alone): with no mask, a decode
    step attended the unwritten slots too (their zeros, a wrong answer). The tokens seen after this
    forward's queries are q_offset + q_length (transformers 5; q_offset a device tensor where the
    cache keeps its length there: a static cache) or cache_position[-1] + 1 (4.x). A decode step gets
    a mask of all kv_length keys, made on the device: no host read, and no shape that depends on
    the count (a captured or compiled step). Several queries get the all-ones mask of the seen keys,
    which the unpadded path reads as its queries being the last of them: its width is the count,
    read on the host once a forward where it is on the device (several tokens into a static cache
    that holds tokens already: under torch.compile, a graph break there)."""
    if "q_length" in kwargs and "q_offset" in kwargs:
        q_length, seen = kwargs["q_length"], kwargs["q_offset"] + kwargs["q_length"]
    elif isinstance(kwargs.get("cache_position"), torch.Tensor) and kwargs["cache_position"].numel():
        q_length, seen = kwargs["cache_position"].shape[0], kwargs["cache_position"][-1] + 1
    else:
        return None  # no cache: the keys are the queries' own
    if kv_length <= q_length:
        return None  # the queries' own keys, every one written
    if isinstance(seen, torch.Tensor) and q_length == 1:
        keys = torch.arange(kv_length, device=seen.device)
        return (keys < seen.reshape(-1)[-1]).expand(batch_size, kv_length)
    seen = int(seen)
    if seen >= kv_length:
        return None
    device = kwargs.get("device", kwargs["cache_position"].device if "cache_position" in kwargs else None)
    return torch.ones(batch_size, seen, dtype=torch.bool, device=device)


def select_attention(model, owner) -> None:
    """`owner` (the patched model, or the part of it whose attention is ours) on the "aurora"
    implementation, undone by unpatch(model). The implementation is a field of the config, which
    other models may hold too (`Qwen2ForCausalLM(model.config)`), so `model` first takes a copy of
    its configs (`_own_configs`)."""
    register_attention()
    _own_configs(model)
    owner.set_attn_implementation(ATTENTION_NAME)


# the config field that holds the attention implementation (transformers 4.54 to 5.25): the one
# field of a copy that unpatch does not write back
ATTENTION_FIELD = "_attn_implementation_internal"


def _own_configs(model) -> None:
    """Every module of `model` that holds one of its config objects (the model's, a composite's
    text and vision parts) holds a copy of it instead; unpatch(model) puts the originals back, with
    the fields assigned on the copies in between (`model.config.use_cache = False`) assigned on
    them too: every field but the attention implementation, as if no copy had been taken."""
    from transformers import PretrainedConfig

    copies: dict[int, object] = {}
    copy.deepcopy(model.config, copies)  # copies[id(original)]: the copy of each object inside it too
    # each config (nested ones too) with its copy and the copy's fields as they were made
    pairs = [(o, c, dict(c.__dict__)) for o in _config_objects(model.config) if (c := copies.get(id(o))) is not None]
    replaced = []
    for module in model.modules():
        original = module.__dict__.get("config")
        if isinstance(original, PretrainedConfig) and id(original) in copies:
            module.config = copies[id(original)]
            replaced.append((module, original))

    def restore():
        for original, copied, as_made in pairs:
            _write_back(original, copied, as_made)
        for module, original in replaced:
            module.config = original

    record_undo(model, restore)


def _config_objects(config) -> list:
    """config and the configs inside it (a composite's text_config, vision_config), each once."""
    from transformers import PretrainedConfig

    found, pending = {}, [config]
    while pending:
        current = pending.pop()
        if id(current) not in found:
            found[id(current)] = current
            pending += [v for v in current.__dict__.values() if isinstance(v, PretrainedConfig)]
    return list(found.values())


def _write_back(original, copied, as_made: dict) -> None:
    """Into `original`, the fields of `copied` assigned (or deleted) since the copy was made with the
    fields `as_made`; a field untouched on the copy keeps the original's value, which another model
    sharing the original may have changed meanwhile."""
    fields = original.__dict__
    for name, value in copied.__dict__.items():
        if name != ATTENTION_FIELD and (name not in as_made or as_made[name] is not value):
            fields[name] = value
    for name in as_made:
        if name not in copied.__dict__ and name != ATTENTION_FIELD:
            fields.pop(name, None)
