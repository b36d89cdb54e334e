"""Progress bars for long runs: ``tqdm`` on stderr, only where someone watches.

A bar is shown only when stderr is a terminal and the caller was not asked to be quiet,
so pipes, log files and CI output carry the results alone. The returned object is a
``tqdm`` either way (a disabled one does nothing), so callers need no branches. A
terminal that reports a size of 0 (a bare pseudo-terminal) gets an 80 x 24 one: tqdm
would draw nothing there.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm


def progress_bar(total: float, desc: str, unit: str, *, quiet: bool = False) -> tqdm:
    """A bar over ``total`` ``unit``s on stderr; disabled with ``quiet`` or when stderr is not a TTY."""
    shown = not quiet and sys.stderr.isatty()
    ncols = nrows = None
    if shown:
        try:
            size = os.get_terminal_size(sys.stderr.fileno())
            ncols, nrows = size.columns or 80, size.lines or 24
        except OSError:
            ncols, nrows = 80, 24
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, ncols=ncols, nrows=nrows, disable=not shown)


def note(message: str) -> None:
    """Print ``message`` on stderr without breaking a bar that is being drawn."""
    tqdm.write(message, file=sys.stderr)
