"""Where checkpoint bytes go: the local filesystem or any fsspec filesystem.

Both backends offer the same operations on keys relative to the checkpoint root (keys
come from :mod:`.layout` and are joined with :func:`layout.join_under`):

- ``write_part``: the part is at its final key and durable when this returns. ``data`` is
  one buffer or a sequence of buffers written back to back (a tensor part's header and
  staging buffer, a DCP rank's items): local storage writes each in place, an object
  store gets one PUT of their concatenation.
- ``write_part_as``: like ``write_part`` for a part whose key depends on its CRC-32C, from
  an iterable of buffers that may wait for each one (a staging copy still in progress).
  Local storage writes a temp file in the step's directory while it checksums, fsyncs it
  and renames it to its final key (a local rename: atomic; a crash leaves a ``tmp-*``
  file, never a part name, deleted with the step by retention); an object store
  collects the buffers, checksums them and PUTs once at the final key (no rename).
- Local part writes start the kernel's writeback every few MiB as they go
  (:mod:`.writeback`), so the closing ``fsync`` waits only for the tail.
- ``read_buffer``: the whole object as a writable, 64-byte-aligned numpy ``uint8`` array
  and the CRC-32C of its bytes, so tensors can be views of it with no further copy.
  Local storage maps the file copy-on-write and checksums it through the mapping: no
  byte is copied, and a write to a loaded tensor copies just that page, never reaching
  the file. An object store's bytes are copied once into an aligned array.
- ``write_manifest``: atomic and create-only; ``FileExistsError`` if the key exists.
  Local: temp file, fsync, ``os.link`` (create-only), fsync of the directory. S3 and ``memory://``:
  one PUT with ``If-None-Match: *`` (s3fs ``mode="create"``). Never a rename or copy on
  an object store.
- ``read``/``read_if_exists``, ``list_files`` (key -> size), ``delete_step`` (manifest
  first, so a crash mid-delete leaves an uncommitted step, never a manifest without parts).

Errors are ``OSError``s (an fsspec filesystem's other exceptions, such as botocore's
``EndpointConnectionError``, are re-raised as ``OSError(EIO)`` naming the original); the
manager wraps them in CheckpointError with the step and key.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import fsspec
import numpy as np
from fsspec.utils import get_protocol

from ..errors import ConfigError, DtruntimeError
from . import layout
from .integrity import Buffer, crc32c, crc32c_of
from .writeback import EarlyWriteback

_WRITE_SLICE = 64 << 20
_SLICE = 4 << 20  # checksum-then-write / read-then-checksum slices: the second pass hits the cache
_ALIGN = 64

PartData = Buffer | Sequence[Buffer]


class Storage(ABC):
    """Operations the checkpoint manager needs from a store; see the module docstring."""

    url: str

    @abstractmethod

    def write_part(self, key: str, data: PartData) -> None: ...

    @abstractmethod

    def write_manifest(self, key: str, data: bytes) -> None: ...

    @abstractmethod

    def read(self, key: str) -> bytes: ...

    @abstractmethod

    def list_files(self) -> dict[str, int]: ...

    @abstractmethod

    def delete_step(self, step: int, keys: Iterable[str]) -> None:
        """Delete ``step``: its manifest first (so it stops being committed), then its files.

        ``keys`` are the step's files in the caller's last listing; an object store
        deletes exactly those. A store with real directories removes the whole step
        directory instead, which also takes any file written there since the listing.
        """

    @abstractmethod

    def remove(self, key: str) -> None: ...

    def write_part_as(self, directory: str, key_for: Callable[[int], str], chunks: Iterable[Buffer]) -> tuple[str, int, int]:
        """Write the concatenation of ``chunks`` at ``key_for(crc32c)`` (under ``directory``,
        a step directory key); return ``(key, size, crc32c)``. Durable when this returns."""
        collected = list(chunks)
        checksum = crc32c_of(collected)
        key = key_for(checksum)
        self.write_part(key, collected)
        return key, sum(len(chunk) for chunk in collected), checksum

    def read_buffer(self, key: str) -> tuple[np.ndarray, int]:
        """``key``'s bytes as a writable, aligned ``uint8`` array, and their CRC-32C."""
        data = self.read(key)
        buffer = aligned_empty(len(data))
        buffer[:] = np.frombuffer(data, dtype=np.uint8)
        return buffer, crc32c(data)

    def read_if_exists(self, key: str) -> bytes | None:
        try:
            return self.read(key)
        except FileNotFoundError:
            return None

    def describe(self, key: str) -> str:
        """The full location of ``key``, for error messages."""
        return layout.join_under(self.url, key)


class LocalStorage(Storage):
    """Plain files with fsync: data, then directory entries, are durable before returning."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.url = self.root

    def _path(self, key: str) -> str:
        return layout.join_under(self.root, key)

    def write_part(self, key: str, data: PartData) -> None:
        path = self._path(key)
        self._ensure_dir(os.path.dirname(path))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            out = EarlyWriteback(fd)
            for chunk in _chunks(data):
                out.write(chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(os.path.dirname(path))

    def write_part_as(self, directory: str, key_for: Callable[[int], str], chunks: Iterable[Buffer]) -> tuple[str, int, int]:
        """Checksum and write each chunk as it comes into a temp file, then rename it."""
        folder = self._path(directory)
        self._ensure_dir(folder)
        temp = os.path.join(folder, f"tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}.part")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        size = checksum = 0
        try:
            try:
                out = EarlyWriteback(fd)
                for chunk in chunks:
                    view = memoryview(chunk).cast("B")
                    for start in range(0, len(view), _SLICE):
                        piece = view[start : start + _SLICE]
                        checksum = crc32c(piece, checksum)
                        out.write(piece)
                    size += len(view)
                os.fsync(fd)
            finally:
                os.close(fd)
            key = key_for(checksum)
            os.replace(temp, self._path(key))
        except BaseException:
            try:
                os.remove(temp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(folder)
        return key, size, checksum

    def read_buffer(self, key: str) -> tuple[np.ndarray, int]:
        """Map the file copy-on-write and checksum it through the mapping (no copy).

        The array is a private (``MAP_PRIVATE``) writable mapping: the pages are the page
        cache's own until something writes to them, then that page is copied, so a write
        to a loaded tensor never reaches the file. Mapping relies on parts being
        immutable once named (they are written under a temp name or a content-derived
        key and never rewritten in place); retention unlinking the file while it is
        mapped is harmless (the mapping keeps the inode). Where mapping is unavailable
        (an empty file, a platform without ``MAP_PRIVATE``, a filesystem that refuses
        it), the file is read into an aligned array in cache-sized slices instead.
        """
        with open(self._path(key), "rb", buffering=0) as handle:
            size = os.fstat(handle.fileno()).st_size
            mapped = _map_private(handle.fileno(), size)
            if mapped is not None:
                return np.frombuffer(mapped, dtype=np.uint8), crc32c(memoryview(mapped))
            return _read_into_aligned(handle, size, key)

    def write_manifest(self, key: str, data: bytes) -> None:
        """Temp file (own name per writer), fsync, then ``os.link`` to the final name:
        atomic and create-only, so two leaders committing one step at once cannot both
        win nor tear the file. Where hard links are unsupported, ``os.replace`` after an
        existence check (create-only against anything but a simultaneous writer)."""
        path = self._path(key)
        directory = os.path.dirname(path)
        if os.path.exists(path):
            raise FileExistsError(errno.EEXIST, "manifest already exists", path)
        self._ensure_dir(directory)
        temp = os.path.join(directory, f"{layout.MANIFEST_TEMP_NAME}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(temp, path)
            except FileExistsError:
                raise FileExistsError(errno.EEXIST, "manifest already exists", path) from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                os.replace(temp, path)
        finally:
            try:
                os.remove(temp)
            except FileNotFoundError:
                pass
        _fsync_dir(directory)

    def read(self, key: str) -> bytes:
        with open(self._path(key), "rb") as handle:
            return handle.read()

    def list_files(self) -> dict[str, int]:
        listing: dict[str, int] = {}
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return listing
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False) or layout.parse_step_dir(entry.name) is None:
                continue
            try:
                for child in os.scandir(entry.path):
                    if child.is_file(follow_symlinks=False):
                        listing[f"{entry.name}/{child.name}"] = child.stat(follow_symlinks=False).st_size
            except FileNotFoundError:  # deleted while listing
                continue
        return listing

    def delete_step(self, step: int, keys: Iterable[str]) -> None:
        directory = self._path(layout.step_dir(step))
        try:
            os.remove(self._path(layout.manifest_key(step)))
            _fsync_dir(directory)
        except FileNotFoundError:
            pass
        shutil.rmtree(directory, ignore_errors=False)
        _fsync_dir(self.root)

    def remove(self, key: str) -> None:
        os.remove(self._path(key))

    def _ensure_dir(self, directory: str) -> None:
        if os.path.isdir(directory):
            return
        parent = os.path.dirname(directory)
        os.makedirs(directory, exist_ok=True)
        _fsync_dir(parent)


class FsspecStorage(Storage):
    """Any fsspec filesystem; object stores get one PUT per object and no rename or copy."""

    #: Parts of at least twice this size are sent as S3 multipart uploads of this chunk size.
    multipart_chunksize = 50 << 20

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url.rstrip("/")
        protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
        self._is_s3 = bool(protocols & {"s3", "s3a"})
        self._create_only_put = self._is_s3 or "memory" in protocols

    def _path(self, key: str) -> str:
        return layout.join_under(self.root, key)

    def write_part(self, key: str, data: PartData) -> None:
        with _as_oserror():
            chunks = _chunks(data)
            payload = chunks[0] if len(chunks) == 1 and isinstance(chunks[0], bytes) else b"".join(chunks)
            if self._is_s3:
                self.fs.pipe_file(self._path(key), payload, chunksize=self.multipart_chunksize)
            else:
                self.fs.pipe_file(self._path(key), payload)

    def write_manifest(self, key: str, data: bytes) -> None:
        with _as_oserror():
            path = self._path(key)
            if not self._create_only_put:
                if self.fs.exists(path):
                    raise FileExistsError(errno.EEXIST, "manifest already exists", path)
                self.fs.pipe_file(path, data)
                return
            try:
                self.fs.pipe_file(path, data, mode="create")
            except FileExistsError:
                raise
            except OSError as exc:
                # s3fs maps a failed If-None-Match to FileExistsError when the server names the
                # condition; servers that omit it give a generic PreconditionFailed.
                if "PreconditionFailed" in str(exc) or "Precondition" in str(exc.__cause__ or ""):
                    raise FileExistsError(errno.EEXIST, "manifest already exists", path) from exc
                raise

    def read(self, key: str) -> bytes:
        with _as_oserror():
            return self.fs.cat_file(self._path(key))

    def list_files(self) -> dict[str, int]:
        with _as_oserror():
            try:
                found = self.fs.find(self.root, detail=True)
            except FileNotFoundError:
                return {}
            prefix = self.fs._strip_protocol(self.root).rstrip("/") + "/"
            return {
                name[len(prefix) :]: int(info.get("size") or 0)
                for name, info in found.items()
                if name.startswith(prefix) and info.get("type", "file") == "file"
            }

    def delete_step(self, step: int, keys: Iterable[str]) -> None:
        with _as_oserror():
            manifest = layout.manifest_key(step)
            keys = list(keys)
            if manifest in keys:
                self.fs.rm([self._path(manifest)])
            others = [self._path(k) for k in keys if k != manifest]
            if others:
                self.fs.rm(others)

    def remove(self, key: str) -> None:
        with _as_oserror():
            self.fs.rm([self._path(key)])


def open_storage(storage_path: str, backend: str | None, storage_options: Mapping[str, Any] | None) -> Storage:
    """Build the storage for ``storage_path`` (a path or fsspec URL) and ``backend``.

    ``backend=None`` follows the URL: a plain path or ``file://`` is local, ``s3://`` is
    S3, ``memory://`` is memory, any other fsspec protocol is used as it is. An explicit
    backend that contradicts the URL's protocol is a ConfigError; with ``backend="s3"``
    or ``"memory"`` a path without protocol gets that protocol (``/ckpt`` → ``s3://ckpt``).
    """
    if not isinstance(storage_path, str) or not storage_path.strip():
        raise ConfigError("storage_path", f"must be a non-empty path or URL, not {storage_path!r}")
    options = dict(storage_options or {})
    has_protocol = "://" in storage_path
    protocol = get_protocol(storage_path) if has_protocol else None
    if backend is None:
        backend = {None: "local", "file": "local", "local": "local", "s3": "s3", "s3a": "s3"}.get(
            protocol, protocol
        )
    if backend == "local":
        if protocol not in (None, "file", "local"):
            raise ConfigError("backend", f"backend 'local' cannot use {storage_path!r}; pass backend={protocol!r}")
        if options:
            raise ConfigError("storage_options", "the local backend takes no storage_options")
        root = storage_path.split("://", 1)[1] if has_protocol else storage_path
        return LocalStorage(root)
    if not isinstance(backend, str) or not backend:
        raise ConfigError("backend", f"must be 'local', 's3', 'memory' or an fsspec protocol, not {backend!r}")
    expected = ("s3", "s3a") if backend == "s3" else (backend,)
    if has_protocol and protocol not in expected:
        raise ConfigError("backend", f"backend {backend!r} cannot use {storage_path!r} (protocol {protocol!r})")
    url = storage_path if has_protocol else f"{backend}://{storage_path.lstrip('/')}"
    # Other ranks and processes write the same store: a cached directory listing would
    # hide a manifest written since (s3fs answers reads from it), so listings are never
    # cached. Nothing else is cached either: every list and read goes to the store.
    options["use_listings_cache"] = False
    try:
        fs = fsspec.filesystem(backend, **options)
    except (ImportError, ValueError, TypeError) as exc:
        raise ConfigError("backend", f"cannot open {backend!r} storage: {exc}") from exc
    root = fs._strip_protocol(url)
    if not root.strip("/"):
        raise ConfigError("storage_path", f"{storage_path!r} names no bucket or directory")
    return FsspecStorage(fs, root, url)


@contextmanager


def _as_oserror() -> Iterator[None]:
    """Re-raise a filesystem library's non-OSError exception as ``OSError(EIO)``."""
    try:
        yield
    except (OSError, DtruntimeError):
        raise
    except Exception as exc:  # noqa: BLE001 - botocore/aiohttp errors are not OSErrors
        raise OSError(errno.EIO, f"{type(exc).__name__}: {exc}") from exc


def aligned_empty(size: int) -> np.ndarray:
    """An uninitialised writable ``uint8`` array of ``size`` bytes starting on a 64-byte
    boundary (so a tensor of any dtype at an aligned offset is an aligned view)."""
    raw = np.empty(size + _ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % _ALIGN
    return raw[start : start + size]


def _map_private(fd: int, size: int) -> mmap.mmap | None:
    """A private writable mapping of the first ``size`` bytes of ``fd``, or None where
    it cannot be mapped. No ``MAP_POPULATE``: pre-faulting a writable private mapping
    copies every page, while the checksum pass faults them in shared, with readahead."""
    if size == 0 or not hasattr(mmap, "MAP_PRIVATE"):
        return None
    try:
        return mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError):
        return None


def _read_into_aligned(handle: Any, size: int, key: str) -> tuple[np.ndarray, int]:
    """Read ``size`` bytes of ``handle`` into an aligned array in cache-sized slices,
    checksumming each slice right after it lands (while it is still in the CPU cache)."""
    buffer = aligned_empty(size)
    view = memoryview(buffer)
    checksum = offset = 0
    while offset < size:
        got = handle.readinto(view[offset : min(size, offset + _SLICE)])
        if not got:
            raise OSError(errno.EIO, f"file shrank while reading ({offset} of {size} bytes)", key)
        checksum = crc32c(view[offset : offset + got], checksum)
        offset += got
    return buffer, checksum


def _chunks(data: PartData) -> Sequence[Buffer]:
    return [data] if isinstance(data, (bytes, bytearray, memoryview)) else data


def _write_all(fd: int, data: Buffer) -> None:
    view = memoryview(data).cast("B")
    offset = 0
    while offset < len(view):
        offset += os.write(fd, view[offset : offset + _WRITE_SLICE])


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
