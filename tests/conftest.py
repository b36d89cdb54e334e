"""Shared fixtures: small datasets on local disk and in fsspec's memory filesystem."""

from __future__ import annotations

import uuid

import fsspec
import pytest


@pytest.fixture
def memory_root():
    """A fresh ``memory://`` directory, removed afterwards."""
    root = f"memory://dtruntime-test-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    fs.mkdir(root)
    yield root
    if fs.exists(root):
        fs.rm(root, recursive=True)
