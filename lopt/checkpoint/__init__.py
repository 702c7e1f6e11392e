"""Checkpoints of a meta-training run: the only package that imports orbax.

orbax's V0 `CheckpointManager` API used here is stable, but its V1 API is
still being renamed, so a later switch should touch this package only.

`Checkpointer` (`manager`) saves and restores the whole run state (theta,
the outer optimizer and every particle's persistent inner state) on the
policy a config sets; `load_meta` (`format`) reads the small replicated
part, all that export needs. `format` is the on-disk format in orbax's terms
and reads it back; `digests` detects corrupted steps; `resume_policy` says
which config fields a resumed run may change.
"""

from lopt.checkpoint.digests import CorruptCheckpointError
from lopt.checkpoint.format import load_meta
from lopt.checkpoint.manager import Checkpointer

__all__ = ["Checkpointer", "CorruptCheckpointError", "load_meta"]
