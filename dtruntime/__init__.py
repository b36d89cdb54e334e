"""dtruntime: a control plane for distributed PyTorch training without a control server."""

from .api.orchestrator import Agreement, TrainingOrchestrator, WorkerInfo
from .checkpoint import CheckpointManager
from .config import Config
from .data import DatasetRegistry
from .errors import (
    BarrierTimeout,
    BindError,
    CheckpointError,
    CheckpointNotFoundError,
    ConfigError,
    DatasetError,
    DtruntimeError,
    InvalidCommandArgs,
    NoQuorumError,
    ProtocolError,
    RemoteProtocolError,
    RunStopped,
    UnknownCommand,
    WorkerLostError,
)

__version__ = "0.1.0"

__all__ = [
    "Agreement",
    "BarrierTimeout",
    "BindError",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "Config",
    "ConfigError",
    "DatasetError",
    "DatasetRegistry",
    "DtruntimeError",
    "InvalidCommandArgs",
    "NoQuorumError",
    "ProtocolError",
    "RemoteProtocolError",
    "RunStopped",
    "TrainingOrchestrator",
    "UnknownCommand",
    "WorkerInfo",
    "WorkerLostError",
]
