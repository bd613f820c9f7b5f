"""Condition sets in the test.json format: parsing, validation and multi-hot encoding.

A condition set is a JSON list of conditions; a condition is a list of distinct label names
(``[["red sphere", "cyan cube"], ["gray cylinder"]]``). Every error names the file and the
position (condition index, item index) and says what to do instead.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.jsonfile import read_json

if TYPE_CHECKING:
    import torch

DEFAULT_SPEC = Path(__file__).resolve().parent.parent / "datasets_spec" / "iclevr.toml"

# The same 24 names as datasets_spec/iclevr.toml, for an install that ships without the spec file.
_SHAPES = ("cube", "sphere", "cylinder")
_COLOURS = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
BUILTIN_LABELS = tuple(f"{c} {s}" for s in _SHAPES for c in _COLOURS)


class ConditionError(Exception):
    """A condition file (or label list) the harness cannot use; the message says why and where."""


@dataclass
class ConditionSet:
    """One named list of conditions, e.g. the 32 of test.json."""

    name: str
    source: str
    conditions: list[list[str]]

    def __len__(self) -> int:
        return len(self.conditions)

    @property
    def sha256(self) -> str:
        """The sha256 of the conditions themselves, whatever the file was called."""
        import hashlib

        return hashlib.sha256(json.dumps(self.conditions).encode()).hexdigest()


def load_labels_spec(path: str | os.PathLike | None = None) -> list[str]:
    """The label names in index order from a dataset spec TOML (default: i-CLEVR's 24)."""
    spec_path = Path(path) if path is not None else DEFAULT_SPEC
    if not spec_path.exists():
        if path is None:
            return list(BUILTIN_LABELS)
        raise ConditionError(
            f"dataset spec {spec_path} not found; pass the path of a TOML with [labels] names"
        )
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the built-in names are the spec's names
        if path is None:
            return list(BUILTIN_LABELS)
        raise ConditionError("reading a dataset spec needs Python >= 3.11 (tomllib)") from None
    try:
        spec = tomllib.loads(spec_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConditionError(f"dataset spec {spec_path} is not valid TOML: {error}") from None
    names = spec.get("labels", {}).get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConditionError(f"dataset spec {spec_path} needs [labels] names = a list of label strings")
    if len(set(names)) != len(names):
        raise ConditionError(f"dataset spec {spec_path} lists a label twice in [labels] names")
    return list(names)


def _unknown_label_message(where: str, label: str, labels: Sequence[str]) -> str:
    close = difflib.get_close_matches(label, list(labels), n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
    return f"{where}: unknown label {label!r}.{hint} Labels are '<colour> <shape>', e.g. 'red sphere'."


def validate_conditions(
    data: object, labels: Sequence[str], source: str = "<conditions>", keys: Sequence[str] | None = None
) -> list[list[str]]:
    """Check a parsed condition list; return it as a list of lists of str or raise ConditionError.

    ``keys`` names each condition in messages (train.json's file names) instead of its index.
    """
    if not isinstance(data, list):
        raise ConditionError(
            f"{source}: expected a JSON list of conditions (each a list of label names), got {type(data).__name__}"
        )
    known = set(labels)
    out: list[list[str]] = []
    for i, condition in enumerate(data):
        pos = f"condition {i}" if keys is None else f"entry {keys[i]!r}"
        if not isinstance(condition, list):
            raise ConditionError(
                f"{source}: {pos} is a {type(condition).__name__} ({condition!r}); "
                f'each condition must be a list of label names, e.g. ["red sphere"]'
            )
        if not condition:
            raise ConditionError(f"{source}: {pos} is empty; name at least one object")
        seen: dict[str, int] = {}
        for j, item in enumerate(condition):
            where = f"{source}: {pos}, item {j}"
            if not isinstance(item, str):
                raise ConditionError(
                    f"{where} is a {type(item).__name__} ({item!r}); expected a label name string"
                )
            if item not in known:
                raise ConditionError(_unknown_label_message(where, item, labels))
            if item in seen:
                raise ConditionError(
                    f"{where}: {item!r} appears twice in one condition (first at item {seen[item]}); "
                    "a condition is a set of distinct objects"
                )
            seen[item] = j
        out.append(list(condition))
    return out


def load_condition_set(
    path: str | os.PathLike, labels: Sequence[str], name: str | None = None
) -> ConditionSet:
    """Read and validate a test.json-format file; ``name`` defaults to the file stem."""
    p = Path(path)
    if not p.exists():
        raise ConditionError(f"condition file {p} not found; expected a JSON list like test.json")
    if p.is_dir():
        raise ConditionError(f"condition file {p} is a folder; expected a JSON file like test.json")
    data = read_json(p, ConditionError)
    conditions = validate_conditions(data, labels, str(p))
    if not conditions:
        raise ConditionError(f"{p}: the condition list is empty; expected at least one condition")
    return ConditionSet(name=name or p.stem, source=str(p), conditions=conditions)


def multi_hot(conditions: Sequence[Sequence[str]], labels: Sequence[str]) -> torch.Tensor:
    """(len(conditions), len(labels)) float tensor with one 1 per object named."""
    import torch

    index = {label: i for i, label in enumerate(labels)}
    out = torch.zeros(len(conditions), len(labels), dtype=torch.float32)
    for i, condition in enumerate(conditions):
        for j, label in enumerate(condition):
            if label not in index:
                raise ConditionError(_unknown_label_message(f"condition {i}, item {j}", label, labels))
            out[i, index[label]] = 1.0
    return out


def labels_from_objects_json(path: str | os.PathLike, spec_labels: Sequence[str]) -> list[str]:
    """The label order an objects.json declares (name -> index), checked against the spec."""
    p = Path(path)
    if not p.exists():
        raise ConditionError(
            f"objects.json {p} not found; expected a JSON object mapping the 24 label names to 0-23"
        )
    data = read_json(p, ConditionError)
    if not isinstance(data, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in data.values()
    ):
        raise ConditionError(f"{p}: expected a JSON object mapping label name -> integer index")
    indices = sorted(data.values())
    if indices != list(range(len(data))):
        raise ConditionError(f"{p}: indices must be 0..{len(data) - 1}, each once; got {indices}")
    labels = [name for name, _ in sorted(data.items(), key=lambda kv: kv[1])]
    unknown = [n for n in labels if n not in spec_labels]
    missing = [n for n in spec_labels if n not in data]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append("names not in the spec: " + ", ".join(repr(n) for n in unknown))
        if missing:
            parts.append("spec names missing: " + ", ".join(repr(n) for n in missing))
        raise ConditionError(f"{p} does not match the i-CLEVR label spec ({'; '.join(parts)})")
    if labels != list(spec_labels):
        moved = [
            f"{n!r} is {data[n]} (spec: {spec_labels.index(n)})"
            for n in labels
            if data[n] != spec_labels.index(n)
        ]
        raise ConditionError(
            f"{p} orders the labels differently from the spec: {', '.join(moved[:4])}"
            f"{' ...' if len(moved) > 4 else ''}; index must be shape_index * 8 + colour_index"
        )
    return labels
