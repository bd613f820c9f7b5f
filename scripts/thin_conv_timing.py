"""Time the UNet's two thin end convolutions alone, each way they can run, on a CUDA GPU.

``conv_in`` (3 -> 128) and ``conv_out`` (128 -> 3), 3x3 at 64x64, batch 512 by default, bf16
autocast and channels_last as the sampling fast path runs them, each compiled by torch.compile:
cuDNN (``F.conv2d``), padded to 8 channels (bench/padded_conv.py), and as matrix products
(gathered neighbourhoods for the thin input, per-tap partial sums for the thin output). Each is
checked against the fp32 convolution and timed with CUDA events (the median of ``--repeats``
rounds of ``--iters`` calls). Writes OUT_DIR/thin_convs.json and prints a table.

Usage: python scripts/thin_conv_timing.py OUT_DIR [--batch 512] [--size 64] [--iters 50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.padded_conv import padded_conv  # noqa: E402
from bench.thin_conv import conv_by_gather, conv_by_scatter  # noqa: E402


def timed(fn, x: torch.Tensor, iters: int, repeats: int) -> list[float]:
    """Milliseconds per call, one figure per round."""
    rounds = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn(x)
        end.record()
        torch.cuda.synchronize()
        rounds.append(start.elapsed_time(end) / iters)
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    forms = {
        "cudnn": lambda conv, x: conv(x),
        "padded": padded_conv,
        "gather": conv_by_gather,
        "scatter": conv_by_scatter,
    }
    shapes = {"conv_in": (3, 128, torch.float32), "conv_out": (128, 3, torch.bfloat16)}
    rows = []
    for name, (cin, cout, dtype) in shapes.items():
        torch.manual_seed(0)
        conv = nn.Conv2d(cin, cout, 3, padding=1).to(device).to(memory_format=torch.channels_last)
        x = torch.randn(args.batch, cin, args.size, args.size, device=device, dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            reference = conv.float()(x.float())
        for form, fn in forms.items():
            if form == "gather" and cout < cin or form == "scatter" and cin < cout:
                continue  # the form for the other side's thinness: many times the bytes

            def call(x, fn=fn, conv=conv):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return fn(conv, x)

            compiled = torch.compile(call)
            with torch.no_grad():
                out = compiled(x)
                err = (out.float() - reference).abs().max().item() / reference.abs().max().item()
                timed(compiled, x, 3, 1)  # warm-up: cuDNN's search, the first launches
                ms = timed(compiled, x, args.iters, args.repeats)
            row = {
                "conv": name,
                "form": form,
                "ms": statistics.median(ms),
                "rounds_ms": ms,
                "max_err_rel": err,
                "batch": args.batch,
                "size": args.size,
            }
            rows.append(row)
            print(
                f"{name:9s} {form:8s} {row['ms'] * 1000:8.1f} us   max err {err:.2e} (of max |y|)", flush=True
            )
    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    (args.out / "thin_convs.json").write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
