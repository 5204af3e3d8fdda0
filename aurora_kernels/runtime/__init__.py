"""The request runtime: the state a model's requests share (KV cache, captured decode steps),
made once and held by the caller. `AuroraEdgeV.generate` runs on one it keeps."""

from aurora_kernels.runtime.runtime import (
    AUTO_GRAPH_MIN_NEW_TOKENS,
    BATCH_BUCKETS,
    DECODE_MODES,
    EOS_CHECK_INTERVAL,
    Runtime,  # fmt: skip
    auto_decode_mode,
    batch_buckets,
)

__all__ = ["AUTO_GRAPH_MIN_NEW_TOKENS", "BATCH_BUCKETS", "DECODE_MODES", "EOS_CHECK_INTERVAL", "Runtime", "auto_decode_mode",
           "batch_buckets"]  # fmt: skip
