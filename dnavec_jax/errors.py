"""The one exception type for user mistakes (bad input, bad settings, missing files).

Entry points catch it and print `error: <message>` on one line with exit status 2,
no traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path


class DNAVecError(Exception):
    """A user-facing error; str(error) is one line that names the file or setting and the problem."""


def read_json_object(path: str | os.PathLike, what: str = "JSON") -> dict:
    """A JSON file that must hold an object (configs, export metadata); one-line DNAVecError otherwise."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DNAVecError(f"{path}: cannot read {what} ({error})") from None
    if not isinstance(value, dict):
        raise DNAVecError(f"{path}: expected a JSON object")
    return value


def run_cli(main: Callable[[], int | None]) -> int:
    """Runs an entry point, turning DNAVecError (and Ctrl-C) into a one-line message and an exit status."""
    try:
        return int(main() or 0)
    except DNAVecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
