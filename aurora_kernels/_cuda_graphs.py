"""CUDA-graph helpers shared by the model's encoder graphs and the runtime's decode graphs."""

from __future__ import annotations

import torch


def graphs_supported(device: torch.device) -> bool:
    return device.type == "cuda"


def run_on_side_stream(fn, *args):
    """fn(*args) on a side stream, as CUDA-graph capture wants its first run (lazy library state is
    set up outside the capture; the kernels compile and autotune there)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn(*args)
    torch.cuda.current_stream().wait_stream(side)
    return out


class Graphed:
    """fn of one tensor captured in a CUDA graph: a static input, static outputs that each replay
    overwrites, and whatever fn writes in place (a decode step's KV cache and lengths, its own
    input). fn must have run once at these shapes (`run_on_side_stream`): capture refuses to compile
    or autotune."""

    def __init__(self, fn, x: torch.Tensor, pool=None, own_input: bool = True):
        """pool: a memory pool (torch.cuda.graph_pool_handle()) shared with graphs that are never
        replayed at the same time as this one, and whose outputs are read before it replays.
        own_input False: x itself is the static input (a buffer the caller keeps for this graph
        and others), not a copy of it."""
        self.input = x.clone() if own_input else x
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.output = fn(self.input)

    def __call__(self, x: torch.Tensor):
        """Replay on a copy of x."""
        self.input.copy_(x)
        return self.replay()

    def replay(self):
        """Replay on the input as it stands (fn may have written it: a step that feeds itself)."""
        self.graph.replay()
        return self.output
