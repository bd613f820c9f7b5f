"""The ddpm-unet model plugin: presets, config round trip, the reference parameter count."""

from __future__ import annotations

import json

import pytest
import torch

from bench.plugins import get
from bench_builtins.models.ddpm_unet import PRESETS, SEED_PARAMETERS, make_ddpm_unet

torch.set_num_threads(1)  # 2 shared cores: OpenMP threads fighting other processes is far slower


def _count(preset: str) -> int:
    with torch.device("meta"):  # no memory, no init cost
        model = make_ddpm_unet(preset)
    return sum(p.numel() for p in model.parameters())


def test_seed_preset_is_the_reference_unet() -> None:
    n = _count("seed")
    assert n == SEED_PARAMETERS
    assert round(n / 1e6, 1) == 113.7  # docs: 113.7 M parameters, counting the Linear(24, 512)
    with torch.device("meta"):
        model = make_ddpm_unet("seed")
    unet = model.unet.config
    assert tuple(unet.block_out_channels) == (128, 128, 256, 256, 512, 512)
    assert unet.class_embed_type == "identity" and unet.layers_per_block == 2
    assert tuple(model.cond_embed.weight.shape) == (512, 24)


def test_preset_sizes() -> None:
    assert 5e6 <= _count("small") <= 15e6
    assert _count("tiny") < 100_000
    assert _count("small") < _count("base") < _count("seed")


def test_registered_as_a_model_plugin() -> None:
    """The register_models hook registers ddpm-unet with presets and a default checkpoint."""
    entry = get("models", "ddpm-unet")
    assert entry.factory is make_ddpm_unet
    assert set(entry.factory.presets) == {"seed", "small", "base", "tiny"} == set(PRESETS)
    assert entry.factory.default_checkpoint().name == "ddpm-unet-small-synthetic.safetensors"


def test_forward_and_config_round_trip() -> None:
    torch.manual_seed(0)
    model = make_ddpm_unet("tiny")
    config = json.loads(json.dumps(model.config))  # JSON-serialisable
    assert config["preset"] == "tiny"
    rebuilt = make_ddpm_unet(**config)
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())
    x, t, c = torch.randn(2, 3, 64, 64), torch.tensor([1, 900]), torch.zeros(2, 24)
    c[0, 9] = 1
    with torch.no_grad():
        eps = model(x, t, c)
        assert eps.shape == x.shape
        assert torch.equal(eps, rebuilt(x, t, c))
        assert not torch.allclose(eps[:1], model(x[:1], t[:1], torch.zeros(1, 24)))  # the condition matters


def test_overrides_and_errors() -> None:
    model = make_ddpm_unet("tiny", block_out_channels=(8, 32))
    assert model.config["block_out_channels"] == [8, 32]
    with pytest.raises(ValueError, match="unknown ddpm-unet preset 'huge'"):
        make_ddpm_unet("huge")
    with pytest.raises(ValueError, match="unknown ddpm-unet option"):
        make_ddpm_unet("tiny", channels=3)
