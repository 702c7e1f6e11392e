"""Checkpoints of a meta-training run: the only package that imports orbax.

`Checkpointer` saves and restores the whole run state (theta, the outer
optimizer and every particle's persistent inner state) on the policy a
config sets; `load_meta` reads the small replicated part, all that export
needs. `digests` detects corrupted steps; `resume_policy` says which config
fields a resumed run may change.
"""

from lopt.checkpoint.digests import CorruptCheckpointError
from lopt.checkpoint.manager import Checkpointer, load_meta

__all__ = ["Checkpointer", "CorruptCheckpointError", "load_meta"]
