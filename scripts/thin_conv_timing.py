"""Time the UNet's two thin end convolutions alone, each way they can run, on a CUDA GPU.

``conv_in`` (3 -> 128) and ``conv_out`` (128 -> 3), 3x3 at 64x64, batch 512 by default, bf16
autocast and channels_last as the sampling fast path runs them, each compiled by torch.compile:
cuDNN (``F.conv2d``), padded to 8 channels (bench/padded_conv.py), as one matrix product
each (below: gathered neighbourhoods for the thin input, per-tap partial sums for the thin output),
and by this project's Triton kernels (bench/end_convs.py; ``triton``). The Triton output kernel
takes the UNet's last GroupNorm and SiLU with it, so it is timed against the three modules in
torch (``norm_silu_conv_out``: compiled GroupNorm from channel statistics + SiLU + cuDNN).
Each is checked against the fp32 convolution and timed with CUDA events, cuDNN's benchmark mode
on (the median of ``--repeats`` rounds of ``--iters`` calls). Writes OUT_DIR/thin_convs.json and
prints a table.

The matrix-product forms were a sampling switch for one commit (a5473aa, reverted): on an H100 they
ran slower than cuDNN alone (1,129 against 975 us, 869 against 687 us) and the `seed` preset sampled
at 0.944x with them (BENCHMARKS.md, session 34). They stay here so the measurement can be repeated
on another card or cuDNN.

Usage: python scripts/thin_conv_timing.py OUT_DIR [--batch 512] [--size 64] [--iters 50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.atomic import atomic_write_json  # noqa: E402
from bench.end_convs import use_triton_end_convs  # noqa: E402
from bench.groupnorm import GroupNormByChannelStats  # noqa: E402
from bench.padded_conv import padded_conv, padded_to  # noqa: E402
from bench.profiling import cuda_ms_per_call  # noqa: E402

# cuBLAS's bf16 tensor-core kernels want operand widths of a multiple of 8, as cuDNN's do: the
# gathered and produced widths are padded with zeros, rounded up by bench.padded_conv.padded_to.


def conv_by_gather(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a thin input: each pixel's neighbourhood gathered (im2col), one product."""
    out_c, in_c, kh, kw = conv.weight.shape
    n, _, h, w = x.shape
    ph, pw = conv.padding
    padded = F.pad(x, (pw, pw, ph, ph))
    taps = [padded[:, :, dy : dy + h, dx : dx + w] for dy in range(kh) for dx in range(kw)]
    width = in_c * kh * kw
    rows = torch.cat(taps, dim=1).permute(0, 2, 3, 1)  # (n, h, w, width), ordered (dy, dx, c)
    weight = conv.weight.permute(0, 2, 3, 1).reshape(out_c, width)  # the same order
    extra = padded_to(width) - width
    if extra:
        rows, weight = F.pad(rows, (0, extra)), F.pad(weight, (0, extra))
    y = rows.reshape(n * h * w, width + extra) @ weight.t()
    if conv.bias is not None:
        y = y + conv.bias
    return y.view(n, h, w, out_c).permute(0, 3, 1, 2)  # NCHW shape, channels_last memory


def conv_by_scatter(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a thin output: every tap's partial sums in one product, then added up."""
    out_c, in_c, kh, kw = conv.weight.shape
    n, _, h, w = x.shape
    ph, pw = conv.padding
    width = kh * kw * out_c
    weight = conv.weight.permute(2, 3, 0, 1).reshape(width, in_c)  # rows ordered (dy, dx, o)
    weight = F.pad(weight, (0, 0, 0, padded_to(width) - width))
    rows = x.permute(0, 2, 3, 1).reshape(n * h * w, in_c)
    partial = (rows @ weight.t())[:, :width].view(n, h, w, kh * kw, out_c)
    # Output (i, j) adds tap (dy, dx) of input pixel (i + dy - ph, j + dx - pw): zero outside.
    partial = F.pad(partial, (0, 0, 0, 0, pw, pw, ph, ph))
    taps = [partial[:, dy : dy + h, dx : dx + w, dy * kw + dx] for dy in range(kh) for dx in range(kw)]
    y = torch.stack(taps).sum(0)
    if conv.bias is not None:
        y = y + conv.bias
    return y.permute(0, 3, 1, 2)


class OutputTail(nn.Module):
    """A UNet's last three modules: GroupNorm (from channel statistics, the fast path's) -> SiLU -> conv_out."""

    def __init__(self, channels: int, out_channels: int, groups: int = 32) -> None:
        super().__init__()
        self.conv_norm_out = GroupNormByChannelStats(groups, channels)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


def on_triton(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (a thin-input ``nn.Conv2d`` or an ``OutputTail``) on the Triton kernels of
    bench/end_convs.py; the switch looks for a ``conv_in``, so a lone convolution gets a holder."""
    switched = copy.deepcopy(module)
    holder = switched
    if isinstance(switched, nn.Conv2d):
        holder = nn.Module()
        holder.add_module("conv_in", switched)
    use_triton_end_convs(holder, True)
    return switched


def forms_of(module: nn.Module) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Each way ``module`` can run, by form name. The matrix-product forms only for
    their own side's thinness (the other side's costs many times the bytes)."""
    if isinstance(module, OutputTail):
        return {"torch": module, "triton": on_triton(module)}
    forms = {"cudnn": module, "padded": functools.partial(padded_conv, module)}
    if module.in_channels < module.out_channels:
        forms |= {"gather": functools.partial(conv_by_gather, module), "triton": on_triton(module)}
    else:
        forms["scatter"] = functools.partial(conv_by_scatter, module)
    return forms


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
    shapes = {
        "conv_in": (3, 128, torch.float32),
        "conv_out": (128, 3, torch.bfloat16),
        "norm_silu_conv_out": (128, 3, torch.bfloat16),
    }
    rows = []
    for name, (cin, cout, dtype) in shapes.items():
        torch.manual_seed(0)
        tail = name == "norm_silu_conv_out"  # timed with the norm and SiLU it takes in
        conv = OutputTail(cin, cout) if tail else nn.Conv2d(cin, cout, 3, padding=1)
        conv = conv.to(device).to(memory_format=torch.channels_last)
        x = torch.randn(args.batch, cin, args.size, args.size, device=device, dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            reference = conv.float()(x.float())
        for form, fn in forms_of(conv).items():

            def call(x, fn=fn):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return fn(x)

            # Every form's call is one code object: past 8 recompiles Dynamo runs it uncompiled
            # (session 36's norm_silu_conv_out triton row was timed so), so each starts afresh.
            torch._dynamo.reset()
            compiled = torch.compile(call)
            with torch.no_grad():
                out = compiled(x)
                err = (out.float() - reference).abs().max().item() / reference.abs().max().item()
                cuda_ms_per_call(functools.partial(compiled, x), 3, 1)  # warm-up: cuDNN's search
                ms = cuda_ms_per_call(functools.partial(compiled, x), args.iters, args.repeats)
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
    atomic_write_json(args.out / "thin_convs.json", info)


if __name__ == "__main__":
    main()
