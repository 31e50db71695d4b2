"""What the programs show a person: progress bars on stderr, and user errors as one clear line."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def progress_bar(total: int, desc: str, unit: str = "step") -> Any:
    """A tqdm bar on stderr (plain lines when stderr is not a terminal, at most one a second)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr,
                disable=None if sys.stderr.isatty() else False, mininterval=1.0)


def resolve_checkpoint(path: str | Path) -> Path:
    """:func:`~td3_drive.rl.checkpoint.resolve_actor_file`, a missing file as a command-line error."""
    from td3_drive.rl.checkpoint import resolve_actor_file  # torch: not for the commands that need none

    try:
        return resolve_actor_file(str(path))
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None
