"""Shared pytest set-up.

JAX reads its platform flags once, before the first computation, so anything
that must hold for the whole session is set here, before a test imports jax.
"""

import os

# Tests run on the CPU, whatever the machine has; multi-device tests start
# their own subprocesses with their own XLA_FLAGS.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
