"""bench/profiling.py: Inductor's code of the graphs a block compiles, for reading beside a profile."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.profiling import inductor_code_to


def test_the_code_of_each_graph_compiled_in_the_block_is_written_and_the_hook_restored(
    tmp_path: Path,
) -> None:
    from torch._inductor.graph import GraphLowering

    torch._dynamo.reset()
    before = GraphLowering.save_output_code
    scaled_silu = torch.compile(lambda x: torch.nn.functional.silu(x) * 3.0)
    with inductor_code_to(tmp_path, True) as codes:
        scaled_silu(torch.randn(4, 8))
    assert len(codes) == 1 and GraphLowering.save_output_code is before
    written = (tmp_path / "inductor_code" / "graph_0.py").read_text()
    assert written == codes[0] and "def call(" in written  # the graph's kernel sequence
    # not asked for: nothing is hooked or written
    with inductor_code_to(tmp_path / "off", False) as nothing:
        assert GraphLowering.save_output_code is before
    assert nothing == [] and not (tmp_path / "off").exists()
