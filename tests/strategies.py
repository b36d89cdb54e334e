"""Hypothesis strategies for protocol messages, derived from the messages' type hints."""

from __future__ import annotations

import dataclasses
import typing
from enum import IntEnum

from hypothesis import strategies as st

from dtruntime.protocol.messages import MESSAGE_TYPES, Kind

WORKER_IDS = st.sampled_from(["w0", "w1", "w2", "w3", "host-a:0", "node.7@x"])
ENDPOINTS = st.sampled_from(["sim://w0", "sim://w1", "tcp://127.0.0.1:5000", "tcp://[::1]:7"])
BARRIER_IDS = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1, max_size=40).filter(
    str.isprintable
)
INTS = st.integers(min_value=0, max_value=2**63 - 1) | st.integers(min_value=0, max_value=10)


def strategy_for(hint: object) -> st.SearchStrategy:
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        kind = typing.get_args(hint)[1]
        return {
            Kind.WORKER_ID: WORKER_IDS,
            Kind.OPT_WORKER_ID: st.just("") | WORKER_IDS,
            Kind.ENDPOINT: ENDPOINTS,
            Kind.BARRIER_ID: BARRIER_IDS,
            Kind.CODEC: st.sampled_from(["none", "gzip", "zstd"]),
            Kind.BARRIER_VALUE: st.just("") | BARRIER_IDS,
        }[kind]
    if origin is tuple:
        return st.lists(strategy_for(typing.get_args(hint)[0]), max_size=4).map(tuple)
    if dataclasses.is_dataclass(hint):
        return dataclass_strategy(hint)
    if isinstance(hint, type) and issubclass(hint, IntEnum):
        return st.sampled_from(list(hint))
    if hint is bool:
        return st.booleans()
    if hint is int:
        return INTS
    raise TypeError(hint)


def dataclass_strategy(cls: type) -> st.SearchStrategy:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


ANY_MESSAGE = st.one_of(*(dataclass_strategy(cls) for cls in MESSAGE_TYPES.values()))
