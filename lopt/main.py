"""Meta-train a learned optimizer.

    python -m lopt.main --config=configs/default.py --workdir=/tmp/lopt \
        [--config.estimator.name=pes ...]

Running the same command again on a workdir with checkpoints resumes from the
newest complete one, on any number of devices that divides the particle count.

Multi-host (a TPU pod slice, or N processes on CPUs/GPUs): run the same
command on every host with `--distributed` (on Cloud TPU VMs JAX finds the
other hosts itself; elsewhere add `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I`, see launch/local_multiprocess.sh). Only
process 0 writes metrics and logs at INFO level (the others log warnings and
errors, unless `--verbosity` is given); every process joins the checkpoint
saves and restores. SIGTERM (or a TPU preemption notice) makes the run save
a checkpoint at the next step boundary and exit.

Exit status: 0 = meta-trained to `outer.num_steps`; 75 (`EXIT_PREEMPTED`,
sysexits.h's EX_TEMPFAIL) = stopped early by SIGTERM or a preemption notice,
its checkpoint saved: run the same command again to resume (the launch
scripts do); 1 = failed (a bad config, a corrupted checkpoint, a crash).
"""

import os

import jax
from absl import flags, logging
from ml_collections import config_flags

from lopt import console, sharding, train

#: The exit status of a run that SIGTERM or a preemption notice stopped
#: before `outer.num_steps`, after saving the step it had reached: "try again
#: later", distinct from success (0) and from failure (1).
EXIT_PREEMPTED = 75


def define_flags() -> dict[str, flags.FlagHolder]:
  """The command-line flags (see `lopt.console.run_program`)."""
  return {
    "config": config_flags.DEFINE_config_file(
      "config", None, "Path to an ml_collections config file.", lock_config=True
    ),
    "workdir": flags.DEFINE_string(
      "workdir", None, "Directory for checkpoints and metrics."
    ),
    "distributed": flags.DEFINE_bool(
      "distributed",
      False,
      "Call jax.distributed.initialize() (TPU pods and multi-process runs).",
    ),
    "coordinator_address": flags.DEFINE_string(
      "coordinator_address",
      None,
      "host:port of process 0, with --distributed (auto-detected on Cloud "
      "TPU, Slurm and other known clusters).",
    ),
    "num_processes": flags.DEFINE_integer(
      "num_processes", None, "Number of processes, with --distributed."
    ),
    "process_id": flags.DEFINE_integer(
      "process_id", None, "This process's index, with --distributed."
    ),
    "compilation_cache_dir": flags.DEFINE_string(
      "compilation_cache_dir",
      None,
      "Directory (local or gs://...) of JAX's persistent compilation cache: "
      "a restarted or resumed run of the same config loads its compiled "
      "programs from there instead of compiling them again. Default: "
      "WORKDIR/compilation_cache, on every backend: on a 2-core CPU a "
      "restart of configs/default.py took 26 s of CPU instead of 49 s, and "
      "the first start paid about 3 s to fill the cache (1 MB). Give one "
      "directory to several runs to share it; '' turns the cache off.",
    ),
    "allow_config_change": flags.DEFINE_bool(
      "allow_config_change",
      False,
      "Resume a workdir under a config that changes what is computed "
      "(refused otherwise); the change is logged and noted in metrics.jsonl.",
    ),
  }


def use_compilation_cache(directory: str) -> None:
  """Turns on JAX's persistent compilation cache; before anything compiles."""
  jax.config.update("jax_compilation_cache_dir", directory)
  # Every program, however quickly it compiles (lopt has a handful), so that
  # what is cached does not depend on the machine's speed.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  # 0: no size floor of lopt's own; JAX may still raise it for a file
  # system where small files are slow.
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def main(f: dict) -> None:
  cache_dir = f["compilation_cache_dir"]
  if cache_dir is None:
    cache_dir = os.path.join(f["workdir"], "compilation_cache")
  if cache_dir:
    use_compilation_cache(cache_dir)
  if f["distributed"]:
    # Must come before anything touches the devices. With no arguments it
    # auto-detects Cloud TPU, Slurm, ...; the flags serve other clusters.
    jax.distributed.initialize(
      coordinator_address=f["coordinator_address"],
      num_processes=f["num_processes"],
      process_id=f["process_id"],
    )
  if jax.process_index() > 0 and not flags.FLAGS["verbosity"].present:
    # N copies of every progress line help no one; problems still show.
    logging.set_verbosity(logging.WARNING)
  run_state = train.train_and_evaluate(
    f["config"], f["workdir"], allow_config_change=f["allow_config_change"]
  )
  step = int(sharding.to_host(run_state["step"]))
  if step < f["config"].outer.num_steps:
    logging.warning(
      "Stopped at step %d of %d; exit status %d (preempted): the same "
      "command resumes.",
      step,
      f["config"].outer.num_steps,
      EXIT_PREEMPTED,
    )
    raise SystemExit(EXIT_PREEMPTED)


if __name__ == "__main__":
  console.run_program(main, define_flags, required=["config", "workdir"])
