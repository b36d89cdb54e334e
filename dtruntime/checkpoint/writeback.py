"""Writing a local part so that its closing ``fsync`` has little left to wait for.

A plain ``write`` of a large part only copies it into the page cache; the device starts
writing when the closing ``fsync`` asks, so the two phases run one after the other.
:class:`EarlyWriteback` asks the kernel to start writing each ``WRITEBACK_EVERY`` bytes as
soon as they are in the page cache (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``,
which starts the writeback and returns), so the device works while later bytes are still
being copied. Measured on this project's machine, 256 MiB written then fsynced: 73 ms
with it, 119 ms without (7 runs each, medians; 8 and 16 MiB steps alike, 32 MiB 76 ms).

Durability is unchanged: ``sync_file_range`` promises nothing (no metadata, no device
cache flush), and the caller still calls ``fsync`` before the part counts as written.
Where the call does not exist (not Linux, no such libc symbol) or fails for a file (a
filesystem without it), writes go on without it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable

from .integrity import Buffer

WRITEBACK_EVERY = 8 << 20  # bytes written before their writeback is started
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range``, or None where there is none."""
    if not os.uname().sysname == "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


class EarlyWriteback:
    """Appends to ``fd`` (opened for writing at offset 0) and starts the writeback of every
    ``WRITEBACK_EVERY`` bytes written. Invariant: ``[0, started)`` was handed to
    ``sync_file_range`` (while it is available for this file), ``[started, written)`` is
    written and not yet handed over; both only grow."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._start = _sync_file_range
        self.written = 0
        self.started = 0

    def write(self, data: Buffer) -> None:
        """Write all of ``data`` (in ``WRITEBACK_EVERY`` slices)."""
        view = memoryview(data).cast("B")
        offset = 0
        while offset < len(view):
            written = os.write(self._fd, view[offset : offset + WRITEBACK_EVERY])
            offset += written
            self.written += written
            if self.written - self.started >= WRITEBACK_EVERY:
                self._start_writeback()

    def _start_writeback(self) -> None:
        if self._start is not None and self._start(self._fd, self.started, self.written - self.started,
                                                   _SYNC_FILE_RANGE_WRITE) != 0:
            self._start = None  # this file's filesystem does not support it: plain writes
        self.started = self.written
