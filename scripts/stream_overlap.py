"""Does the sampling model run faster as several sub-batches on CUDA streams of their own?

A step of the `seed` UNet is about half convolutions (tensor-core bound) and half fused
normalisation kernels (memory bound), one after the other on one stream (BENCHMARKS.md, session
29). Sub-batches on streams of their own could let one's memory-bound kernels run beside
another's convolutions. This times the compiled model call (``bench run``'s GPU default, untuned),
each sub-batch captured in a CUDA graph of its own with its own memory:

- ``serial``: the K graphs replayed one after the other on one stream (the baseline);
- ``streams``: each graph replayed on a stream of its own, all K streams at once;

for each sub-batch size of ``--batches`` and each K of ``--streams``, ``--calls`` replays per graph
per round, ``--rounds`` rounds (the median kept). It also checks that the streams give the same
outputs as the serial replays (a graph's inputs and memory are its own, so they should, bit for
bit). Writes ``OUT_DIR/stream_overlap.json`` and prints one line per setting.

Usage: python scripts/stream_overlap.py OUT_DIR [--preset seed] [--batches 256,512] [--streams 1,2]
       [--calls 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bench.atomic import atomic_write_json
from bench.plugins import get
from bench.profiling import cuda_ms_per_call
from bench.sampling import SamplingOptions, _ModelCall, model_image_shape


def _graphed(
    call: _ModelCall, shape: tuple[int, int, int], labels: int, batch: int, seed: int
) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """One model call at ``batch`` captured in a CUDA graph with a private memory pool, on inputs
    of its own (random noise, random multi-hot conditions); its output buffer."""
    generator = torch.Generator("cuda").manual_seed(seed)
    x = torch.randn((batch, *shape), device="cuda", generator=generator)
    cond = (torch.rand((batch, labels), device="cuda", generator=generator) < 0.1).float()
    t = torch.full((), 500, device="cuda", dtype=torch.long)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture: compile, cuDNN's algorithm choice
        for _ in range(3):
            call(x, t, cond, 1.0)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call(x, t, cond, 1.0)
    graph.inputs = (x, t, cond)  # the graph reads their memory: it must outlive every replay
    return graph, out


def _replay(graphs: list[torch.cuda.CUDAGraph], streams: list[torch.cuda.Stream] | None, calls: int) -> None:
    """``calls`` replays of every graph: one after the other on the current stream, or each on its
    own stream of ``streams``, forked from and joined to the current one (so an event recorded on
    it after this times them all)."""
    if streams is None:
        for _ in range(calls):
            for graph in graphs:
                graph.replay()
        return
    main = torch.cuda.current_stream()
    for stream, graph in zip(streams, graphs, strict=True):
        stream.wait_stream(main)
        with torch.cuda.stream(stream):
            for _ in range(calls):
                graph.replay()
    for stream in streams:
        main.wait_stream(stream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--preset", default="seed")
    parser.add_argument("--batches", default="256,512", help="sub-batch sizes, comma-separated")
    parser.add_argument("--streams", default="1,2", help="sub-batches at once (K), comma-separated")
    parser.add_argument("--calls", type=int, default=20, help="replays of each graph per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    try:
        batches = [int(b) for b in args.batches.split(",")]
        counts = [int(k) for k in args.streams.split(",")]
    except ValueError:
        parser.error("--batches and --streams take whole numbers separated by commas, such as 256,512")
    if min(batches + counts) < 1 or args.calls < 1 or args.rounds < 1:
        parser.error("--batches, --streams, --calls and --rounds must be at least 1")
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device (it times CUDA graphs on CUDA streams)")
    torch.manual_seed(0)
    model = get("models", "ddpm-unet").factory(preset=args.preset).eval().cuda()
    labels = model.cond_embed.in_features
    shape = model_image_shape(model)
    rows: list[dict[str, Any]] = []
    with torch.inference_mode():
        model.to(memory_format=torch.channels_last)  # as sample() does for the GPU default
        for batch in batches:
            options = SamplingOptions(cuda_graphs=False, batch_size=batch).resolved("cuda")
            call = _ModelCall(model, options, torch.device("cuda"))
            captured = [_graphed(call, shape, labels, batch, seed) for seed in range(max(counts))]
            for k in counts:
                graphs = [graph for graph, _ in captured[:k]]
                outputs = [out for _, out in captured[:k]]
                streams = [torch.cuda.Stream() for _ in range(k)]
                _replay(graphs, None, 2)
                serial_outputs = [out.clone() for out in outputs]
                _replay(graphs, streams, 2)
                mismatch = max(
                    float((a - b).abs().max()) for a, b in zip(outputs, serial_outputs, strict=True)
                )
                timings = {"serial": [], "streams": []}
                for _ in range(args.rounds):  # interleaved, so drift in clocks hits both alike
                    for name, on in (("serial", None), ("streams", streams)):
                        timings[name] += cuda_ms_per_call(partial(_replay, graphs, on, args.calls), repeats=1)
                row: dict[str, Any] = {
                    "batch": batch,
                    "streams": k,
                    "mismatch": mismatch,
                    "options": asdict(options),
                }
                for name, values in timings.items():
                    ms_per_call = statistics.median(values) / args.calls  # all K sub-batches once
                    row[name] = {
                        "rounds_ms": values,
                        "ms_per_model_call": ms_per_call,
                        "ms_per_512_images": ms_per_call * 512 / (batch * k),
                        # the model alone, 100 steps (the sampler's DDPM step adds about 0.2 ms)
                        "images_per_s_at_100_steps": batch * k / (ms_per_call * 100 / 1e3),
                    }
                row["speedup"] = row["serial"]["ms_per_model_call"] / row["streams"]["ms_per_model_call"]
                rows.append(row)
                # Written after each row: a later failure keeps the rows before it.
                head = {
                    "device": torch.cuda.get_device_name(),
                    "torch": torch.__version__,
                    "preset": args.preset,
                }
                atomic_write_json(args.out / "stream_overlap.json", {**head, "rows": rows})
                print(
                    f"batch {batch} x {k}: serial {row['serial']['ms_per_512_images']:.2f} ms per 512 images, "
                    f"streams {row['streams']['ms_per_512_images']:.2f} ({row['speedup']:.3f}x), "
                    f"model-only {row['streams']['images_per_s_at_100_steps']:.1f} images/s at 100 steps; "
                    f"largest output difference {mismatch:.3g}",
                    flush=True,
                )
            del captured, call
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
