"""What a convolution's gradient costs inside `lax.scan`, and the fix.

    python docs/performance/conv_in_scan.py [--output=docs/performance/conv_in_scan.json]

One Adam step of a 2-conv CNN (3x3 'SAME' 8 then 16 channels, global
average pooling, a dense head; batch 32 of 8x8x1), built on `nn.Conv` with
lax's convolution or with `lopt.tasks.networks.conv`, run three ways: a
jitted step called T times from Python, T steps in one `lax.scan`, and 8
copies vmapped over that scan (as lopt's particles are). Times are ms per
step (per step of all 8 copies for the vmapped rows), the median over
interleaved repeats, so a shared machine's drift hits every row alike.
The scanned XLA programs' convolution layouts are recorded beside them:
`b01f_01io->b01f` is the one XLA:CPU's fast kernels take.
"""

import collections
import json
import os
import re
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from absl import app, flags
from jax import lax

from lopt.bench import measure
from lopt.tasks import networks

_OUTPUT = flags.DEFINE_string(
  "output",
  os.path.join(os.path.dirname(os.path.abspath(__file__)), "conv_in_scan.json"),
  "Where the JSON goes.",
)
_REPEATS = flags.DEFINE_integer("repeats", 7, "Interleaved timing repeats.")
STEPS, COPIES, BATCH, SIZE = 100, 8, 32, 8


class CNN(nn.Module):
  conv: object

  @nn.compact
  def __call__(self, x):
    for width in (8, 16):
      x = nn.relu(
        nn.Conv(width, (3, 3), padding="SAME", conv_general_dilated=self.conv)(
          x
        )
      )
    return nn.Dense(10)(x.mean((1, 2)))


def _programs(conv):
  model, tx = CNN(conv), optax.adam(1e-3)
  images = jax.random.normal(jax.random.key(0), (BATCH, SIZE, SIZE, 1))
  labels = jnp.arange(BATCH) % 10
  params = model.init(jax.random.key(1), images)

  def step(carry, _):
    params, opt_state = carry
    grads = jax.grad(
      lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply(p, images), labels
      ).mean()
    )(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  carry = (params, tx.init(params))
  copies = jax.tree.map(lambda x: jnp.stack([x] * COPIES), carry)
  one = jax.jit(lambda c: step(c, None)[0])

  def loop(c):
    for _ in range(STEPS):
      c = one(c)
    return c

  def scan(c):
    return lax.scan(step, c, None, length=STEPS)[0]

  scanned = jax.jit(scan)
  layouts = re.findall(
    r"convolution\([^\n]*dim_labels=(\S+?),",
    scanned.lower(carry).compile().as_text(),
  )
  return {
    "jitted step, Python loop": (loop, carry),
    "lax.scan": (scanned, carry),
    f"vmap of {COPIES} over lax.scan": (jax.jit(jax.vmap(scan)), copies),
  }, dict(collections.Counter(layouts))


def main(argv) -> None:
  del argv
  runs, layouts = {}, {}
  for name, conv in (
    ("lax", lax.conv_general_dilated),
    ("networks.conv", networks.conv),
  ):
    programs, layouts[name] = _programs(conv)
    for mode, program in programs.items():
      runs[f"{name}: {mode}"] = program
  for fn, carry in runs.values():
    jax.block_until_ready(fn(carry))  # compile
  times = collections.defaultdict(list)
  for _ in range(_REPEATS.value):
    for key, (fn, carry) in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(carry))
      times[key].append(1e3 * (time.perf_counter() - start) / STEPS)
  ms = {k: statistics.median(v) for k, v in times.items()}
  result = {
    "machine": measure.machine_info(),
    "steps": STEPS,
    "copies": COPIES,
    "ms_per_step": ms,
    "ms_per_step_all": dict(times),
    "scan_over_loop": {
      name: ms[f"{name}: lax.scan"] / ms[f"{name}: jitted step, Python loop"]
      for name in layouts
    },
    "speedup_of_networks_conv": {
      mode: ms[f"lax: {mode}"] / ms[f"networks.conv: {mode}"]
      for mode in ("lax.scan", f"vmap of {COPIES} over lax.scan")
    },
    "scan_convolution_layouts": layouts,
  }
  with open(_OUTPUT.value, "w") as f:
    json.dump(result, f, indent=1)
  for key, value in ms.items():
    print(f"{key}: {value:.3f} ms/step")
  print(
    json.dumps(
      {
        k: result[k]
        for k in (
          "scan_over_loop",
          "speedup_of_networks_conv",
          "scan_convolution_layouts",
        )
      },
      indent=1,
    )
  )


if __name__ == "__main__":
  app.run(main)
