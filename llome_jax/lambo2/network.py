"""LaMBO-2's model (SPEC 7): a 1-D CNN encoder over tokens with three heads on its features, a masked-token
denoiser, a feasibility-classifier ensemble and a value-regression ensemble, in Flax NNX.

The layout is cortex's (`Conv1dRoot`, `Conv1dResidBlock`, branches and leaves, as configured by bbo-bench
for Ehrlich functions), with one change that does not alter what the model computes on a sequence:
sequences are not padded to 256 positions (every Ehrlich sequence has length L; padding only costs time).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
  """Static architecture.

  Attributes:
    num_states: the alphabet size v; token v is the mask token, so the vocabulary is v + 1.
    length: L, the sequence length (positions of the sinusoidal encoding).
    embed_dim: D, the width of the token embedding and of the encoder's output features (the features
      that guidance perturbs).
    channels: the hidden width inside the encoder (its first block maps D -> channels, the second back).
    kernel_size: of every convolution.
    ensemble_size: members of the value ensemble and of the feasibility ensemble.
    branch_channels: width of each member's own residual block before pooling.
  """

  num_states: int
  length: int
  embed_dim: int = 32
  channels: int = 128
  kernel_size: int = 5
  ensemble_size: int = 8
  branch_channels: int = 8

  def __post_init__(self):
    for name in ('num_states', 'length', 'embed_dim', 'channels', 'kernel_size', 'ensemble_size'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be positive, got {getattr(self, name)}.')
    if self.embed_dim % 2:
      raise ValueError(f'embed_dim must be even (sinusoidal positions), got {self.embed_dim}.')

  @property
  def mask_token(self) -> int:
    return self.num_states

  @property
  def vocab_size(self) -> int:
    return self.num_states + 1


class Conv(nnx.Module):
  """A 1-D convolution over positions ('SAME' zero padding, no bias) written as one matmul of each
  position's K-neighbour window: XLA:CPU runs `lax.conv` inside a loop (the epochs' and guided steps'
  `lax.scan`) about 50x slower than outside one (a batch's gradient: 0.7 s against 0.01 s), and a
  matmul at the same speed in both."""

  def __init__(self, din: int, dout: int, kernel_size: int, *, rngs: nnx.Rngs):
    self.kernel_size = kernel_size
    init = nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
    self.kernel = nnx.Param(init(rngs.params(), (kernel_size, din, dout)))

  def __call__(self, x_BxLxD: Array) -> Array:
    k, length = self.kernel_size, x_BxLxD.shape[1]
    padded = jnp.pad(x_BxLxD, ((0, 0), (k // 2, k - 1 - k // 2), (0, 0)))
    window_BxLxKD = jnp.concatenate([padded[:, i : i + length] for i in range(k)], axis=-1)
    kernel = self.kernel[...]
    return window_BxLxKD @ kernel.reshape(-1, kernel.shape[-1])


class ResidualBlock(nnx.Module):
  """x + conv(swish(norm(conv(swish(norm(x)))))), pre-norm; a 1x1 projection of x when widths differ.

  The norm is a LayerNorm over channels at each position (cortex's MaskLayerNorm1d); the projection
  is a 1x1 convolution with bias, i.e. a dense layer at each position.
  """

  def __init__(self, din: int, dout: int, kernel_size: int, *, rngs: nnx.Rngs):
    self.norm_in = nnx.LayerNorm(din, rngs=rngs)
    self.conv_in = Conv(din, dout, kernel_size, rngs=rngs)
    self.norm_out = nnx.LayerNorm(dout, rngs=rngs)
    self.conv_out = Conv(dout, dout, kernel_size, rngs=rngs)
    self.project = nnx.Linear(din, dout, rngs=rngs) if din != dout else None

  def __call__(self, x_BxLxD: Array) -> Array:
    h = self.conv_in(nnx.swish(self.norm_in(x_BxLxD)))
    h = self.conv_out(nnx.swish(self.norm_out(h)))
    return h + (x_BxLxD if self.project is None else self.project(x_BxLxD))


class Member(nnx.Module):
  """One ensemble member: its own residual block, a mean over positions, and a linear map to 2 outputs
  (a Gaussian's natural parameters for a value member, two class logits for a feasibility member)."""

  def __init__(self, cfg: NetworkConfig, *, rngs: nnx.Rngs):
    self.block = ResidualBlock(cfg.embed_dim, cfg.branch_channels, cfg.kernel_size, rngs=rngs)
    self.out = nnx.Linear(cfg.branch_channels, 2, rngs=rngs)

  def __call__(self, features_BxLxD: Array) -> Array:
    return self.out(jnp.mean(self.block(features_BxLxD), axis=1))


class Ensemble(nnx.Module):
  """M members on the same features; outputs stacked on axis 1.

  A Python loop over separate modules, not `nnx.vmap` over stacked ones: vmapped, the members'
  convolutions become one grouped convolution, which XLA:CPU runs 3x slower than M plain ones
  (2,000 f2 sequences: 0.5 s against 0.16 s).
  """

  def __init__(self, cfg: NetworkConfig, *, rngs: nnx.Rngs):
    self.members = nnx.List([Member(cfg, rngs=rngs) for _ in range(cfg.ensemble_size)])

  def __call__(self, features_BxLxD: Array) -> Float[Array, 'B M 2']:
    return jnp.stack([member(features_BxLxD) for member in self.members], axis=1)


def sinusoidal_positions(length: int, dim: int) -> Float[Array, 'L D']:
  """sin on even channels, cos on odd ones, wavelengths 2 pi .. 10000 * 2 pi (Vaswani et al. 2017)."""
  position_Lx1 = jnp.arange(length, dtype=jnp.float32)[:, None]
  inv_freq = 1.0 / 10000.0 ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  angles = position_Lx1 * inv_freq
  return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(length, dim)


class Network(nnx.Module):
  """Tokens -> features -> (denoiser logits, feasibility logits, value natural parameters)."""

  def __init__(self, cfg: NetworkConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = nnx.Embed(cfg.vocab_size, cfg.embed_dim, rngs=rngs)
    self.blocks = nnx.List(
      [
        ResidualBlock(cfg.embed_dim, cfg.channels, cfg.kernel_size, rngs=rngs),
        ResidualBlock(cfg.channels, cfg.embed_dim, cfg.kernel_size, rngs=rngs),
      ]
    )
    self.values = Ensemble(cfg, rngs=rngs)
    self.feasibility = Ensemble(cfg, rngs=rngs)
    self.denoise_norm = nnx.LayerNorm(cfg.embed_dim, use_bias=False, rngs=rngs)
    self.denoise_out = nnx.Linear(cfg.embed_dim, cfg.vocab_size, rngs=rngs)

  def embed_tokens(self, tokens_BxL: Int[Array, 'B L']) -> Float[Array, 'B L D']:
    """Unit-norm embeddings scaled by sqrt(D) (cortex's root): the scale of a token does not depend on
    how often training moved it."""
    e = self.embed(tokens_BxL)
    e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    return e * math.sqrt(self.cfg.embed_dim)

  def encode(self, embedded_BxLxD: Array) -> Float[Array, 'B L D']:
    x = embedded_BxLxD + sinusoidal_positions(self.cfg.length, self.cfg.embed_dim)
    for block in self.blocks:
      x = block(x)
    return x

  def heads(self, features_BxLxD: Array) -> dict[str, Array]:
    return {
      'denoiser_BxLxV': self.denoise_out(self.denoise_norm(features_BxLxD)),
      'feasibility_BxMx2': self.feasibility(features_BxLxD),
      'value_BxMx2': self.values(features_BxLxD),
    }

  def __call__(self, tokens_BxL: Int[Array, 'B L']) -> dict[str, Array]:
    return self.heads(self.encode(self.embed_tokens(tokens_BxL)))


Params = dict  # nested dict of arrays, as `nnx.to_pure_dict` gives


def init(cfg: NetworkConfig, key) -> tuple[nnx.GraphDef, Params]:
  """A freshly initialised network split into (graphdef, params as a nested dict)."""
  graphdef, state = nnx.split(Network(cfg, rngs=nnx.Rngs(params=key)))
  return graphdef, nnx.to_pure_dict(state)


def merge(graphdef: nnx.GraphDef, params: Params) -> Network:
  """The module view of `params`, for calling its methods inside a pure function."""
  return nnx.merge(graphdef, params)


def gaussian(value_BxMx2: Array) -> tuple[Float[Array, 'B M'], Float[Array, 'B M']]:
  """(mean, variance) of each member's Gaussian from its two outputs, as natural parameters:
  eta2 = -softplus_beta(out1) with beta = 1/2, variance = -1 / (2 eta2) (at least 1e-4), and
  mean = out0 * variance (cortex's RegressorLeaf). Variance is bounded below, never zero."""
  eta2 = -2.0 * jax.nn.softplus(0.5 * value_BxMx2[..., 1])
  variance = jnp.maximum(-0.5 / jnp.minimum(eta2, -1e-12), 1e-4)
  return value_BxMx2[..., 0] * variance, variance
