# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Gradient estimators on toy systems: bias, variance, influence balancing
#
# lopt's estimators work on any *unrolled system* (`init`, `step`,
# `horizon`). On the toy systems of `lopt.systems` the right answer is
# known, so we can see what each estimator gets right:
#
# 1. **Bias** on a linear-quadratic system with a closed-form gradient:
#    NRES, PES and FullES are unbiased; truncated ES (TES) is not.
# 2. **Variance** of a single estimate: NRES < PES, and the gap shrinks as
#    the truncation length W grows (the NRES paper's analysis).
# 3. **Influence balancing** (the PES paper): short truncations see a
#    gradient of the wrong sign and walk away from the optimum; PES and NRES
#    find it.

# %%
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from lopt import analysis, estimators, systems
from lopt.train import outer

jax.config.update("jax_enable_x64", True)  # exact oracles need float64

# %% [markdown]
# ## 1. Bias and variance on the linear-quadratic system
#
# s_t = 0.9 s_{t-1} + c . theta, L_t = (s_t - 1)^2 / 2, T = 100. Every
# estimator gets W = 10 and sigma = 0.1; `analysis.estimator_variance`
# draws independent single-particle estimates at a fixed theta (no outer
# update) from step-unlocked particles, each sitting at a random window of
# its episode.

# %%
system = systems.LinearQuadratic()
theta = jnp.asarray([0.2, 0.1])
true_grad = system.true_gradient(theta)
truncated_grad = system.truncated_gradient(theta, 10)
print("true gradient:      ", true_grad)
print("window-local (TBPTT):", truncated_grad)

results = {}
for name in ["nres", "pes", "tes", "full_es"]:
  est = estimators.make(
    name, system, num_particles=10_000, unroll_length=10, sigma=0.1
  )
  results[name] = analysis.estimator_variance(
    est, theta, jax.random.key(0), num_samples=10_000
  )

print(
  f"{'':8s} {'mean estimate':>24s} {'z vs true':>18s} "
  f"{'trace var':>10s} {'exact':>8s}"
)
exact = {
  "nres": analysis.exact_lq_variance(system, theta, 10)["trace"],
  "pes": analysis.exact_lq_variance(system, theta, 10, 10)["trace"],
  "full_es": analysis.exact_lq_variance(system, theta, 100)["trace"],
}
for name, v in results.items():
  z = (v.mean - true_grad) / v.mean_se
  print(
    f"{name:8s} {np.array2string(v.mean, precision=3):>24s} "
    f"{np.array2string(z, precision=1):>18s} {v.trace:10.1f} "
    f"{exact.get(name, float('nan')):8.1f}"
  )
# What the text below says (this notebook is also a test): the unbiased
# ones within 4 standard errors of the true gradient, with the exact
# variance (10,000 samples: a few per cent); TES far off.
for name in ("nres", "pes", "full_es"):
  v = results[name]
  assert np.all(np.abs(v.mean - true_grad) < 4 * v.mean_se), name
  assert abs(v.trace / exact[name] - 1) < 0.1, name
tes = results["tes"]
assert np.all(np.abs(tes.mean - true_grad) > 10 * tes.mean_se)
assert results["nres"].trace < results["pes"].trace

# %% [markdown]
# NRES, PES and FullES land within a few standard errors of the true
# gradient; TES lands on the window-local gradient instead, dozens of
# standard errors away from the true one. Per estimate, NRES has the least
# variance of the unbiased online estimators (about 679 vs PES's 1221 at
# W = 10); FullES (583) is lower still, but each FullES estimate costs a
# whole episode of T = 100 steps, ten times a window.
#
# ## 2. Variance as the truncation length W varies
#
# `analysis.exact_lq_variance` gives the exact per-estimate variance on
# this system for any W; the Monte Carlo values of section 1 (W = 10) sit on
# the curves. `python -m lopt.analysis` makes the full figure, with Monte
# Carlo at every W.

# %%
ws = [1, 2, 5, 10, 20, 25, 50, 100]
exact_pes = np.asarray(
  [analysis.exact_lq_variance(system, theta, w, w)["trace"] for w in ws]
)
exact_nres = np.asarray(
  [analysis.exact_lq_variance(system, theta, w)["trace"] for w in ws]
)

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
ax1.plot(ws, exact_pes, "C1-", label="PES (exact)")
ax1.plot(ws, exact_nres, "C0-", label="NRES (exact)")
for name, color in (("pes", "C1"), ("nres", "C0")):
  v = results[name]
  ax1.errorbar(
    10,
    v.trace,
    2 * v.trace_se,
    fmt="o",
    color=color,
    label=f"{name.upper()} Monte Carlo, W = 10",
  )
ax1.set(xscale="log", xlabel="W", ylabel="trace variance of one estimate")
ax1.legend(fontsize="small")
ax2.plot(ws, exact_pes / exact_nres, "k-")
ax2.set(xscale="log", xlabel="W", ylabel="Var(PES) / Var(NRES)")
for ax in (ax1, ax2):
  ax.grid(alpha=0.3)
plt.show()
for w, ratio in zip(ws, exact_pes / exact_nres):
  print(f"W = {w:3d}: PES/NRES = {ratio:.2f}")
# PES's excess variance shrinks with W and is gone at W = T.
assert np.all(np.diff(exact_pes / exact_nres) < 0)
np.testing.assert_allclose(exact_pes[-1], exact_nres[-1], rtol=1e-6)

# %% [markdown]
# NRES reuses one noise for the whole episode, PES draws a fresh one every
# W steps and accumulates them; the accumulated noise adds variance that
# grows with the number of windows already seen (T/W), so the gap is
# largest for short truncations and vanishes at W = T, where both are
# FullES.
#
# %% [markdown]
# ## 3. Influence balancing
#
# A scalar theta drives a chain whose first unit settles at -6 theta, so
# the loss (s[0] - 1)^2 / 2 is minimised at theta* = -1/6, while theta's
# immediate effect on s[0] is +1. SGD (lr 1e-4) from theta = 0.5 with 500
# lockstep particles and W = 1 (`python -m lopt.compare
# --config=configs/influence_balancing.py` runs the whole table, TBPTT with
# W = 10 and 100 included, and plots it).

# %%
ib = systems.InfluenceBalancing()
trajectories, finals = {}, {}
for name in ["nres", "pes", "tes", "tbptt"]:
  est = estimators.make(
    name, ib, num_particles=500, unroll_length=1, sigma=0.1, step_unlocked=False
  )
  final, history = outer.meta_train(
    est, optax.sgd(1e-4), jnp.asarray(0.5), jax.random.key(3), 3000
  )
  trajectories[name] = np.asarray(history["theta"])
  finals[name] = float(final)
  print(f"{name:6s} final theta {finals[name]:+.6f}")
# The PES paper's result (this notebook is also a test).
for name in ("nres", "pes"):
  assert abs(finals[name] - systems.influence_balancing.OPTIMUM) < 1e-3, name
for name in ("tes", "tbptt"):
  assert finals[name] > 3, name

fig, ax = plt.subplots(figsize=(6, 3.5))
for name, thetas in trajectories.items():
  ax.plot(thetas, label=name)
ax.axhline(
  systems.influence_balancing.OPTIMUM, color="k", ls="--", label="theta* = -1/6"
)
ax.set(xlabel="outer step", ylabel="theta")
ax.legend()
plt.show()

# %% [markdown]
# NRES and PES converge to -1/6; truncated ES and truncated backprop with
# W = 1 follow the short-term influence and move the wrong way (theta ~ 3.3
# after 3,000 steps), as in the PES paper.
