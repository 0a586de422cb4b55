"""CUDA graphs: replay a forward pass from graphs captured at a few batch sizes.

One eager forward pass of a small batch costs milliseconds of kernel launches on the CPU; a graph
replays the same kernels in a fraction of that.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class GraphedForward:
    """A forward pass replayed from CUDA graphs captured at power-of-two batch sizes up to `max_batch`.

    A batch is copied into the smallest captured size that holds it; the rows past it keep
    whatever an earlier batch left there (every row is computed independently, so they cannot
    affect the real ones). Larger batches run eagerly. Not thread-safe: one caller at a time.
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor,
                 max_batch: int) -> None:
        self.forward = forward
        self.sizes = [1 << power for power in range(max(1, max_batch - 1).bit_length() + 1)]
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        # One memory pool for all sizes: safe because the graphs never run concurrently and none
        # reads another's output, whatever order they are replayed in (pytorch/pytorch#166975).
        pool = torch.cuda.graph_pool_handle()
        # Largest first, so the smaller graphs fit in the memory the largest one reserved.
        for size in reversed(self.sizes):
            static_input = example[:1].expand(size, *example.shape[1:]).clone()
            warmup = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            warmup.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(warmup):
                for _ in range(2):  # lets lazy initialisation (cuBLAS handles, autotuning) happen outside capture
                    forward(static_input)
            torch.cuda.current_stream().wait_stream(warmup)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                static_output = forward(static_input)
            self._graphs[size] = (graph, static_input, static_output)
        replayed, eager = self(example[:1]).float(), forward(example[:1]).float()
        if not torch.allclose(replayed, eager, atol=1e-2, rtol=1e-2):
            raise RuntimeError(f"a replayed graph differs from eager by {(replayed - eager).abs().max():.3g}")

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        count = len(batch)
        size = next((size for size in self.sizes if size >= count), None)
        if size is None:
            return self.forward(batch)
        graph, static_input, static_output = self._graphs[size]
        static_input[:count].copy_(batch)
        graph.replay()
        return static_output[:count]
