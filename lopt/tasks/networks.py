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
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATION_FNS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "gelu": functools.partial(jax.nn.gelu, approximate=True),
  "relu": jax.nn.relu,
  "tanh": jnp.tanh,
  "silu": jax.nn.silu,
  "elu": jax.nn.elu,
}
#: Normalisation layers of `ResNet`.
NORMS = ("layer", "group")


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
      x = act(nn.Conv(width, (3, 3), padding="SAME")(x))
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
    x = nn.Conv(self.channels[0], (3, 3), padding="SAME")(_with_channels(x))
    for i, width in enumerate(self.channels):
      if i:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
      if x.shape[-1] != width:
        x = nn.Conv(width, (1, 1))(x)
      y = nn.Conv(width, (3, 3), padding="SAME")(
        act(_norm(self.norm, width)(x))
      )
      y = nn.Conv(width, (3, 3), padding="SAME")(
        act(_norm(self.norm, width)(y))
      )
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
