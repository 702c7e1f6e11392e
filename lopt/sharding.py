"""The particle mesh: shardings of the run state and multi-host helpers.

Particles are the parallel axis of meta-training. One 1-D mesh, whose only
axis is named `particles`, spans every device of every process:

* estimator-state leaves (every one leads with the particle axis) are
  sharded on that axis, `P('particles')`: each device holds N / D particles;
* `theta`, the outer optimizer state, the step, the run's PRNG key and the
  dataset are replicated, `P()`.

The outer step is one `jax.jit` with these shardings on its inputs and
outputs. Inside it, the per-particle work runs under `jax.shard_map`: an
estimator's `particle_map` hook (see `lopt.estimators.base.Estimator`)
decides how its per-particle window runs over the particles, and
`shard_particles` builds the estimator with one that runs, on every device,
the plain `vmap` of the window over that device's particles. What the
estimator computes from the per-particle results (the masked mean of the
gradient sums, the loss, the variance diagnostics) is left as ordinary jit
code on `P('particles')`-sharded arrays, so XLA inserts the cross-device
reductions (one |theta|-sized all-reduce of the gradient sums, plus
scalars). We chose this split over a `pmean` inside the shard_map because
the estimators' means have data-dependent denominators (non-finite steps
are masked out of numerator and denominator alike) and return an info
dict; re-deriving each estimator's reduction per device would duplicate
that logic, while the split reuses it unchanged for every estimator (every
window returns the same per-particle sums; TBPTT's backward pass runs
inside its window, so on the device that holds the particle).

Why shard_map for the per-particle part, rather than plain jit with
shardings: each particle samples its minibatches by indexing the
replicated dataset with its own (particle-sharded) indices. Under plain jit
that gather is either a `ShardingTypeError` (Explicit mesh axes, the
`jax.make_mesh` default) or left to XLA's propagation to partition; inside
shard_map everything is local and partitioned by construction.

Why an Auto mesh: the code outside the shard_map (the estimators' reductions,
optax) is not written with sharding types in mind; with Auto axes XLA
propagates shardings through it and inserts the collectives, whereas
Explicit axes would make every such op a sharding-typed operation that may
refuse to trace.

Randomness does not depend on the device count: the per-particle keys are
`jax.random.split(key, N)` of the global step key, computed before the
shard_map (with `jax_threefry_partitionable`, on by default, sharded random
generation is layout-independent too), so a run on 1 device and on 8 draws
the same noise, batches and resets, bit for bit; only floating-point
rounding differs (the order of the sums over particles, XLA's vectorisation
of a device's batch), which tests/test_sharding.py bounds at 1e-4 of each
leaf's scale.

Multi-host: all per-particle state is created inside `jit(...,
out_shardings=...)` from seeds, so the only host-local input is the small
dataset, which `put_replicated` places from numpy (`jax.device_put` of a
*jax* array onto devices of other processes fails). Values are read on the
host with `to_host`, which works when arrays are not fully addressable.
"""

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any

#: The name of the mesh axis over which particles are sharded.
AXIS = "particles"
#: The run-state entry whose leaves lead with the particle axis.
ESTIMATOR_STATE = "estimator_state"


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D `particles` mesh over `devices` (default: all, of all processes).

  Args:
    devices: the devices; `jax.devices()` (every process's) by default.

  Returns:
    The mesh, with an Auto axis (see the module docstring for why).
  """
  devices = list(jax.devices() if devices is None else devices)
  return jax.make_mesh(
    (len(devices),), (AXIS,), axis_types=(AxisType.Auto,), devices=devices
  )


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of theta, the outer state and the data: a copy per device."""
  return NamedSharding(mesh, P())


def by_particle(mesh: Mesh) -> NamedSharding:
  """The sharding of an array whose leading axis is the particle axis."""
  return NamedSharding(mesh, P(AXIS))


def check_divisible(num_particles: int, num_devices: int) -> None:
  """Raises ValueError unless the particles split evenly over the devices.

  Args:
    num_particles: `estimator.num_particles`.
    num_devices: the number of devices of the mesh (of all processes).
  """
  if num_particles % num_devices:
    lower = num_particles - num_particles % num_devices
    options = " or ".join(str(n) for n in (lower, lower + num_devices) if n)
    raise ValueError(
      f"estimator.num_particles ({num_particles}) must be divisible by the "
      f"number of devices ({num_devices}): every device holds the same "
      f"number of particles. Use e.g. {options} particles, or another "
      f"number of devices."
    )


def run_state_shardings(run_state: dict[str, PyTree], mesh: Mesh) -> dict:
  """The shardings of a run state, leaf for leaf.

  Args:
    run_state: the run state, or its `jax.eval_shape`; a dict whose
      `estimator_state` leaves lead with the particle axis.
    mesh: the particle mesh.

  Returns:
    A pytree of `NamedSharding` with the structure of `run_state`:
    `P('particles')` for the estimator state, `P()` for everything else.
  """
  rep, part = replicated(mesh), by_particle(mesh)
  return {
    name: jax.tree.map(
      lambda _, s=part if name == ESTIMATOR_STATE else rep: s, value
    )
    for name, value in run_state.items()
  }


def shard_particles(
  build_estimator: Callable[[PyTree], Any], data: PyTree, mesh: Mesh
):
  """Builds an estimator whose particles run under `shard_map` over `mesh`.

  The estimator is `build_estimator(data)` with a `particle_map` (the hook
  through which `init`'s burn-in, `estimate` and `particle_estimates` run
  the per-particle window) that runs each device's N / D particles inside
  `jax.shard_map`. The per-particle keys are the N keys the estimator
  splits from the call's key before any particle_map, sliced per device, so
  no draw depends on the number of devices. The outputs stay sharded on the
  particle axis; the estimator's own reductions over them then become
  cross-device reductions in the surrounding jit.

  Args:
    build_estimator: `data -> Estimator`, e.g. building the system around the
      dataset arrays. It is called once with `data` and, inside the
      shard_map, once more with each device's view of it, whose estimator
      then maps the device's particles with its own particle_map (the plain
      vmap by default): arrays that the system merely closed over would
      carry the global mesh into the per-device code, where jit rejects
      them, so they go in as explicit replicated operands instead, and the
      window handed to the particle_map (which closes over the global
      `data`) is not used.
    data: the pytree of arrays the estimator is built from (replicated).
    mesh: the particle mesh; its size must divide the number of particles.

  Returns:
    An estimator with the same results (to floating-point summation order)
    whose state leaves are sharded over `mesh`.
  """
  estimator = build_estimator(data)
  check_divisible(estimator.num_particles, mesh.shape[AXIS])
  spec = P(AXIS)

  def particle_map(window, theta, state, keys, num_steps: int):
    del window  # closes over the global `data`; rebuilt per device below

    def local(theta, state, keys, data):
      return build_estimator(data).map_particles(theta, state, keys, num_steps)

    # theta and the data are replicated (P()); every output leads with the
    # particle axis. check_vma=False: the estimators are plain per-particle
    # code that starts scan carries from constants (a zero gradient sum,
    # FullES's fresh episode) which the particles then make device-varying;
    # the check would reject that, and it has nothing to protect here since
    # no output is claimed replicated. (Should a caller differentiate
    # through this, theta's cotangent is summed over the devices, as it
    # should.)
    return jax.shard_map(
      local,
      mesh=mesh,
      in_specs=(P(), spec, spec, P()),
      out_specs=spec,
      check_vma=False,
    )(theta, state, keys, data)

  return estimator.with_particle_map(particle_map)


def put_replicated(tree: PyTree, mesh: Mesh) -> PyTree:
  """Places host (numpy) arrays on every device of `mesh`, replicated.

  Works in multi-process runs as long as every process passes the same
  values: `jax.device_put` of numpy onto a global sharding is supported,
  unlike `device_put` of a jax array onto other processes' devices.
  """
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: jax.device_put(np.asarray(x), sharding), tree)


def to_host(tree: PyTree) -> PyTree:
  """Copies arrays to host numpy, also when they span several processes.

  `np.asarray` fails on an array that is not fully addressable (a
  multi-process run). A replicated one is read from a local copy; a sharded
  one is all-gathered (a collective: every process must call this).
  Typed PRNG keys come back as their uint32 key data.
  """

  def key_data(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.key_data(x)
    return x

  def leaf(x):
    if not isinstance(x, jax.Array):
      return np.asarray(x)
    if x.is_fully_addressable:
      return np.asarray(key_data(x))
    if x.sharding.is_fully_replicated:
      # A local copy: no computation that other processes would have to join.
      return np.asarray(key_data(x.addressable_data(0)))
    return np.asarray(
      multihost_utils.process_allgather(key_data(x), tiled=True)
    )

  return jax.tree.map(leaf, tree)
