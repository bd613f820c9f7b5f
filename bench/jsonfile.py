"""Reading a JSON file a user handed us: a malformed one is an error naming the file, line and column."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_json(path: str | os.PathLike, error: type[Exception]) -> Any:
    """The parsed content of ``path``; malformed JSON raises ``error`` with the file, line and column.

    Callers check that the file exists first: their "not found" message says what was expected.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise error(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:  # an image, a torch pickle, a zip: not the text file asked for
        raise error(f"{path}: not a JSON text file (byte {e.start} is not UTF-8)") from None
