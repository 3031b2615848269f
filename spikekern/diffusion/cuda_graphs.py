"""Sampling with the denoiser replayed from CUDA graphs.

A sampler calls the network tens to a thousand times on inputs of one shape. A spiking network launches
many small kernels per call (a neuron kernel after every convolution, over all T steps), so at the batch
sizes of sampling the GPU waits on the CPU's launches; a CUDA graph records one call's launches and
replays them with one. ``GraphedDenoiser`` captures ``model(x, t)`` at the first call for each input
shape and replays it for the rest of one sampling run.

What a graph fixes at capture: everything the model reads from Python (neuron thresholds, the spike ops'
paths, autocast's dtype) and the addresses of its inputs, outputs and weights. So a graph lives for one
``pipeline.sample`` call, which is where the pipelines create it (after threshold guidance has set the
thresholds), and the model must not synchronise with the host inside its forward: spikekern's ops do not
(spike validation is off on CUDA by default; ``path="auto"`` runs dense while a graph is captured), but
a forward hook that reads values on the host (``spikekern.energy.ActivityMonitor``) does, so sampling
with a monitor runs eagerly.
"""

import torch


class GraphedDenoiser:
    """``model(*inputs)`` (CUDA tensors) replayed from a CUDA graph captured at the first call for each
    combination of input shapes and dtypes; returns a fresh tensor each call, equal to the eager result.

    ``warmup_calls`` eager calls on a side stream precede each capture, as CUDA graphs require: they
    compile and autotune the Triton kernels and let cuDNN choose its algorithms outside the capture."""

    def __init__(self, model, warmup_calls=2):
        if isinstance(warmup_calls, bool) or not isinstance(warmup_calls, int):
            raise TypeError(f"warmup_calls must be an int, got {type(warmup_calls).__name__}")
        if warmup_calls < 0:
            raise ValueError(f"warmup_calls must be at least 0, got {warmup_calls}")
        self.model = model
        self.warmup_calls = warmup_calls
        self._graphs = {}
        self._pool = None  # one memory pool for all of this denoiser's graphs: they never run at once

    def __call__(self, *inputs):
        key = tuple((tuple(x.shape), x.dtype, x.device) for x in inputs)
        if key not in self._graphs:
            self._graphs[key] = self._capture(inputs)
        graph, static_inputs, static_output = self._graphs[key]
        for static, x in zip(static_inputs, inputs):
            static.copy_(x)
        graph.replay()
        return static_output.clone()  # the next replay overwrites the static output

    @torch.no_grad()
    def _capture(self, inputs):
        static_inputs = [x.clone() for x in inputs]
        side_stream = torch.cuda.Stream(inputs[0].device)
        side_stream.wait_stream(torch.cuda.current_stream(inputs[0].device))
        # A weight cast cached by an enclosing autocast during warm-up would be read by the graph but freed
        # when that autocast exits: casting inside the graph instead keeps every tensor it reads its own.
        with _uncached_autocast(), torch.cuda.stream(side_stream):
            for _ in range(self.warmup_calls):
                self.model(*static_inputs)
        torch.cuda.current_stream(inputs[0].device).wait_stream(side_stream)
        graph = torch.cuda.CUDAGraph()
        with _uncached_autocast(), torch.cuda.graph(graph, pool=self._pool):
            static_output = self.model(*static_inputs)
        self._pool = graph.pool()
        return graph, static_inputs, static_output


def _uncached_autocast():
    enabled = torch.is_autocast_enabled("cuda")
    dtype = torch.get_autocast_dtype("cuda")
    return torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False)


def denoiser(model, cuda_graphs):
    """``model`` itself, or with ``cuda_graphs`` a ``GraphedDenoiser`` of it (its weights on a CUDA device)."""
    if not isinstance(cuda_graphs, bool):
        raise TypeError(f"cuda_graphs must be a bool, got {type(cuda_graphs).__name__}")
    if not cuda_graphs:
        return model
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise ValueError(f"cuda_graphs needs the model on a CUDA device, it is on {device}")
    return GraphedDenoiser(model)
