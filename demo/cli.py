"""What every command-line tool of ``demo/`` does with an error a user can fix: one line on stderr, exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

Config = TypeVar("Config")


def run_cli(run: Callable[[Config], object], config: Config) -> int:
    """Call ``run(config)``; a missing file, a bad value or an unreadable image becomes ``error: ...`` and 2."""
    try:
        run(config)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
