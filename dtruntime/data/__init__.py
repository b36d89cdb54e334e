"""Datasets: the registry, file discovery and counting, shard readers, prefetching iteration."""

from .files import FORMATS, FileSlice
from .prefetch import PrefetchIterator, make_shard_dataset
from .registry import ControlPlane, DatasetRegistry, DatasetSpec, LiveMember, MembershipView, ShardAssignment, check_same_spec, spec_summary

__all__ = [
    "FORMATS",
    "DatasetRegistry",
    "DatasetSpec",
    "FileSlice",
    "LiveMember",
    "ControlPlane",
    "MembershipView",
    "PrefetchIterator",
    "ShardAssignment",
    "check_same_spec",
    "spec_summary",
    "make_shard_dataset",
]
