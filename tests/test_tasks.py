"""Tests for lopt.tasks.models: inner models, losses and batch sampling."""

import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_diabetes, load_digits

from lopt.tasks import models


def _digits_task(**kwargs):
  return models.make_task(
    "mlp", hidden=(32, 32, 32), num_classes=10, input_shape=(8, 8, 1), **kwargs
  )


def test_mlp_parameter_count_matches_paper():
  task = _digits_task()
  params = jax.jit(task.init)(jax.random.key(0))
  assert task.num_params == 4522
  assert sum(x.size for x in jax.tree.leaves(params)) == 4522
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  assert isinstance(params, dict)


def test_init_is_lecun_normal_with_zero_biases():
  task = models.make_task(
    "mlp", hidden=(256,), num_classes=10, input_shape=(64,)
  )
  params = jax.jit(task.init)(jax.random.key(1))
  kernel = params["Dense_0"]["kernel"]
  assert kernel.shape == (64, 256)
  np.testing.assert_allclose(float(jnp.std(kernel)), 1 / 8, rtol=0.05)
  assert float(jnp.abs(params["Dense_0"]["bias"]).max()) == 0.0
  # Different keys give different parameters.
  other = jax.jit(task.init)(jax.random.key(2))
  assert not np.allclose(kernel, other["Dense_0"]["kernel"])


def test_loss_at_init_is_about_log10():
  task = _digits_task()
  params = jax.jit(task.init)(jax.random.key(0))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(size=(256, 8, 8, 1)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, size=256))
  loss = jax.jit(task.loss)(params, images, labels)
  assert loss.shape == ()
  assert np.isfinite(loss)
  assert abs(float(loss) - math.log(10)) < 0.5
  acc = jax.jit(task.accuracy)(params, images, labels)
  assert 0.0 <= float(acc) <= 1.0


def test_sample_batch_shapes_and_randomness_under_jit():
  task = _digits_task(batch_size=32)
  images = jnp.arange(100 * 64, dtype=jnp.float32).reshape(100, 8, 8, 1)
  labels = jnp.arange(100) % 10
  sample = jax.jit(task.sample_batch)
  x1, y1 = sample(jax.random.key(0), images, labels)
  x2, _ = sample(jax.random.key(1), images, labels)
  assert x1.shape == (32, 8, 8, 1) and y1.shape == (32,)
  assert not np.array_equal(x1, x2)
  # Rows stay paired with their labels.
  rows = np.asarray(x1[:, 0, 0, 0] / 64).astype(int)
  np.testing.assert_array_equal(rows % 10, np.asarray(y1))
  # Same key, same batch.
  np.testing.assert_array_equal(
    x1, sample(jax.random.key(0), images, labels)[0]
  )


def test_cnn_forward_shape_and_count():
  task = models.make_task(
    "cnn",
    hidden=(32, 32, 32, 32),
    num_classes=10,
    input_shape=(32, 32, 3),
    batch_size=4,
  )
  assert task.num_params == 29930
  params = jax.jit(task.init)(jax.random.key(0))
  logits = jax.jit(task.apply)(params, jnp.ones((4, 32, 32, 3)))
  assert logits.shape == (4, 10)
  small = models.make_task(
    "cnn", hidden=(4,), num_classes=3, input_shape=(8, 8)
  )
  out = jax.jit(small.apply)(
    jax.jit(small.init)(jax.random.key(0)), jnp.ones((2, 8, 8))
  )
  assert out.shape == (2, 3)


def test_adam_reduces_loss_on_synthetic_data():
  task = models.make_task(
    "mlp",
    hidden=(16,),
    num_classes=3,
    input_shape=(4,),
    activation="tanh",
    batch_size=64,
  )
  rng = np.random.default_rng(0)
  centers = 2.0 * rng.normal(size=(3, 4))
  labels = np.arange(300) % 3
  images = centers[labels] + 0.3 * rng.normal(size=(300, 4))
  images, labels = jnp.asarray(images, jnp.float32), jnp.asarray(labels)
  tx = optax.adam(1e-2)

  @jax.jit
  def train(key):
    params = task.init(key)

    def step(carry, k):
      params, opt_state = carry
      x, y = task.sample_batch(k, images, labels)
      grads = jax.grad(task.loss)(params, x, y)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    first = task.loss(params, images, labels)
    carry = (params, tx.init(params))
    (params, _), _ = jax.lax.scan(step, carry, jax.random.split(key, 30))
    return first, task.loss(params, images, labels)

  first, last = train(jax.random.key(1))
  assert float(last) < 0.5 * float(first)


def test_init_under_vmap():
  task = _digits_task()
  params = jax.jit(jax.vmap(task.init))(jax.random.split(jax.random.key(0), 3))
  assert params["Dense_0"]["kernel"].shape == (3, 64, 32)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(model="vit"), r"'mlp', 'cnn', 'resnet'"),
    (dict(model="transformer"), r"trains on text data"),
    (dict(model="autoencoder", reconstruction="l1"), r"reconstruction"),
    (dict(model="resnet", norm="batch"), r"norm"),
    (
      dict(model="transformer", data_kind="text", hidden=(30,), heads=4),
      r"multiple of heads",
    ),
    (dict(model="mlp", activation="swish"), r"gelu"),
    (dict(model="cnn", input_shape=(64,)), r"input_shape"),
  ],
)
def test_bad_arguments_raise(kwargs, match):
  args = dict(hidden=(8,), num_classes=10, input_shape=(8, 8, 1))
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    models.make_task(args.pop("model"), **args)


# -- the models beyond image classifiers ----------------------------------------


def stdlib_bytes(n: int) -> np.ndarray:
  """Real text: the first `n` bytes of a standard-library module's source."""
  import sysconfig

  path = os.path.join(sysconfig.get_paths()["stdlib"], "argparse.py")
  with open(path, "rb") as f:
    return np.frombuffer(f.read(n), np.uint8).astype(np.int32)


def lm_task(**kw):
  args = dict(hidden=(32, 32), num_classes=256, input_shape=(), batch_size=16)
  args.update(data_kind="text", heads=4, seq_len=32, **kw)
  return models.make_task("transformer", **args)


def train_losses(task, tx, x, y, steps) -> np.ndarray:
  """Each step's training loss of `tx` from a fresh init (one jitted scan)."""

  def step(carry, key):
    params, opt_state = carry
    xb, yb = task.sample_batch(key, x, y)
    loss, grads = jax.value_and_grad(task.loss)(params, xb, yb)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  params = task.init(jax.random.key(0))
  keys = jax.random.split(jax.random.key(1), steps)
  _, losses = jax.jit(lambda c: jax.lax.scan(step, c, keys))(
    (params, tx.init(params))
  )
  return np.asarray(losses)


def _adam_steps(task, x, y, steps, lr=3e-3):
  """(first loss, mean of the last 10 losses) of Adam from a fresh init."""
  losses = train_losses(task, optax.adam(lr), x, y, steps)
  return float(losses[0]), float(losses[-10:].mean())


@pytest.mark.parametrize(
  "kind",
  [
    "resnet_layer",
    "resnet_group",
    "ae_mse",
    "ae_bernoulli",
    "regression",
    "lm",
  ],
)
def test_every_kind_of_model_learns_its_real_data(kind):
  # Real data for each: the digits' images, scikit-learn's diabetes table
  # (standardised) and the bytes of a standard-library module.

  digits = load_digits()
  images = jnp.asarray(digits.images[..., None] / 16.0, jnp.float32)
  labels = jnp.asarray(digits.target, jnp.int32)
  if kind.startswith("resnet"):
    task = models.make_task(
      "resnet",
      hidden=(8, 16),
      num_classes=10,
      input_shape=(8, 8, 1),
      batch_size=64,
      norm=kind.split("_")[1],
    )
    first, last = _adam_steps(task, images, labels, 150)
    assert last < 0.5 * first
  elif kind.startswith("ae"):
    task = models.make_task(
      "autoencoder",
      hidden=(32, 8),
      num_classes=10,
      input_shape=(8, 8, 1),
      batch_size=64,
      reconstruction=kind.split("_")[1],
    )
    assert task.objective == "reconstruction"
    first, last = _adam_steps(task, images, labels, 300)
    assert last < (0.5 if kind == "ae_mse" else 0.95) * first
  elif kind == "regression":
    x, y = load_diabetes(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std()
    task = models.make_task(
      "mlp",
      hidden=(16,),
      num_classes=0,
      input_shape=(10,),
      batch_size=32,
      data_kind="regression",
    )
    assert task.objective == "regression"
    first, last = _adam_steps(
      task, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), 300
    )
    # Standardised targets: chance is an MSE of 1; the features explain half.
    assert last < 0.7
  else:
    stream = jnp.asarray(stdlib_bytes(20_000))
    first, last = _adam_steps(
      lm_task(), stream, jnp.zeros((0,), jnp.int32), 200
    )
    # From ln 256 = 5.5 nats to below the unigram entropy of code (~4.5).
    assert first > 5.0 and last < 3.5


def test_transformer_is_causal_and_inits_its_norms_and_tables():
  task = lm_task()
  params = task.init(jax.random.key(0))
  assert task.objective == "language_model" and task.seq_len == 32
  np.testing.assert_array_equal(params["LayerNorm_0"]["scale"], 1.0)
  np.testing.assert_array_equal(params["block_0"]["qkv"]["bias"], 0.0)
  table = np.asarray(params["embed"]["embedding"])
  assert table.shape == (256, 32)
  assert abs(table.std() * np.sqrt(32) - 1) < 0.1  # N(0, 1 / width)
  tokens = jnp.asarray(stdlib_bytes(32))[None]
  changed = tokens.at[0, 20:].set(7)
  a, b = task.apply(params, tokens), task.apply(params, changed)
  np.testing.assert_allclose(a[0, :20], b[0, :20], rtol=1e-5, atol=1e-5)
  assert not np.allclose(a[0, 20:], b[0, 20:])


def test_a_held_out_stream_is_scored_on_its_first_windows():
  task = lm_task()
  params = task.init(jax.random.key(0))
  stream = jnp.asarray(stdlib_bytes(100_000))
  length = task.seq_len + 1
  windows = stream[: models.EVAL_WINDOWS * length].reshape(-1, length)
  expected = task.loss(params, windows[:, :-1], windows[:, 1:])
  np.testing.assert_allclose(
    task.loss(params, stream, None), expected, rtol=1e-6
  )
  # A batch of windows is scored as it is (training batches).
  x, y = task.sample_batch(jax.random.key(2), stream, None)
  assert x.shape == y.shape == (16, 32)
  np.testing.assert_array_equal(x[:, 1:], y[:, :-1])


@pytest.mark.parametrize("kind", ["lm", "regression", "ae"])
def test_example_weights_average_the_kept_examples(kind):
  # The batch-fraction augmentation weighs examples 1/0; every objective
  # must then score the kept ones only.
  key = jax.random.key(3)
  if kind == "lm":
    task, x, y = lm_task(), jnp.asarray(stdlib_bytes(5000)), None
  elif kind == "regression":
    task = models.make_task(
      "mlp",
      hidden=(4,),
      num_classes=0,
      input_shape=(3,),
      batch_size=8,
      data_kind="regression",
    )
    x = jax.random.normal(key, (50, 3))
    y = x.sum(1)
  else:
    task = models.make_task(
      "autoencoder",
      hidden=(4,),
      num_classes=0,
      input_shape=(4, 4, 1),
      batch_size=8,
    )
    x, y = jax.random.uniform(key, (50, 4, 4, 1)), jnp.zeros((50,))
  params = task.init(key)
  xb, yb = task.sample_batch(key, x, y)
  keep = jnp.arange(task.batch_size) < 3
  weighted = task.loss(params, xb, yb, keep.astype(jnp.float32))
  np.testing.assert_allclose(
    weighted, task.loss(params, xb[:3], yb[:3]), rtol=1e-6
  )


@pytest.mark.parametrize(
  "kernel,channels", [((3, 3), (3, 5)), ((1, 1), (4, 2))]
)
def test_the_networks_convolution_is_lax_with_a_loop_friendly_gradient(
  kernel, channels
):
  """`networks.conv` computes lax's 'SAME' convolution and its gradients,
  also for a batch of kernels under vmap (the particles of a run)."""
  from jax import lax

  from lopt.tasks import networks

  cin, cout = channels
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (2, 4, 6, 8, cin))
  w = jax.random.normal(keys[1], (2, *kernel, cin, cout))
  g = jax.random.normal(keys[2], (2, 4, 6, 8, cout))
  numbers = lax.conv_dimension_numbers(x.shape[1:], w.shape[1:], networks._NHWC)

  def loss(conv, x, w, g):
    return jnp.sum(conv(x, w, (1, 1), "SAME", dimension_numbers=numbers) * g)

  def grads(conv):
    return jax.vmap(jax.value_and_grad(lambda *a: loss(conv, *a), (0, 1)))(
      x, w, g
    )

  ours, reference = grads(networks.conv), grads(lax.conv_general_dilated)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", ["cnn", "resnet"])
def test_scanned_training_steps_keep_every_convolution_in_the_fast_layout(
  model,
):
  """Inside `lax.scan` XLA:CPU runs a convolution fast only in the NHWC /
  HWIO layout (networks.conv); JAX's own kernel gradient is a convolution
  in a permuted layout, which it would run as a naive loop (docs/
  performance.md). Every convolution of a scanned Adam step of lopt's
  convolutional models must be in the fast layout."""
  task = models.make_task(
    model,
    hidden=(4, 8),
    num_classes=10,
    input_shape=(8, 8, 1),
    activation="relu",
    batch_size=4,
  )
  tx = optax.adam(1e-3)
  params = task.model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  images, labels = jnp.zeros((4, 8, 8, 1)), jnp.zeros((4,), jnp.int32)

  def step(carry, _):
    params, opt_state = carry
    grads = jax.grad(
      lambda p: optax.softmax_cross_entropy_with_integer_labels(
        task.model.apply(p, images), labels
      ).mean()
    )(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  hlo = (
    jax.jit(lambda c: jax.lax.scan(step, c, None, length=3)[0])
    .lower((params, tx.init(params)))
    .compile()
    .as_text()
  )
  layouts = re.findall(r"convolution\([^\n]*dim_labels=(\S+?),", hlo)
  # At least each layer forward and its kernel gradient (2 and 6 layers).
  assert len(layouts) >= 2 * (2 if model == "cnn" else 6), len(layouts)
  assert set(layouts) == {"b01f_01io->b01f"}, sorted(set(layouts))
