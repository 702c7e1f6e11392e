"""The inner models' networks, as Flax linen modules.

Each is small enough to train thousands of times inside one meta-training
run, and covers one kind of model a learned optimizer meets in practice:

* `MLP`: flattened inputs -> hidden layers -> outputs (classifiers on
  images, regressors on tabular features);
* `CNN`: blocks of [Conv 3x3 SAME, activation, AvgPool 2x2], then a dense
  layer (the NRES paper's CIFAR-10 model);
* `ResNet`: residual blocks of pre-normalised 3x3 convolutions (LayerNorm
  or GroupNorm), the shape of modern vision backbones;
* `autoencoder`: an MLP through a bottleneck back to its input;
* `Transformer`: a causal language model of pre-LayerNorm blocks, token
  embeddings and learned positions.

Every kernel is a 2-D (or conv) array whose last axis is its output, so the
inner tasks' initialisation (`lopt.tasks.models.Task.init`) reads each
kernel's fan-in from its shape; attention is written with dense layers for
the same reason (Flax's attention keeps 3-D head kernels).

Every convolution goes through `conv`, whose backward pass XLA:CPU runs at
full speed inside `lax.scan` (why: its docstring).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

ACTIVATION_FNS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "gelu": functools.partial(jax.nn.gelu, approximate=True),
  "relu": jax.nn.relu,
  "tanh": jnp.tanh,
  "silu": jax.nn.silu,
  "elu": jax.nn.elu,
}
#: Normalisation layers of `ResNet`.
NORMS = ("layer", "group")


_NHWC = ("NHWC", "HWIO", "NHWC")


def _same_padding(kernel: Sequence[int]) -> tuple[tuple[int, int], ...]:
  """'SAME' padding of an odd kernel, per spatial axis."""
  return tuple((k // 2, k // 2) for k in kernel)


def _conv_same(x: jax.Array, w: jax.Array) -> jax.Array:
  pad = _same_padding(w.shape[:2])
  return lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=_NHWC)


@jax.custom_vjp
def _conv_same_vjp(x: jax.Array, w: jax.Array) -> jax.Array:
  return _conv_same(x, w)


def _conv_same_fwd(x, w):
  return _conv_same(x, w), (x, w)


def _conv_same_bwd(residuals, g):
  x, w = residuals
  # The input's gradient: the output's, convolved with the kernel flipped
  # in space and transposed in channels.
  dx = _conv_same(g, jnp.flip(w, (0, 1)).swapaxes(2, 3))
  # The kernel's: channels as the batch and the batch as the channels,
  # dw[i, j, c, o] = sum_{b, h, w} x[b, h + i, w + j, c] g[b, h, w, o].
  dw = lax.conv_general_dilated(
    x.transpose(3, 1, 2, 0),
    g.transpose(1, 2, 0, 3),
    (1, 1),
    _same_padding(w.shape[:2]),
    dimension_numbers=_NHWC,
  )
  return dx, dw.transpose(1, 2, 0, 3)


_conv_same_vjp.defvjp(_conv_same_fwd, _conv_same_bwd)


def conv(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  precision=None,
):
  """`lax.conv_general_dilated` for `nn.Conv(conv_general_dilated=conv)`.

  The same function, with the gradient written out for the convolutions
  lopt's networks use (stride 1, 'SAME', odd kernels, NHWC): as
  convolutions in the layouts XLA:CPU's fast convolution kernels take, with
  explicit transposes. JAX's own rule computes the kernel's gradient as a
  convolution in a permuted layout; in a jitted step XLA rewrites it to the
  fast form, but not inside a `lax.scan` (a while loop), where it falls back
  to a naive loop nest: measured on a 2-conv CNN's Adam step, 6.1 ms a step
  in a scan against 0.74 ms jitted alone, and 0.63 ms in a scan with this
  gradient (identical values). Other convolutions go to lax unchanged.
  """
  kernel = rhs.shape[:-2]
  plain = (
    lhs.ndim == 4
    and tuple(window_strides) == (1, 1)
    and all(k % 2 for k in kernel)
    and padding in ("SAME", _same_padding(kernel))
    and all(d in (None, (1, 1)) for d in (lhs_dilation, rhs_dilation))
    and feature_group_count == 1
    and precision is None
    and dimension_numbers
    == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  )
  if plain:
    return _conv_same_vjp(lhs, rhs)
  return lax.conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    precision=precision,
  )


def _conv_layer(width: int, kernel: tuple[int, int]) -> nn.Conv:
  return nn.Conv(width, kernel, padding="SAME", conv_general_dilated=conv)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATION_FNS:
    raise ValueError(
      f"Unknown activation {name!r}; valid choices: {sorted(ACTIVATION_FNS)}."
    )
  return ACTIVATION_FNS[name]


class MLP(nn.Module):
  """Multi-layer perceptron on flattened inputs.

  Attributes:
    hidden: widths of the hidden layers.
    num_outputs: width of the output layer (logits, or regression targets).
    activation: a name of `ACTIVATION_FNS` ('gelu' is the tanh approximation).
  """

  hidden: Sequence[int]
  num_outputs: int
  activation: str = "gelu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = activation(self.activation)
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = act(nn.Dense(width)(x))
    return nn.Dense(self.num_outputs)(x)


def _with_channels(x: jax.Array) -> jax.Array:
  # (batch, height, width) grayscale: add a channel axis.
  return x[..., None] if x.ndim == 3 else x


class CNN(nn.Module):
  """Small convolutional network (the NRES paper's CIFAR-10 model).

  Each block is Conv 3x3 'SAME' -> activation -> average pool 2x2, stride 2;
  the pooled features are flattened into one dense layer.

  Attributes:
    channels: output channels of each conv block.
    num_outputs: number of output logits.
    activation: a name of `ACTIVATION_FNS`; 'relu' is the paper's.
  """

  channels: Sequence[int]
  num_outputs: int
  activation: str = "relu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = activation(self.activation)
    x = _with_channels(x)
    for width in self.channels:
      x = act(_conv_layer(width, (3, 3))(x))
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_outputs)(x)


def _norm(kind: str, channels: int) -> nn.Module:
  if kind == "layer":
    return nn.LayerNorm()
  if kind == "group":
    # Groups of at most 4 channels' worth: 2 groups for 8 channels, 4 for 16+.
    return nn.GroupNorm(num_groups=max(1, min(4, channels // 4)))
  raise ValueError(f"Unknown norm {kind!r}; valid choices: {list(NORMS)}.")


class ResNet(nn.Module):
  """A residual CNN with a normalisation layer in every block.

  A 3x3 stem convolution to `channels[0]`, then one stage per entry of
  `channels`: a 1x1 projection where the width changes, one residual block
  x + conv(act(norm(conv(act(norm(x)))))), and a 2x2 average pool between
  stages; finally norm, activation, global average pooling and a dense head.

  Attributes:
    channels: the width of each stage.
    num_outputs: number of output logits.
    norm: 'layer' (LayerNorm over channels) or 'group' (GroupNorm).
    activation: a name of `ACTIVATION_FNS`.
  """

  channels: Sequence[int]
  num_outputs: int
  norm: str = "layer"
  activation: str = "relu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = activation(self.activation)
    x = _conv_layer(self.channels[0], (3, 3))(_with_channels(x))
    for i, width in enumerate(self.channels):
      if i:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
      if x.shape[-1] != width:
        x = _conv_layer(width, (1, 1))(x)
      y = _conv_layer(width, (3, 3))(act(_norm(self.norm, width)(x)))
      y = _conv_layer(width, (3, 3))(act(_norm(self.norm, width)(y)))
      x = x + y
    x = act(_norm(self.norm, x.shape[-1])(x)).mean(axis=(1, 2))
    return nn.Dense(self.num_outputs)(x)


def autoencoder(
  hidden: Sequence[int], num_outputs: int, activation: str
) -> MLP:
  """An MLP autoencoder: input -> `hidden` (the last is the code) -> input.

  The decoder mirrors the encoder's widths, so the network is the MLP of
  widths hidden + reversed(hidden[:-1]) with one output per input value (a
  reconstruction, or its logits for a Bernoulli loss).
  """
  hidden = tuple(hidden)
  return MLP((*hidden, *reversed(hidden[:-1])), num_outputs, activation)


class _Block(nn.Module):
  """One pre-LayerNorm transformer block: causal self-attention, then MLP."""

  width: int
  heads: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, length, _ = x.shape
    head_dim = self.width // self.heads
    qkv = nn.Dense(3 * self.width, name="qkv")(nn.LayerNorm()(x))
    q, k, v = jnp.split(
      qkv.reshape(batch, length, 3 * self.heads, head_dim), 3, 2
    )
    mask = jnp.tril(jnp.ones((length, length), bool))
    attended = jax.nn.dot_product_attention(q, k, v, mask=mask[None, None])
    x = x + nn.Dense(self.width, name="out")(attended.reshape(x.shape))
    h = nn.Dense(4 * self.width, name="up")(nn.LayerNorm()(x))
    return x + nn.Dense(self.width, name="down")(jax.nn.gelu(h))


class Transformer(nn.Module):
  """A causal transformer language model (GPT-2's block layout, small).

  Token embedding plus a learned position embedding, `depth` pre-LayerNorm
  blocks, a final LayerNorm and an untied output layer of `vocab_size`
  logits per position.

  Attributes:
    width: the model width (a multiple of `heads`).
    depth: the number of blocks.
    heads: attention heads per block.
    seq_len: the longest sequence (the position table's size).
    vocab_size: tokens (256 for bytes).
  """

  width: int
  depth: int
  heads: int
  seq_len: int
  vocab_size: int = 256

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = nn.Embed(self.vocab_size, self.width, name="embed")(tokens)
    positions = self.param(
      "positions", nn.initializers.zeros, (self.seq_len, self.width)
    )
    x = x + positions[: tokens.shape[-1]]
    for i in range(self.depth):
      x = _Block(self.width, self.heads, name=f"block_{i}")(x)
    return nn.Dense(self.vocab_size, name="head")(nn.LayerNorm()(x))
