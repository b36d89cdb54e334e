"""Training continuity: what turns the control plane's failover into a job that goes on.

Imports torch; the rest of dtruntime does not need it.
"""

from .process_group import init_process_group
from .trainer import ElasticTrainer, Step

__all__ = ["ElasticTrainer", "Step", "init_process_group"]
