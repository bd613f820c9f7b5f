"""Reading a JSON file a user handed us: a malformed one is an error naming the file, line and column,
and so is a key given twice in one object (json would keep the last without a word)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def read_json(path: str | os.PathLike, error: type[Exception]) -> Any:
    """The parsed content of ``path``; malformed JSON raises ``error`` with the file, line and column.

    Callers check that the file exists first: their "not found" message says what was expected.
    """
    path = Path(path)
    try:
        # utf-8-sig: a file saved by an editor that writes a byte-order mark reads as any other
        return json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:  # json keeps the last of two equal keys without a word
        raise error(f"{path}: the key {e.args[0]!r} appears twice in one object; keep one") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:  # an image, a torch pickle, a zip: not the text file asked for
        raise error(f"{path}: not a JSON text file (byte {e.start} is not UTF-8)") from None
