"""Prefetching iteration over a rank's records, usable as a torch ``IterableDataset``.

:class:`PrefetchIterator` loads whole records (runs of samples, usually one shard piece) in a
background thread, at most ``prefetch`` of them ahead of the consumer, through a bounded
queue: memory holds at most ``prefetch + 2`` loaded records (the queue, the one the consumer
is draining, the one being loaded). The thread

* stops when the iterator is closed, exhausted, used as a context manager, or garbage
  collected (it holds no reference to the iterator, so collection can happen);
* forwards any exception to the consumer, which re-raises it at the record where it happened;
* never blocks forever: every queue operation waits in short slices and checks the stop flag.

``prefetch == 0`` loads synchronously in the consumer's thread, no thread at all.

:func:`make_shard_dataset` returns a :class:`ShardDataset`: a subclass of
``torch.utils.data.IterableDataset`` when torch is importable (imported only then; torch is an
optional extra), a plain iterable otherwise. Under a ``DataLoader`` with several workers each
loader worker reads every ``num_workers``-th record, so nothing is read twice.
"""

from __future__ import annotations

import functools
import queue
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import DatasetError
from .readers import OpenFiles, read_slice
from .readers.tfrecord import DEFAULT_MAX_RECORD_BYTES

__all__ = ["PrefetchIterator", "load_record", "make_shard_dataset", "shard_dataset_class"]

_POLL_SECONDS = 0.1
_JOIN_SECONDS = 10.0
_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _produce(tasks: Sequence[Any], load: Callable[[Any], list[Any]], out: queue.Queue, stop: threading.Event) -> None:
    """Thread body: load each task and hand it over; stop as soon as ``stop`` is set."""
    try:
        for task in tasks:
            if stop.is_set():
                return
            item: Any = load(task)
            while not stop.is_set():
                try:
                    out.put(item, timeout=_POLL_SECONDS)
                    break
                except queue.Full:
                    continue
        item = _DONE
    except BaseException as exc:  # forwarded to the consumer, which re-raises it
        item = _Failure(exc)
    while not stop.is_set():
        try:
            out.put(item, timeout=_POLL_SECONDS)
            return
        except queue.Full:
            continue


def _shutdown(stop: threading.Event, out: queue.Queue, thread: threading.Thread | None) -> None:
    stop.set()
    while True:  # unblock a producer waiting on a full queue, drop what it loaded
        try:
            out.get_nowait()
        except queue.Empty:
            break
    if thread is not None and thread is not threading.current_thread():
        thread.join(_JOIN_SECONDS)


class PrefetchIterator(Iterator[Any]):
    """Iterate the items of ``load(task)`` for each task, loading ``prefetch`` tasks ahead."""

    def __init__(self, tasks: Sequence[Any], load: Callable[[Any], list[Any]], prefetch: int = 2) -> None:
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise DatasetError(f"prefetch_shards must be an integer >= 0, not {prefetch!r}")
        self._tasks = list(tasks)
        self._load = load
        self._current: Iterator[Any] = iter(())
        self._next_task = 0
        self._finished = False
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
        self._thread: threading.Thread | None = None
        if prefetch > 0:
            self._thread = threading.Thread(
                target=_produce, args=(self._tasks, load, self._queue, self._stop), name="dtruntime-prefetch", daemon=True
            )
            self._thread.start()
        self._finalizer = weakref.finalize(self, _shutdown, self._stop, self._queue, self._thread)

    def __iter__(self) -> PrefetchIterator:
        return self

    def __next__(self) -> Any:
        while True:
            for item in self._current:
                return item
            if self._finished:
                raise StopIteration
            loaded = self._next_loaded()
            if loaded is _DONE:
                self.close()
                raise StopIteration
            self._current = iter(loaded)

    def _next_loaded(self) -> Any:
        if self._thread is None:
            if self._next_task == len(self._tasks):
                return _DONE
            self._next_task += 1
            return self._load(self._tasks[self._next_task - 1])
        while True:
            try:
                item = self._queue.get(timeout=_POLL_SECONDS)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self.close()
                    raise DatasetError("the prefetch thread ended without a result") from None
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        return item

    @property
    def thread(self) -> threading.Thread | None:
        """The background thread (None when ``prefetch == 0``); for tests and diagnostics."""
        return self._thread

    def close(self) -> None:
        """Stop the background thread and drop prefetched records; idempotent."""
        self._finished = True
        self._current = iter(())
        self._finalizer()

    def __enter__(self) -> PrefetchIterator:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def load_record(
    fs: Any,
    format: str,
    record: Any,
    *,
    columns: Sequence[str] | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    open_files: OpenFiles | None = None,
) -> list[Any]:
    """Everything one :class:`~dtruntime.data.registry.ShardAssignment` holds, in its sample
    order: ``pyarrow.RecordBatch`` objects for tables, ``bytes`` per TFRecord record."""
    items: list[Any] = []
    for piece in record.file_slices:
        items.extend(
            read_slice(
                fs,
                format,
                piece.path,
                piece.row_start,
                piece.row_end,
                columns=columns,
                max_record_bytes=max_record_bytes,
                open_files=open_files,
            )
        )
    if not (record.shuffle and not record.padding and record.num_samples > 1):
        return items
    order = record.sample_order() - record.start_sample
    if format == "tfrecord":
        return [items[i] for i in order.tolist()]
    import pyarrow as pa

    table = pa.Table.from_batches(items)
    return table.take(pa.array(order.astype(np.int64))).to_batches()


class _ShardDatasetBody:
    """The iterable; combined with torch's ``IterableDataset`` by :func:`shard_dataset_class`."""

    def __init__(
        self,
        fs: Any,
        format: str,
        records: Sequence[Any],
        *,
        prefetch_shards: int = 2,
        columns: Sequence[str] | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        if isinstance(prefetch_shards, bool) or not isinstance(prefetch_shards, int) or prefetch_shards < 0:
            raise DatasetError(f"prefetch_shards must be an integer >= 0, not {prefetch_shards!r}")
        self.fs = fs
        self.format = format
        self.records = list(records)
        self.prefetch_shards = prefetch_shards
        self.columns = None if columns is None else list(columns)
        self.max_record_bytes = max_record_bytes

    @property
    def num_samples(self) -> int:
        return sum(r.num_samples for r in self.records)

    def __iter__(self) -> PrefetchIterator:
        records = self.records
        worker = _torch_worker_info()
        if worker is not None:
            records = records[worker.id :: worker.num_workers]
        return PrefetchIterator(records, _RecordLoader(self, len(records)), self.prefetch_shards)


class _RecordLoader:
    """Loads records for one iteration, keeping the last few files open between records.

    Used by one thread at a time (the prefetch thread, or the consumer when prefetch is 0);
    the files close when the last record is loaded or the loader is collected.
    """

    def __init__(self, dataset: _ShardDatasetBody, count: int) -> None:
        self._dataset = dataset
        self._remaining = count
        self._open_files = OpenFiles(dataset.fs)
        weakref.finalize(self, self._open_files.close)

    def __call__(self, record: Any) -> list[Any]:
        d = self._dataset
        try:
            return load_record(
                d.fs, d.format, record, columns=d.columns, max_record_bytes=d.max_record_bytes, open_files=self._open_files
            )
        finally:
            self._remaining -= 1
            if self._remaining <= 0:
                self._open_files.close()


def _torch_worker_info() -> Any:
    if "torch" not in sys.modules:
        return None
    from torch.utils.data import get_worker_info

    return get_worker_info()


@functools.cache
def shard_dataset_class() -> type:
    """``ShardDataset``: subclasses ``torch.utils.data.IterableDataset`` if torch imports."""
    try:
        from torch.utils.data import IterableDataset
    except ImportError:
        bases: tuple[type, ...] = (_ShardDatasetBody,)
    else:
        bases = (_ShardDatasetBody, IterableDataset)
    return type("ShardDataset", bases, {"__module__": __name__, "__doc__": _ShardDatasetBody.__doc__})


def make_shard_dataset(fs: Any, format: str, records: Sequence[Any], **options: Any) -> Any:
    """A ``ShardDataset`` over ``records`` (see :func:`shard_dataset_class`)."""
    return shard_dataset_class()(fs, format, records, **options)
