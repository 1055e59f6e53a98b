"""The one exception type for user mistakes (bad input, bad settings, missing files).

Entry points catch it and print `error: <message>` on one line with exit status 2,
no traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class DNAVecError(Exception):
    """A user-facing error; str(error) is one line that names the file or setting and the problem."""


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
