"""Tests for lopt.learned.optimizers: features, MLPLOpt, the Adam kinds, optax API.

Structure checks follow algorithms.md oracle O13 (parameter count, features,
momenta, scale invariance, zero theta gives the identity optimizer).
"""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lopt.learned import features
from lopt.learned import optimizers as opt
from lopt.learned.config import HYPERGRADIENT_METRICS, LOptConfig

MLP_CFG = LOptConfig()
NOM_CFG = LOptConfig(kind="nominal")
ADA_CFG = LOptConfig(kind="adaptive")


# Test data comes from numpy: every eager jax.random call of a new shape
# compiles threefry, which costs seconds on CPU.


def _params():
  """A small tree with a matrix, a vector, a scalar and a nested dict."""
  rng = np.random.default_rng(0)
  return {
    "w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
    "b": jnp.zeros((3,)),
    "scale": jnp.asarray(1.5),
    "inner": {"v": jnp.asarray(rng.normal(size=(7,)), jnp.float32)},
  }


def _grads(seed, params, scale=1.0):
  """Standard-normal values (times scale), shaped like params."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda p: jnp.asarray(scale * rng.normal(size=jnp.shape(p)), jnp.float32),
    params,
  )


def _num(tree):
  return sum(np.size(x) for x in jax.tree.leaves(tree))


def test_mlplopt_has_1762_parameters():
  theta = opt.init_theta(MLP_CFG, jax.random.key(0))
  assert _num(theta) == 1762
  assert isinstance(theta, dict) and isinstance(theta["mlp"], dict)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(theta))
  assert theta["mlp"]["layer_0"]["kernel"].shape == (19, 32)
  nominal = opt.init_theta(NOM_CFG, jax.random.key(0))
  assert nominal["log_lr"].shape == ()
  np.testing.assert_allclose(np.exp(nominal["log_lr"]), 0.03, rtol=1e-6)
  assert _num(nominal) == 22 * 32 + 32 + 32 * 32 + 32 + 32 * 2 + 2 + 1


def test_feature_shapes():
  params = _params()
  grads = _grads(1, params)
  for cfg, num in ((MLP_CFG, 19), (NOM_CFG, 22)):
    state = opt.learned_optimizer(
      opt.init_theta(cfg, jax.random.key(0)), cfg, 100
    ).init(params)
    feats = jax.jit(features.compute_features, static_argnums=(0, 4))(
      cfg, grads, state, params, 100
    )
    assert feats.shape == (_num(params), num)
    assert features.num_features(cfg) == num
    assert np.all(np.isfinite(feats))


def test_momenta_after_one_step_from_zero():
  params = _params()
  grads = _grads(1, params)
  tx = opt.learned_optimizer(
    opt.init_theta(MLP_CFG, jax.random.key(0)), MLP_CFG
  )
  state = tx.init(params)
  assert state.count.dtype == jnp.int32 and int(state.count) == 0
  assert jax.tree.all(
    jax.tree.map(np.array_equal, state, features.init_state(MLP_CFG, params))
  )
  _, state = jax.jit(tx.update)(grads, state, params)
  assert int(state.count) == 1
  for g, m in zip(jax.tree.leaves(grads), jax.tree.leaves(state.momenta)):
    assert m.shape == (6, *jnp.shape(g))
    for i, beta in enumerate(features.MOMENTUM_DECAYS):
      np.testing.assert_allclose(m[i], (1 - beta) * g, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("what", ["grads", "params"])
def test_features_invariant_to_positive_scaling(what):
  params = _params()
  # Scales well above the 1e-5 epsilon, the only source of non-invariance.
  grads = _grads(1, params, scale=100.0)
  state = opt.learned_optimizer(
    opt.init_theta(MLP_CFG, jax.random.key(0)), MLP_CFG
  ).init(params)
  # Momenta as after a long run: right after a first step the slow momenta
  # (1e-4 * g) sit below the epsilon, which then dominates.
  state = state._replace(momenta=_grads(2, state.momenta, scale=100.0))
  compute = jax.jit(features.compute_features, static_argnums=0)
  base = compute(MLP_CFG, grads, state, params)
  for c in (2.0, 10.0):
    if what == "grads":
      # Scaling every gradient so far scales the momenta too.
      scaled = jax.tree.map(lambda x, c=c: c * x, (grads, state.momenta))
      feats = compute(
        MLP_CFG, scaled[0], state._replace(momenta=scaled[1]), params
      )
    else:
      scaled = jax.tree.map(lambda p, c=c: c * p, params)
      feats = compute(MLP_CFG, grads, state, scaled)
    np.testing.assert_allclose(feats, base, rtol=1e-5, atol=1e-5)


def test_untrained_update_is_small_and_zero_theta_is_identity():
  params = _params()
  grads = _grads(1, params)
  theta = opt.init_theta(MLP_CFG, jax.random.key(0))
  tx = opt.learned_optimizer(theta, MLP_CFG)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  biggest = max(float(jnp.max(jnp.abs(u))) for u in jax.tree.leaves(updates))
  assert 0 < biggest <= 1e-2
  zero = jax.tree.map(jnp.zeros_like, theta)
  tx0 = opt.learned_optimizer(zero, MLP_CFG)
  updates, _ = jax.jit(tx0.update)(grads, tx0.init(params), params)
  for u in jax.tree.leaves(updates):
    np.testing.assert_array_equal(u, 0.0)


def _reference_mlp(mlp_params, features):
  """A plain dense MLP with ReLU on the full (P, F) feature matrix."""
  layers = [mlp_params[f"layer_{i}"] for i in range(len(mlp_params))]
  x = features
  for i, layer in enumerate(layers):
    if i:
      x = jax.nn.relu(x)
    x = x @ layer["kernel"] + layer["bias"]
  return x


def test_update_matches_mlp_on_full_features():
  """The fast MLP (folded shared features, rank-one first layer) equals a
  plain dense MLP on all 19 features."""
  params = _params()
  grads = _grads(1, params)
  cfg = LOptConfig(out_init_scale=1.0, step_mult=0.1, exp_mult=0.5)
  theta = opt.init_theta(cfg, jax.random.key(3))
  tx = opt.learned_optimizer(theta, cfg)

  @jax.jit
  def both(state):
    _, state = tx.update(grads, state, params)  # Non-trivial momenta, count.
    feats = features.compute_features(cfg, grads, state, params)
    out = _reference_mlp(theta["mlp"], feats)
    expected = -0.1 * out[:, 0] * jnp.exp(0.5 * out[:, 1])
    updates, _ = tx.update(grads, state, params)
    got = jnp.concatenate([u.reshape(-1) for u in jax.tree.leaves(updates)])
    return got, expected

  got, expected = both(tx.init(params))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)


def test_bfloat16_activations_keep_the_update_within_their_rounding():
  """`activation_dtype='bfloat16'` stores the MLP's hidden activations in
  half the bytes: the update stays float32 and moves by bfloat16's rounding
  of them (8 bits of mantissa, relative 2^-8 per value), not more."""
  params = _params()
  grads = _grads(1, params)
  cfg = LOptConfig(out_init_scale=1.0, step_mult=0.1, exp_mult=0.5)
  theta = opt.init_theta(cfg, jax.random.key(3))

  def updates(cfg):
    tx = opt.learned_optimizer(theta, cfg)
    _, state = tx.update(grads, tx.init(params), params)
    got, _ = tx.update(grads, state, params)
    return jnp.concatenate([u.reshape(-1) for u in jax.tree.leaves(got)])

  full = updates(cfg)
  half = updates(dataclasses.replace(cfg, activation_dtype="bfloat16"))
  assert half.dtype == jnp.float32
  error = jnp.max(jnp.abs(half - full)) / jnp.max(jnp.abs(full))
  assert 0 < error < 2e-2, error  # rounded, but only by that


def test_nominal_at_init_is_adam_with_linear_decay():
  num_steps = 6
  params = _params()
  theta = opt.init_theta(NOM_CFG, jax.random.key(0))
  learned = opt.learned_optimizer(theta, NOM_CFG, num_steps)
  adam = optax.adam(optax.linear_schedule(0.03, 0.0, num_steps))
  baseline = opt.adam_baseline(0.03, num_steps, "linear")

  def run(tx):
    def step(carry, g):
      p, s = carry
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), u

    grads = _grads(
      5,
      jax.tree.map(lambda p: jnp.zeros((num_steps + 2, *jnp.shape(p))), params),
    )
    return jax.lax.scan(step, (params, tx.init(params)), grads)[1]

  got, want, base = jax.jit(lambda: (run(learned), run(adam), run(baseline)))()
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # lopt's Adam baseline with the linear schedule is exactly that Adam.
  jax.tree.map(np.testing.assert_array_equal, base, want)
  # Steps past the horizon are zero (the schedule has decayed to 0).
  np.testing.assert_array_equal(got["w"][num_steps:], 0.0)


def _hypergradient_adam(
  lr0, beta, lo, hi, num_steps, metric="euclidean", decay=0.0
):
  """Reference: optax Adam whose rate each tensor adapts by hypergradient.

  Written from the formula, independently of lopt.learned.optimizers: per tensor,
  s <- clip(s + beta * cos(g_t, trace_{t-1}), lo, hi), and the step is
  lr0 * exp(s) * (1 - t / T) times the bias-corrected Adam direction, with
  trace_t = decay * trace_{t-1} + step_t (the last step when decay is 0).
  With metric 'adam' the cosine takes g_t / (sqrt(v_hat_t) + eps) instead
  of g_t, v_hat_t being optax Adam's bias-corrected second moment after
  this step.
  """
  adam = optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)

  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return (adam.init(params), jax.tree.map(lambda _: 0.0, params), zeros, 0)

  def update(grads, state, params=None):
    adam_state, scales, last, t = state
    direction, adam_state = adam.update(grads, adam_state)
    votes = grads
    if metric == "adam":
      correction = 1.0 - 0.999**adam_state.count
      votes = jax.tree.map(
        lambda g, v: g / (jnp.sqrt(v / correction) + 1e-8),
        grads,
        adam_state.nu,
      )

    def cos(g, s):
      n = jnp.linalg.norm(g) * jnp.linalg.norm(s)
      return jnp.where(n > 0, jnp.vdot(g, s) / jnp.where(n > 0, n, 1.0), 0.0)

    scales = jax.tree.map(
      lambda s, g, u: jnp.clip(s + beta * cos(g, u), lo, hi),
      scales,
      votes,
      last,
    )
    schedule = 1.0 - jnp.minimum(t, num_steps) / num_steps
    step = jax.tree.map(
      lambda a, s: lr0 * schedule * jnp.exp(s) * a, direction, scales
    )
    updates = jax.tree.map(jnp.negative, step)
    trace = jax.tree.map(lambda a, b: decay * a + b, last, step)
    return updates, (adam_state, scales, trace, t + 1)

  return optax.GradientTransformation(init, update)


@pytest.mark.parametrize("decay", [0.0, 0.5])
@pytest.mark.parametrize("metric", HYPERGRADIENT_METRICS)
def test_adaptive_at_init_is_adam_with_hypergradient_rates(metric, decay):
  """Untrained, the adaptive kind is exactly the reference above.

  The gradients follow a fixed direction for most tensors (so their scale
  must climb to the clip bound), and alternate sign for "w" (so its scale
  must fall): both bounds and the free range are exercised. The gradients
  differ in scale across each tensor's elements, so the two metrics'
  cosines differ.
  """
  num_steps = 40
  cfg = LOptConfig(
    kind="adaptive",
    adaptive_lr=0.02,
    hyper_lr=0.3,
    lr_adapt_max=1.0,
    hypergradient_metric=metric,
    hypergradient_decay=decay,
  )
  params = _params()
  theta = opt.init_theta(cfg, jax.random.key(0))
  np.testing.assert_allclose(np.exp(theta["log_lr"]), 0.02, rtol=1e-6)
  np.testing.assert_allclose(np.exp(theta["log_hyper_lr"]), 0.3, rtol=1e-6)
  learned = opt.learned_optimizer(theta, cfg, num_steps)
  reference = _hypergradient_adam(
    0.02, 0.3, -3.0, 1.0, num_steps, metric, decay
  )
  base = _grads(7, params)
  signs = jnp.where(jnp.arange(num_steps + 5) % 2 == 0, 1.0, -1.0)
  grads = jax.tree.map(
    lambda g: jnp.ones((num_steps + 5, *jnp.shape(g))) * g, base
  )
  grads["w"] = grads["w"] * signs[:, None, None]

  def run(tx):
    def step(carry, g):
      p, s = carry
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), u

    return jax.lax.scan(step, (params, tx.init(params)), grads)

  (_, state), got = jax.jit(lambda: run(learned))()
  _, want = jax.jit(lambda: run(reference))()
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-8)
  assert float(state.log_lr_scale["inner"]["v"]) == 1.0  # climbed to the top
  assert float(state.log_lr_scale["w"]) < -2.0  # fell for the oscillation
  np.testing.assert_array_equal(got["w"][num_steps:], 0.0)  # past T


def test_adaptive_scales_move_at_most_beta_per_step_on_tiny_gradients():
  """Near a minimum the gradient's squares underflow float32 while the last
  step (carried by Adam's momentum) is still large; the cosine must stay in
  [-1, 1], so each tensor's scale moves at most beta per step."""
  cfg = LOptConfig(kind="adaptive", hyper_lr=0.3)
  params = _params()
  tx = opt.learned_optimizer(opt.init_theta(cfg, jax.random.key(0)), cfg, 50)
  update = jax.jit(tx.update)
  _, state = update(_grads(4, params), tx.init(params), params)
  tiny = jax.tree.map(lambda g: 1e-21 * g, _grads(5, params))
  for _ in range(3):
    before = [float(s) for s in jax.tree.leaves(state.log_lr_scale)]
    _, state = update(tiny, state, params)
    after = [float(s) for s in jax.tree.leaves(state.log_lr_scale)]
    for a, b in zip(before, after):
      assert abs(b - a) <= 0.3 + 1e-6


def test_adam_metric_lets_flat_directions_raise_the_rate():
  """One sharp coordinate (curvature 1000, started near its minimum, so it
  oscillates at any useful rate) beside 15 flat ones (curvature 0.01, far
  from theirs). In the plain cosine the sharp coordinate's large gradient
  outvotes the rest and the tensor's rate stays where it started; in Adam's
  metric every coordinate votes as much as it moves, the flat majority
  raises the rate to its bound, and the flat directions' loss after 40
  steps is over 5x lower.
  """
  curvature = jnp.asarray([1000.0] + [0.01] * 15)
  start = {"w": jnp.asarray([0.05] + [1.0] * 15)}

  def flat_loss_and_scales(metric):
    cfg = LOptConfig(kind="adaptive", hypergradient_metric=metric)
    tx = opt.learned_optimizer(opt.init_theta(cfg, jax.random.key(0)), cfg, 200)
    grad = jax.grad(lambda p: 0.5 * jnp.sum(curvature * p["w"] ** 2))

    def step(carry, _):
      p, state = carry
      u, state = tx.update(grad(p), state, p)
      return (optax.apply_updates(p, u), state), state.log_lr_scale["w"]

    (p, _), scales = jax.lax.scan(step, (start, tx.init(start)), None, 40)
    return 0.5 * jnp.sum(curvature[1:] * p["w"][1:] ** 2), scales

  (plain_loss, plain), (adam_loss, adam) = jax.jit(
    lambda: [flat_loss_and_scales(m) for m in ("euclidean", "adam")]
  )()
  assert float(jnp.max(jnp.abs(plain))) < 0.5
  assert float(jnp.max(adam)) == ADA_CFG.lr_adapt_max
  assert float(adam_loss) < float(plain_loss) / 5


def test_adaptive_state_round_trips_through_scan_and_counts():
  params = _params()
  theta = opt.init_theta(ADA_CFG, jax.random.key(1))
  tx = opt.learned_optimizer(theta, ADA_CFG, 10)
  state = tx.init(params)
  assert isinstance(state, features.AdaptiveLOptState)
  assert jax.tree.structure(state) == jax.tree.structure(
    features.init_state(ADA_CFG, params)
  )
  assert all(np.shape(s) == () for s in jax.tree.leaves(state.log_lr_scale))
  updates, new = jax.jit(tx.update)(_grads(3, params), state, params)
  # The new state's last step is the step just taken (params moved by -it).
  for u, last in zip(jax.tree.leaves(updates), jax.tree.leaves(new.last_step)):
    np.testing.assert_array_equal(-u, last)
  assert features.num_features(ADA_CFG) == features.num_features(NOM_CFG) == 22


def _random_output_layer(theta, seed):
  """theta with its zero-initialised output layer replaced by random values."""
  rng = np.random.default_rng(seed)
  mlp = dict(theta["mlp"])
  last = f"layer_{len(mlp) - 1}"
  mlp[last] = jax.tree.map(
    lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), mlp[last]
  )
  return {**theta, "mlp": mlp}


def _mirror(state):
  """The optimizer state of the mirrored model (p -> -p): odd parts negated."""
  neg = lambda tree: jax.tree.map(jnp.negative, tree)  # noqa: E731
  replace = dict(momenta=neg(state.momenta))
  if isinstance(state, features.AdaptiveLOptState):
    replace["last_step"] = neg(state.last_step)
  return state._replace(**replace)


@pytest.mark.parametrize("cfg", [ADA_CFG, NOM_CFG], ids=["adaptive", "nominal"])
def test_adaptive_update_is_odd_under_the_mirror(cfg):
  """Mirroring the model (p, g, momenta, last step -> their negatives)
  mirrors the adaptive kind's update exactly, for any theta: its learned
  corrections have no constant push. The nominal kind has no such
  guarantee: with zero gradient, momenta and params its MLP's biases still
  move every parameter, which its case asserts.
  """
  params = _params()
  theta = _random_output_layer(opt.init_theta(cfg, jax.random.key(0)), 1)
  tx = opt.learned_optimizer(theta, cfg, 30)
  update = jax.jit(tx.update)  # one compile instead of six eager steps
  state = tx.init(params)
  for seed in range(3):  # non-trivial momenta, v, scales and last step
    _, state = update(_grads(seed, params), state, params)
  grads = _grads(9, params)
  neg = lambda tree: jax.tree.map(jnp.negative, tree)  # noqa: E731
  updates, _ = update(grads, state, params)
  mirrored, _ = update(neg(grads), _mirror(state), neg(params))
  zero_updates, _ = update(
    jax.tree.map(jnp.zeros_like, grads),
    features.init_state(cfg, params),
    jax.tree.map(jnp.zeros_like, params),
  )
  if cfg.kind == "nominal":
    assert max(np.abs(u).max() for u in jax.tree.leaves(zero_updates)) > 0
    return
  for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(mirrored)):
    np.testing.assert_allclose(b, -a, rtol=1e-5, atol=1e-9)
  # With nothing to go on (zero gradient, momenta and params) it stays put.
  for u in jax.tree.leaves(zero_updates):
    np.testing.assert_array_equal(u, 0.0)


def test_jit_vmap_over_thetas_and_param_kinds():
  params = _params()
  grads = _grads(1, params)
  for cfg in (MLP_CFG, NOM_CFG, ADA_CFG):
    thetas = jax.tree.map(
      lambda *xs: jnp.stack(xs),
      *[opt.init_theta(cfg, jax.random.key(i)) for i in range(3)],
    )

    def one(theta, cfg=cfg):
      tx = opt.learned_optimizer(theta, cfg, 50)
      return tx.update(grads, tx.init(params), params)

    updates, state = jax.jit(jax.vmap(one))(thetas)
    assert updates["w"].shape == (3, 5, 3) and updates["scale"].shape == (3,)
    assert state.count.shape == (3,)
    single = jax.jit(one)(jax.tree.map(lambda x: x[1], thetas))[0]
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(single)):
      np.testing.assert_allclose(a[1], b, rtol=1e-5, atol=1e-9)


def test_linen_params_and_chain():
  model = nn.Dense(3)
  x = jnp.ones((4, 2))
  params = model.init(jax.random.key(0), x)["params"]
  theta = opt.init_theta(MLP_CFG, jax.random.key(1))
  tx = optax.chain(
    optax.clip_by_global_norm(1.0), opt.learned_optimizer(theta, MLP_CFG)
  )
  grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x)))(params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)


def test_nnx_optimizer_trains_with_nominal_kind():
  model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
  theta = opt.init_theta(NOM_CFG, jax.random.key(0))
  optimizer = nnx.Optimizer(
    model, opt.learned_optimizer(theta, NOM_CFG, 50), wrt=nnx.Param
  )
  x = jnp.asarray(np.random.default_rng(1).normal(size=(32, 3)), jnp.float32)
  y = x @ jnp.array([[1.0], [-2.0], [0.5]]) + 0.3

  def loss_fn(model):
    return jnp.mean((model(x) - y) ** 2)

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  first = float(loss_fn(model))
  for _ in range(40):
    train_step(model, optimizer)
  assert float(loss_fn(model)) < 0.5 * first


def test_update_without_params_raises():
  params = _params()
  tx = opt.learned_optimizer(
    opt.init_theta(MLP_CFG, jax.random.key(0)), MLP_CFG
  )
  with pytest.raises(ValueError, match="params"):
    tx.update(params, tx.init(params))


@pytest.mark.parametrize(
  "kwargs, field",
  [
    (dict(kind="lstm"), "kind"),
    (dict(hidden=(32, 0)), "hidden"),
    (dict(hidden=()), "hidden"),
    (dict(step_mult=-1.0), "step_mult"),
    (dict(exp_mult=float("nan")), "exp_mult"),
    (dict(nominal_lr=0.0), "nominal_lr"),
    (dict(hyper_lr=0.0), "hyper_lr"),
    (dict(lr_adapt_min=0.5), "lr_adapt_min"),
    (dict(lr_adapt_max=-1.0), "lr_adapt_max"),
    (dict(hypergradient_metric="l1"), "hypergradient_metric"),
    (dict(hypergradient_decay=1.0), "hypergradient_decay"),
    (dict(hypergradient_decay=-0.1), "hypergradient_decay"),
    (dict(hypergradient_decay="0.9"), "hypergradient_decay"),
    (dict(activation_dtype="float16"), "activation_dtype"),
  ],
)
def test_bad_config_field_raises_naming_it(kwargs, field):
  with pytest.raises(ValueError, match=field):
    LOptConfig(**kwargs)


def test_config_roundtrip_and_hashable():
  cfg = LOptConfig(kind="nominal", hidden=[16, 8], nominal_lr=0.01)
  assert cfg.hidden == (16, 8)
  d = json.loads(json.dumps(cfg.to_dict()))
  assert LOptConfig.from_dict(d) == cfg
  assert hash(LOptConfig.from_dict(d)) == hash(cfg)
  with pytest.raises(ValueError, match="bogus"):
    LOptConfig.from_dict({**d, "bogus": 1})
  with pytest.raises(ValueError, match="kind"):
    LOptConfig.from_dict({**d, "kind": "rnn"})
  # A checkpoint saved before hypergradient_metric existed keeps the rule
  # it was meta-trained with.
  old = LOptConfig(kind="adaptive", hypergradient_metric="adam").to_dict()
  del old["hypergradient_metric"]
  assert LOptConfig.from_dict(old).hypergradient_metric == "euclidean"


def test_theta_of_other_architecture_and_missing_num_steps_raise():
  theta = opt.init_theta(MLP_CFG, jax.random.key(0))
  with pytest.raises(ValueError, match="shape"):
    opt.learned_optimizer(theta, LOptConfig(hidden=(16, 16)))
  with pytest.raises(ValueError, match="structure"):
    opt.learned_optimizer(theta, NOM_CFG, 10)
  nominal = opt.init_theta(NOM_CFG, jax.random.key(0))
  with pytest.raises(ValueError, match="num_steps"):
    opt.learned_optimizer(nominal, NOM_CFG)


def test_adam_baseline_schedules():
  params = {"w": jnp.ones((2,))}
  grads = {"w": jnp.ones((2,))}
  for tx in (opt.adam_baseline(0.1), opt.adam_baseline(0.1, 10, "linear")):
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.1, rtol=1e-4)
  with pytest.raises(ValueError, match="constant"):
    opt.adam_baseline(0.1, 10, "cosine")
  with pytest.raises(ValueError, match="num_steps"):
    opt.adam_baseline(0.1, None, "linear")
