"""bench.registry: names, aliases, ownership, clashes naming both plugins, "did you mean"."""

from __future__ import annotations

import pytest

from bench.registry import Registry, RegistryError


def make_ddim(train_config, **options):
    """DDIM, deterministic."""


def make_other(train_config, **options):
    """Another scheduler."""


@pytest.fixture()
def schedulers() -> Registry:
    registry = Registry("schedulers")
    registry.add("ddim", make_ddim, aliases=("DDIM", "ddim-scheduler"), plugin="bench_builtins.schedulers")
    registry.add("dpm++2m", make_other, aliases=("dpmpp2m",), plugin="bench_builtins.schedulers")
    return registry


def test_name_and_aliases_resolve_to_one_entry(schedulers: Registry) -> None:
    entry = schedulers.get("ddim")
    assert schedulers.get("DDIM") is entry and schedulers.get("ddim-scheduler") is entry
    assert entry.name == "ddim" and entry.aliases == ("DDIM", "ddim-scheduler")
    assert entry.factory is make_ddim and entry.kind == "schedulers"
    assert entry.description == "DDIM, deterministic."
    assert "dpmpp2m" in schedulers and "nope" not in schedulers


def test_ownership(schedulers: Registry) -> None:
    schedulers.add("my-ddim", make_ddim, aliases=("myddim",), plugin="my_ddim")
    assert schedulers.get("myddim").plugin == "my_ddim"
    assert schedulers.get("ddim").plugin == "bench_builtins.schedulers"


def test_iteration_is_sorted_and_counts_names_not_aliases(schedulers: Registry) -> None:
    assert [e.name for e in schedulers] == ["ddim", "dpm++2m"]
    assert len(schedulers) == 2


def test_a_single_alias_string_is_one_alias() -> None:
    registry = Registry("schedulers")
    registry.add("euler", make_other, aliases="euler-discrete", plugin="p")
    assert registry.get("euler-discrete").aliases == ("euler-discrete",)


@pytest.mark.parametrize(
    ("name", "aliases", "clashing"),
    [("ddim", (), "ddim"), ("fancy", ("ddim-scheduler",), "ddim-scheduler"), ("DDIM", (), "DDIM")],
)
def test_registered_twice_names_both_plugins(schedulers: Registry, name, aliases, clashing) -> None:
    with pytest.raises(RegistryError) as info:
        schedulers.add(name, make_other, aliases=aliases, plugin="bench_name_clash")
    message = str(info.value)
    assert repr(clashing) in message
    assert "'bench_builtins.schedulers'" in message and "'bench_name_clash'" in message
    assert schedulers.get(clashing).factory is make_ddim  # the first registration stands


def test_a_clash_registers_nothing(schedulers: Registry) -> None:
    with pytest.raises(RegistryError):
        schedulers.add("fresh", make_other, aliases=("ddim",), plugin="late")
    assert "fresh" not in schedulers


def test_unknown_name_lists_close_matches(schedulers: Registry) -> None:
    with pytest.raises(RegistryError) as info:
        schedulers.get("ddmi")
    message = str(info.value)
    assert "unknown scheduler 'ddmi'" in message
    assert "Did you mean: ddim" in message
    assert "Known: ddim, dpm++2m." in message


def test_unknown_name_without_close_match(schedulers: Registry) -> None:
    with pytest.raises(RegistryError) as info:
        schedulers.get("zzzzzz")
    assert "Did you mean" not in str(info.value) and "Known: ddim, dpm++2m" in str(info.value)


@pytest.mark.parametrize("bad", ["", None, 3])
def test_invalid_name(bad) -> None:
    with pytest.raises(RegistryError, match="invalid name"):
        Registry("models").add(bad, make_other, plugin="p")


def test_non_callable_factory() -> None:
    with pytest.raises(RegistryError, match="non-callable factory"):
        Registry("models").add("m", "not a function", plugin="p")
