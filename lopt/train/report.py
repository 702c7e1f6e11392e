"""What a meta-training run tells a person and its metrics file.

Three moments: the description at start (what is meta-trained, on what, by
which estimator, on which devices), a progress point every `log.every_steps`
outer steps (meta-loss, the estimate's signal-to-noise, throughput and ETA,
per task for a family) and the summary at the end (where the outputs went).
"""

import os

import jax
import numpy as np
from absl import logging

from lopt import console, metrics
from lopt.experiment import Experiment
from lopt.learned import optimizers


def describe(exp: Experiment, dataset, mesh) -> None:
  """Logs what is being meta-trained, on what, in a few lines."""
  config, est = exp.config, exp.config.estimator
  theta_size = sum(
    x.size for x in jax.tree.leaves(optimizers.theta_shapes(exp.lopt))
  )
  for group in exp.groups:
    ds = dataset[group.name] if exp.is_family else dataset
    spec = group.spec
    logging.info(
      "%s: %s %s (%s) on %s %s, batch %d, T = %d; %s parameters%s",
      f"Task {spec.name}" if exp.is_family else "Task",
      spec.model,
      list(spec.hidden),
      spec.activation,
      ds.name,
      "x".join(map(str, ds.image_shape)),
      spec.batch_size,
      spec.horizon,
      f"{group.task.num_params:,}",
      f"; {spec.num_particles} particles, weight {spec.weight:g}, loss / "
      f"{group.loss_scale:.4g}"
      if exp.is_family
      else "",
    )
  fractions = exp.family.batch_fractions
  if fractions != (1.0,):
    logging.info(
      "Augmentation: each episode trains on %s of every batch",
      " or ".join(f"{f:g}" for f in fractions),
    )
  num_particles = sum(g.spec.num_particles for g in exp.groups)
  logging.info(
    "Learned optimizer: %s %s, %s parameters; estimator %s, %d particles, "
    "W = %d, sigma = %g; outer %s lr %g for %d steps",
    exp.lopt.kind,
    list(exp.lopt.hidden),
    f"{theta_size:,}",
    est.name,
    num_particles,
    est.unroll_length,
    est.sigma,
    config.outer.optimizer,
    config.outer.learning_rate,
    config.outer.num_steps,
  )
  logging.info(
    "Devices: %d x %s in %d process(es), %d particles each",
    mesh.size,
    jax.devices()[0].platform,
    jax.process_count(),
    num_particles // mesh.size,
  )


def _group_metrics(exp: Experiment, info) -> dict[str, float]:
  """Per-task `<task>/meta_loss`, `grad_norm`, `grad_snr`, `nonfinite_steps`.

  The meta-loss of a family task is its normalised loss; the SNR (median
  over the log interval) tells whether that task's estimate carries signal.
  """
  if not exp.is_family:
    return {}
  out = {}
  for g in exp.groups:
    out[f"{g.name}/meta_loss"] = float(np.mean(info[f"{g.name}/loss"]))
    out[f"{g.name}/grad_norm"] = float(np.mean(info[f"{g.name}/grad_norm"]))
    out[f"{g.name}/grad_snr"] = float(np.median(info[f"{g.name}/grad_snr"]))
    out[f"{g.name}/nonfinite_steps"] = float(
      np.sum(info[f"{g.name}/nonfinite"])
    )
  return out


def progress(
  exp: Experiment,
  writer: metrics.MetricWriter,
  step: int,
  info,
  *,
  outer_steps_per_sec: float,
  inner_steps_per_outer: int,
  train_seconds: float,
) -> None:
  """Writes the metrics of a log point and logs its line with the ETA.

  Args:
    exp: the experiment.
    writer: the run's metric writer.
    step: the outer step reached.
    info: the estimator infos since the last log point, on the host,
      concatenated over outer steps.
    outer_steps_per_sec: the rate since the last log point.
    inner_steps_per_outer: inner steps that one outer step takes.
    train_seconds: training wall-clock so far.
  """
  num_steps = exp.config.outer.num_steps
  rate = outer_steps_per_sec
  loss = float(np.mean(info["loss"]))
  writer.write(
    step,
    {
      "meta_loss": loss,
      "grad_norm": float(np.mean(info["grad_norm"])),
      # Signal-to-noise of the ES estimate: far below 1 means sigma or the
      # particle count is off and updates are mostly noise.
      "grad_snr": float(np.median(info["grad_snr"])),
      "grad_var": float(np.mean(info["grad_var"])),
      "nonfinite_steps": float(np.sum(info["nonfinite"])),
      "skipped_updates": float(np.sum(~info["applied"])),
      "inner_steps_per_sec": rate * inner_steps_per_outer,
      "outer_steps_per_sec": rate,
      "train_seconds": train_seconds,
      **_group_metrics(exp, info),
    },
  )
  logging.info(
    "step %d/%d: meta-loss %.4f, %s inner steps/s, ETA %s",
    step,
    num_steps,
    loss,
    f"{rate * inner_steps_per_outer:,.0f}",
    console.duration((num_steps - step) / rate),
  )


def summary(
  workdir: str, ckpt_dir: str, step: int, num_steps: int, train_seconds: float
) -> None:
  """Logs where the run stopped and where its outputs went."""
  logging.info(
    "Meta-trained to step %d of %d (%s of training). Checkpoints: %s; "
    "metrics: %s; TensorBoard: tensorboard --logdir %s",
    step,
    num_steps,
    console.duration(train_seconds),
    ckpt_dir,
    os.path.join(workdir, metrics.METRICS_FILE),
    workdir,
  )
