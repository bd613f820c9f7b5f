"""Which memory layouts the backward graph hands each convolution, as torch.compile traces it.

A compiled training step's profile on an H100 (BENCHMARKS.md, session 8) spent 23 % of its device
time in activation-sized copies. This script looks for where they come from without a GPU: it
traces one training step of ``ddpm-unet`` (bf16 autocast, channels_last weights, as ``bench train``
runs it on CUDA) through AOTAutograd, as torch.compile does, and counts the
``convolution_backward`` calls of the backward graph by the layouts of their gradient, saved
input and weight. The layouts are those of the traced graph (eager semantics, from the ops' meta
functions), the ones Inductor's backward graph is held to when it runs without its own layout
optimisation; a convolution whose arguments mix channels_last and NCHW makes cuDNN convert them
with a copy.

Writes ``OUT_DIR/conv_layouts.json`` and prints the table.

Usage: python scripts/conv_layouts.py OUT_DIR [--preset seed] [--group-norm native|views|channels-last]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from bench.atomic import atomic_write_json
from bench.checkpoints import build_model
from bench.groupnorm import GROUP_NORMS, use_group_norm


def layout(node: Any) -> str:
    """``channels_last``, ``NCHW``, ``both`` (a shape where the two agree, e.g. 1x1 kernels) or the strides."""
    value = node.meta.get("val") if hasattr(node, "meta") else None
    if not isinstance(value, torch.Tensor):
        return "-"
    nchw = value.is_contiguous()
    last = value.dim() == 4 and value.is_contiguous(memory_format=torch.channels_last)
    if nchw and last:
        return "both"
    return "NCHW" if nchw else "channels_last" if last else str(tuple(value.stride()))


def backward_conv_layouts(preset: str, group_norm: str, batch: int = 2) -> Counter:
    """(gradient, input, weight) layouts -> number of ``convolution_backward`` calls in one step."""
    from torch._dynamo.backends.common import aot_autograd

    seen: Counter = Counter()

    def forward_compiler(gm: torch.fx.GraphModule, _: Any) -> Any:
        return gm.forward

    def backward_compiler(gm: torch.fx.GraphModule, _: Any) -> Any:
        for node in gm.graph.nodes:
            if node.target is torch.ops.aten.convolution_backward.default:
                seen[tuple(layout(arg) for arg in node.args[:3])] += 1
        return gm.forward

    torch.manual_seed(0)
    model = build_model("ddpm-unet", {"preset": preset})
    use_group_norm(model, group_norm)
    model.to(memory_format=torch.channels_last)
    compiled = torch.compile(
        model, backend=aot_autograd(fw_compiler=forward_compiler, bw_compiler=backward_compiler)
    )
    images = torch.randn(batch, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    steps, conds = torch.randint(0, 1000, (batch,)), torch.zeros(batch, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = compiled(images, steps, conds)
    getattr(out, "sample", out).float().square().mean().backward()
    torch._dynamo.reset()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--preset", default="seed")
    parser.add_argument(
        "--group-norm", choices=tuple(GROUP_NORMS), default="native", help="bench/groupnorm.py"
    )
    args = parser.parse_args()
    seen = backward_conv_layouts(args.preset, args.group_norm)
    mixed = sum(n for kinds, n in seen.items() if {"NCHW", "channels_last"} <= set(kinds))
    rows = [
        {"grad_output": g, "input": i, "weight": w, "calls": n}
        for (g, i, w), n in sorted(seen.items(), key=lambda kv: -kv[1])
    ]
    summary = {
        "preset": args.preset,
        "group_norm": args.group_norm,
        "torch": torch.__version__,
        "convolution_backward_calls": sum(seen.values()),
        "mixed_layout_calls": mixed,
        "layouts": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "conv_layouts.json", summary)
    print(
        f"{args.preset}, GroupNorm {args.group_norm}: {summary['convolution_backward_calls']} "
        f"convolution_backward calls, {mixed} mixing channels_last and NCHW"
    )
    for row in rows:
        print(
            f"  {row['calls']:4d}  grad {row['grad_output']:>14}  input {row['input']:>14}  weight {row['weight']:>14}"
        )


if __name__ == "__main__":
    main()
