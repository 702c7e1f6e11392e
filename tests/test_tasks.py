"""Tests for lopt.tasks.models: inner models, losses and batch sampling."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

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
    (dict(model="resnet"), r"'mlp', 'cnn'"),
    (dict(model="mlp", activation="swish"), r"gelu"),
    (dict(model="cnn", input_shape=(64,)), r"input_shape"),
  ],
)
def test_bad_arguments_raise(kwargs, match):
  args = dict(hidden=(8,), num_classes=10, input_shape=(8, 8, 1))
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    models.make_task(args.pop("model"), **args)
