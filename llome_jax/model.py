"""The policy: a decoder-only GPT-NeoX / Pythia transformer in Flax NNX, holding parameters only.

Rotary embeddings on a fraction of each head, attention and MLP in parallel on the residual stream,
LayerNorm, untied input and output embeddings: Pythia's layout, so its checkpoints can be imported.
"""

import dataclasses
import math

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static architecture. `dtype` is the compute dtype; parameters are always float32."""

  vocab_size: int
  num_layers: int
  num_heads: int
  width: int
  ff_width: int
  max_len: int
  rotary_fraction: float = 0.25
  rotary_base: float = 10000.0
  layer_norm_eps: float = 1e-5
  init_std: float = 0.02
  dtype: str = 'float32'

  def __post_init__(self):
    for name in ('vocab_size', 'num_layers', 'num_heads', 'width', 'ff_width', 'max_len'):
      if getattr(self, name) < 1:
        raise ValueError(f'ModelConfig.{name} must be positive, got {getattr(self, name)}.')
    if self.width % self.num_heads:
      raise ValueError(f'width={self.width} must be divisible by num_heads={self.num_heads}.')
    if self.rotary_dims % 2 or not 0.0 <= self.rotary_fraction <= 1.0:
      raise ValueError(
        f'rotary_fraction={self.rotary_fraction} must lie in [0, 1] and give an even number of '
        f'rotary dims per head (head width {self.head_width} gives {self.rotary_dims}).'
      )
    if self.dtype not in ('float32', 'bfloat16', 'float16'):
      raise ValueError(f"dtype must be 'float32', 'bfloat16' or 'float16', got {self.dtype!r}.")

  @property
  def head_width(self) -> int:
    return self.width // self.num_heads

  @property
  def rotary_dims(self) -> int:
    return int(self.head_width * self.rotary_fraction)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


# Pythia shapes (EleutherAI/pythia-*): width, layers, heads, feed-forward width. Vocabulary 50,304.
_PYTHIA = {
  'pythia-14m': (128, 6, 4, 512),
  'pythia-31m': (256, 6, 8, 1024),
  'pythia-70m': (512, 6, 8, 2048),
  'pythia-160m': (768, 12, 12, 3072),
  'pythia-410m': (1024, 24, 16, 4096),
  'pythia-1b': (2048, 16, 8, 8192),
  'pythia-1.4b': (2048, 24, 16, 8192),
  'pythia-2.8b': (2560, 32, 32, 10240),
}
PRESETS = {
  'tiny': dict(width=32, num_layers=2, num_heads=2, ff_width=128, max_len=128),
  'small': dict(width=256, num_layers=4, num_heads=4, ff_width=1024, max_len=256),
  **{
    name: dict(width=d, num_layers=n, num_heads=h, ff_width=f, max_len=2048, vocab_size=50304)
    for name, (d, n, h, f) in _PYTHIA.items()
  },
}


def preset(name: str, **overrides) -> ModelConfig:
  """A named architecture; `overrides` (typically `vocab_size` from the codec) replace its fields."""
  if name not in PRESETS:
    raise ValueError(f'Unknown model preset {name!r}; known: {sorted(PRESETS)}.')
  return ModelConfig(**{**PRESETS[name], **overrides})


@flax.struct.dataclass
class KVCache:
  """Per layer, keys and values of S cache slots; which slots hold real tokens; the next slot to write.

  Heads come before slots ([B, H, S, E]) so that decoding reads each head's keys contiguously and a
  written slot updates the buffer in place (no per-step transpose or stacking of the cache).
  """

  keys: tuple[Array, ...]
  values: tuple[Array, ...]
  valid_BxS: Bool[Array, 'B S']
  index: Int[Array, '']


def init_cache(cfg: ModelConfig, batch_size: int, num_slots: int) -> KVCache:
  shape = (batch_size, cfg.num_heads, num_slots, cfg.head_width)
  zeros = tuple(jnp.zeros(shape, cfg.compute_dtype) for _ in range(cfg.num_layers))
  return KVCache(
    keys=zeros,
    values=zeros,
    valid_BxS=jnp.zeros((batch_size, num_slots), bool),
    index=jnp.zeros((), jnp.int32),
  )


def rotary_tables(positions_BxT: Int[Array, 'B T'], cfg: ModelConfig) -> tuple[Array, Array] | None:
  """Rotary multipliers [B, T, 1, E] for every layer, so that rotating a head is `x * cos + swap(x) * sin`.

  NeoX rotates the first `rotary_dims` of each head as two halves: out = rot * cos + (-rot2, rot1) * sin.
  Here the sign is folded into the sine table and the tables are padded to the whole head (cos 1, sin 0
  on the pass-through dims), so the rotation is elementwise apart from swapping the halves (`_rotate`).
  The tables are computed once per forward pass and kept (an optimisation barrier): left to fusion,
  XLA:CPU recomputed the sines and cosines inside every consumer, per element of every head and layer
  (the decoding step's cache write took 0.2-0.3 ms per layer instead of 0.06 ms).
  """
  r, e = cfg.rotary_dims, cfg.head_width
  if r == 0:
    return None
  inv_freq = 1.0 / cfg.rotary_base ** (jnp.arange(0, r, 2, dtype=jnp.float32) / r)
  angles = positions_BxT[..., None].astype(jnp.float32) * inv_freq  # [B, T, rotary_dims / 2]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  pad = [(0, 0), (0, 0), (0, e - r)]
  cos_BxTxE = jnp.pad(jnp.concatenate([cos, cos], axis=-1), pad, constant_values=1.0)
  sin_BxTxE = jnp.pad(jnp.concatenate([-sin, sin], axis=-1), pad)
  return jax.lax.optimization_barrier((cos_BxTxE[:, :, None], sin_BxTxE[:, :, None]))


def _swap_halves(x_BxTxHxE: Array, cfg: ModelConfig) -> Array:
  """The rotary dims' two halves exchanged ((rot2, rot1, ...)); pass-through dims are don't-cares."""
  r, e = cfg.rotary_dims, cfg.head_width
  if e % r == 0:
    # Every block of r dims has its halves exchanged by one reversal: an index map, no concatenation.
    blocks = x_BxTxHxE.reshape(*x_BxTxHxE.shape[:-1], e // r, 2, r // 2)
    return jnp.flip(blocks, axis=-2).reshape(x_BxTxHxE.shape)
  half = r // 2
  return jnp.concatenate([x_BxTxHxE[..., half:r], x_BxTxHxE[..., :half], x_BxTxHxE[..., r:]], axis=-1)


def _rotate(x_BxTxHxE: Array, tables, cfg: ModelConfig) -> Array:
  """NeoX rotary embedding on the first `rotary_dims` of each head (halves rotated, not interleaved).

  The textbook form rot * cos + concat(-rot2, rot1) * sin, with the sign carried by the sine table and
  the pass-through dims multiplied by exactly 1 and added to exactly 0: the same logits as that form bit
  for bit at Pythia's rotary fraction (a quarter of the head), to float rounding otherwise.
  """
  if tables is None:
    return x_BxTxHxE
  cos_BxTx1xE, sin_BxTx1xE = tables
  x = x_BxTxHxE.astype(jnp.float32)
  return (x * cos_BxTx1xE + _swap_halves(x, cfg) * sin_BxTx1xE).astype(x_BxTxHxE.dtype)


def _normal_cdf(x: Array) -> Array:
  # The formula of torch's exact GELU, x * 0.5 * (1 + erf(x / sqrt(2))). On XLA:CPU erf is ~2.5x
  # cheaper than the erfc that jax.nn.gelu uses; the two agree to float32 rounding.
  return 0.5 * (1.0 + jax.lax.erf(x * math.sqrt(0.5)))


@jax.custom_vjp
def _gelu(x: Array) -> Array:
  """Exact (erf) GELU, as Pythia's, with its gradient written out for speed (same derivative)."""
  return x * _normal_cdf(x)


def _gelu_fwd(x):
  return _gelu(x), x


def _gelu_bwd(x, g):
  # d/dx x*Phi(x) = Phi(x) + x*phi(x). Keeping only x and recomputing Phi here is faster on XLA:CPU
  # than autodiff's residuals (or saving Phi): the backward is one elementwise pass.
  pdf = jnp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
  return (g * (_normal_cdf(x) + x * pdf),)


_gelu.defvjp(_gelu_fwd, _gelu_bwd)


def _dense(din: int, dout: int, cfg: ModelConfig, rngs: nnx.Rngs, *, std: float, bias: bool = True):
  return nnx.Linear(
    din,
    dout,
    use_bias=bias,
    dtype=cfg.compute_dtype,
    param_dtype=jnp.float32,
    kernel_init=nnx.initializers.normal(std),
    rngs=rngs,
  )


def _layer_norm(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # Statistics in float32 whatever the compute dtype: bf16 variance of wide activations is too coarse.
  # Two-pass variance, as torch: the one-pass E[x^2] - E[x]^2 loses precision on offset activations.
  return nnx.LayerNorm(
    cfg.width, epsilon=cfg.layer_norm_eps, dtype=jnp.float32, use_fast_variance=False, rngs=rngs
  )


class Block(nnx.Module):
  """x + attention(ln1(x)) + mlp(ln2(x)): GPT-NeoX's parallel residual."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    self.input_layernorm = _layer_norm(cfg, rngs)
    self.post_attention_layernorm = _layer_norm(cfg, rngs)
    # Output features ordered (head, q/k/v, head width), as in GPT-NeoX's fused query_key_value.
    self.query_key_value = _dense(cfg.width, 3 * cfg.width, cfg, rngs, std=cfg.init_std)
    self.dense = _dense(cfg.width, cfg.width, cfg, rngs, std=out_std)
    self.dense_h_to_4h = _dense(cfg.width, cfg.ff_width, cfg, rngs, std=cfg.init_std)
    self.dense_4h_to_h = _dense(cfg.ff_width, cfg.width, cfg, rngs, std=out_std)

  def __call__(self, x_BxTxD, rotary, mask_BxTxS, kv, *, last_only: bool = False):
    """`rotary` is `rotary_tables` of the positions; `kv` is (keys, values, slot) of this layer's cache,
    or None without a cache.

    With `last_only`, keys and values cover every position but the output only the last one.
    """
    cfg = self.cfg
    b, t, _ = x_BxTxD.shape
    h = self.input_layernorm(x_BxTxD).astype(cfg.compute_dtype)
    qkv_BxTxHx3xE = self.query_key_value(h).reshape(b, t, cfg.num_heads, 3, cfg.head_width)
    q_BxTxHxE = qkv_BxTxHx3xE[..., 0, :]
    if last_only:
      x_BxTxD, q_BxTxHxE, mask_BxTxS = x_BxTxD[:, -1:], q_BxTxHxE[:, -1:], mask_BxTxS[:, -1:]
      t = 1
    q_rotary = None if rotary is None else tuple(table[:, -t:] for table in rotary)
    q_BxHxTxE = _rotate(q_BxTxHxE, q_rotary, cfg).transpose(0, 2, 1, 3)
    k_BxHxTxE = _rotate(qkv_BxTxHx3xE[..., 1, :], rotary, cfg).transpose(0, 2, 1, 3)
    v_BxHxTxE = qkv_BxTxHx3xE[..., 2, :].transpose(0, 2, 1, 3)
    if kv is not None:
      keys_BxHxSxE, values_BxHxSxE, slot = kv
      k_BxHxTxE = jax.lax.dynamic_update_slice_in_dim(keys_BxHxSxE, k_BxHxTxE, slot, axis=2)
      v_BxHxTxE = jax.lax.dynamic_update_slice_in_dim(values_BxHxSxE, v_BxHxTxE, slot, axis=2)
    scores_BxHxTxS = jnp.einsum('bhte,bhse->bhts', q_BxHxTxE, k_BxHxTxE, preferred_element_type=jnp.float32)
    scores_BxHxTxS = jnp.where(mask_BxTxS[:, None], scores_BxHxTxS / math.sqrt(cfg.head_width), -1e30)
    probs_BxHxTxS = jax.nn.softmax(scores_BxHxTxS, axis=-1).astype(cfg.compute_dtype)
    attended_BxHxTxE = jnp.einsum('bhts,bhse->bhte', probs_BxHxTxS, v_BxHxTxE)
    attended_BxTxD = attended_BxHxTxE.transpose(0, 2, 1, 3).reshape(b, t, cfg.width)
    mlp_in = self.post_attention_layernorm(x_BxTxD).astype(cfg.compute_dtype)
    mlp_out = self.dense_4h_to_h(_gelu(self.dense_h_to_4h(mlp_in)))
    x_BxTxD = x_BxTxD + self.dense(attended_BxTxD) + mlp_out
    return x_BxTxD, (k_BxHxTxE, v_BxHxTxE)


class Transformer(nnx.Module):
  """Token ids in, next-token logits out (float32), optionally reading and extending a KV cache."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed_in = nnx.Embed(
      cfg.vocab_size,
      cfg.width,
      dtype=cfg.compute_dtype,
      param_dtype=jnp.float32,
      embedding_init=nnx.initializers.normal(cfg.init_std),
      rngs=rngs,
    )
    self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_layer_norm = _layer_norm(cfg, rngs)
    self.embed_out = _dense(cfg.width, cfg.vocab_size, cfg, rngs, std=cfg.init_std, bias=False)

  def __call__(
    self,
    tokens_BxT: Int[Array, 'B T'],
    mask_BxT: Bool[Array, 'B T'],
    cache: KVCache | None = None,
    *,
    last_only: bool = False,
  ) -> tuple[Float[Array, 'B T V'], KVCache | None]:
    """Causal forward pass.

    Args:
      tokens_BxT: token ids.
      mask_BxT: True on real tokens; padding (left or right) is neither attended to nor counted in
        positions, so a left-padded prompt gets the same positions as an unpadded one.
      cache: None for a full pass (training); otherwise the tokens are written at slots
        [cache.index, cache.index + T) and attend to every earlier valid slot.
      last_only: return the logits of the last position only ([B, 1, V]), as a prefill needs; the
        last layer (past its keys and values) and the output projection then skip the other positions.

    Returns:
      Float32 logits [B, T, V] (T = 1 with `last_only`) and the extended cache (None without one).
    """
    cfg = self.cfg
    t = tokens_BxT.shape[1]
    if cache is None:
      positions_BxT = jnp.cumsum(mask_BxT, axis=1) - 1
      key_valid_BxS, slots_T = mask_BxT, jnp.arange(t)
    else:
      seen_B = jnp.sum(cache.valid_BxS, axis=1)
      positions_BxT = seen_B[:, None] + jnp.cumsum(mask_BxT, axis=1) - 1
      key_valid_BxS = jax.lax.dynamic_update_slice_in_dim(cache.valid_BxS, mask_BxT, cache.index, axis=1)
      slots_T = cache.index + jnp.arange(t)
    num_slots = key_valid_BxS.shape[1]
    causal_TxS = jnp.arange(num_slots)[None, :] <= slots_T[:, None]
    mask_BxTxS = causal_TxS[None] & key_valid_BxS[:, None, :]
    rotary = rotary_tables(jnp.maximum(positions_BxT, 0), cfg)

    x_BxTxD = self.embed_in(tokens_BxT)
    new_keys, new_values = [], []
    for i, layer in enumerate(self.layers):
      kv = None if cache is None else (cache.keys[i], cache.values[i], cache.index)
      # Only the last layer can drop positions: earlier layers' outputs feed later keys and values.
      last = last_only and i == cfg.num_layers - 1
      x_BxTxD, (k, v) = layer(x_BxTxD, rotary, mask_BxTxS, kv, last_only=last)
      new_keys.append(k)
      new_values.append(v)
    h_BxTxD = self.final_layer_norm(x_BxTxD).astype(cfg.compute_dtype)
    logits_BxTxV = self.embed_out(h_BxTxD).astype(jnp.float32)
    if cache is None:
      return logits_BxTxV, None
    new_cache = KVCache(
      keys=tuple(new_keys),
      values=tuple(new_values),
      valid_BxS=key_valid_BxS,
      index=cache.index + t,
    )
    return logits_BxTxV, new_cache


Params = dict  # nested dict of arrays, as `nnx.to_pure_dict` gives; what optax and Orbax see


def init(cfg: ModelConfig, key) -> tuple[nnx.GraphDef, Params]:
  """A fresh model split at the boundary into (graphdef, params as a plain nested dict)."""
  graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(params=key)))
  return graphdef, nnx.to_pure_dict(state)


def abstract_params(cfg: ModelConfig) -> tuple[nnx.GraphDef, Params]:
  """(graphdef, params as ShapeDtypeStructs) without allocating: for sharding rules and restores."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(params=0))))
  return graphdef, nnx.to_pure_dict(state)


def apply(
  graphdef: nnx.GraphDef,
  params: Params,
  tokens_BxT,
  mask_BxT,
  cache: KVCache | None = None,
  *,
  last_only: bool = False,
):
  """Pure forward pass over split parameters; see `Transformer.__call__`."""
  return nnx.merge(graphdef, params)(tokens_BxT, mask_BxT, cache, last_only=last_only)


def num_params(params: Params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
  """Forward-pass FLOPs per token (2 per multiply-add): all matmuls plus attention scores and mixing."""
  d, f, v = cfg.width, cfg.ff_width, cfg.vocab_size
  per_layer = 2 * (3 * d * d + d * d + 2 * d * f) + 2 * 2 * seq_len * d
  return cfg.num_layers * per_layer + 2 * d * v
