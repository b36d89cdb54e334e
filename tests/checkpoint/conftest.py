"""Fixtures for the checkpoint tests: a real moto S3 server subprocess, S3 buckets, tmpfs mounts."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtruntime.checkpoint.storage import open_storage




@pytest.fixture
def s3_options(moto_endpoint: str) -> dict:
    return {
        "key": "testing",
        "secret": "testing",
        "endpoint_url": moto_endpoint,
    }


@pytest.fixture
def s3_bucket(s3_options: dict) -> str:
    """A fresh, empty bucket on the moto server; returns its name."""
    import fsspec

    name = f"ckpt-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", **s3_options).mkdir(name)
    return name


@pytest.fixture
def mount_tmpfs() -> Iterator:
    """``mount(path, size)`` mounts a tmpfs (skips where not allowed); unmounted at teardown."""
    mounted: list[Path] = []

    def mount(mountpoint: Path, size: str) -> Path:
        mountpoint.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)], capture_output=True, timeout=30
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(mountpoint)
        return mountpoint

    yield mount
    for mountpoint in mounted:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=30)



@pytest.fixture
def crash_harness():
    """The kill -9 loop of benchmarks/checkpoint_crash_soak.py, imported from its file."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "checkpoint_crash_soak.py"
    spec = importlib.util.spec_from_file_location("checkpoint_crash_soak", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# botocore needs a region to sign requests; moto accepts any. (A region in client_kwargs
# would make s3fs send it as the bucket LocationConstraint, which us-east-1 rejects.)
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(params=["local", "memory"])
def storage(request, tmp_path):
    """A local and an fsspec memory checkpoint store, each empty."""
    if request.param == "local":
        return open_storage(str(tmp_path), None, None)
    return open_storage(f"memory://ckpt-{uuid.uuid4().hex}", None, None)
