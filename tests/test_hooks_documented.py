"""Every hook is documented and tested (after datasette's test_plugin_hooks_are_documented)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from bench import hookspecs

ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(
    name
    for name, obj in vars(hookspecs).items()
    if inspect.isfunction(obj) and getattr(obj, "bench_spec", None) is not None
)


def test_hooks_found() -> None:
    assert "register_schedulers" in HOOKS and len(HOOKS) >= 5


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_docstring(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert len(doc) > 40, f"hook {hook} in bench/hookspecs.py needs a docstring stating its factory contract"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_in_contributing(hook: str) -> None:
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    heading = re.search(rf"^#+ .*\b{hook}\b", text, re.MULTILINE)
    assert heading or f"`{hook}`" in text, f"document hook {hook} in CONTRIBUTING.md (a heading or `{hook}`)"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_exercised_by_a_test(hook: str) -> None:
    here = Path(__file__).resolve()
    users = [
        p
        for p in (ROOT / "tests").rglob("*.py")
        if p != here and "tests/plugins/" not in p.as_posix() and hook in p.read_text(encoding="utf-8")
    ]
    assert users, f"no test in tests/ mentions hook {hook}; add one that exercises it"
