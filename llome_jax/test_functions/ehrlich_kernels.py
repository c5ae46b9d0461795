"""XLA kernels behind `ehrlich.evaluate`: chunked, narrow-token motif counts and feasibility.

Kept apart from the instance definition because everything here is shaped by XLA's code generation
(chunk sizes, dtypes, fusion fences); the values are holo's, bit for bit.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from llome_jax.test_functions import ehrlich_params


def response(params: ehrlich_params.EhrlichParams, presence: Float[Array, '...']) -> Float[Array, '...']:
  """rho(h) = (e h (h - 1) + 1) h, in holo's operation order."""
  coeff = params.epistasis_factor * presence * (presence - 1.0) + 1.0
  return coeff * presence


# Evaluation runs over chunks of at most this many rows of the flattened batch. XLA:CPU materialises
# every intermediate ([B, W] window counts, [B, L-1] transition checks), so chunking keeps them in cache
# and bounds memory for any B. Smaller chunks pay more per-kernel overhead; at L=256 on a 2-core AVX-512
# CPU, 512..2048 rows were within noise of each other (benchmarks/ehrlich_speed.py).
CPU_CHUNK_ROWS = 1024
# Accelerators want large batches per kernel; a chunk this size still bounds memory (16 MB at L=256).
ACCELERATOR_CHUNK_ROWS = 1 << 16


def chunk_rows() -> int:
  return CPU_CHUNK_ROWS if jax.default_backend() == 'cpu' else ACCELERATOR_CHUNK_ROWS


def as_tokens(params: ehrlich_params.EhrlichParams, x) -> jax.Array:
  """The input as a JAX integer array, without silently wrapping wide host integers.

  With x64 off, jnp.asarray truncates int64 to int32, so 2**32 + t would score as token t; host
  arrays wider than 32 bits have their out-of-range entries set to -1 (still out of range) first.
  """
  if not isinstance(x, jax.Array):
    x = np.asarray(x)
    if x.dtype.kind in 'iu' and x.dtype.itemsize >= 4 and not jax.config.jax_enable_x64:
      x = np.where((x >= 0) & (x < params.num_states), x, -1).astype(np.int32)
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise TypeError(f'Ehrlich inputs must be integer tokens, got dtype {x.dtype}.')
  return x


def encode_tokens(params: ehrlich_params.EhrlichParams, x_BxL: jax.Array) -> jax.Array:
  """Tokens in the narrowest unsigned dtype, with every out-of-range token replaced by the sentinel v.

  The sentinel never equals a motif element and its transitions are all banned, so the range check
  costs nothing downstream; one-byte tokens put 4x more lanes in each vector compare than int32.
  """
  num_states = params.num_states
  if x_BxL.dtype.itemsize < 4:  # Compare against v without overflowing int8/uint8 inputs.
    x_BxL = x_BxL.astype(jnp.int32)
  token_dtype = jnp.uint8 if num_states < 2**8 else jnp.uint16 if num_states < 2**16 else jnp.int32
  in_range_BxL = (x_BxL >= 0) & (x_BxL < num_states)
  return jnp.where(in_range_BxL, x_BxL, num_states).astype(token_dtype)


def feasible_chunk(params: ehrlich_params.EhrlichParams, tokens_CxL: jax.Array) -> jax.Array:
  """No banned transition (the sentinel's are all banned), via a bitmask row per state.

  Row s packs allowed[s, :] into 32-bit words, so each transition costs a gather of one word from a
  small table plus a shift; XLA:CPU scalarises gathers, and this ran ~2x faster than gathering from the
  flattened boolean [v, v] matrix.
  """
  num_states = params.num_states
  words_per_row = (num_states + 1 + 31) // 32
  allowed_SxT = jnp.pad(params.transition_matrix > 0, ((0, 1), (0, 32 * words_per_row - num_states)))
  bits_SxWx32 = allowed_SxT.reshape(num_states + 1, words_per_row, 32).astype(jnp.uint32)
  words_flat = jnp.sum(bits_SxWx32 << jnp.arange(32, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32).reshape(-1)
  current_CxL = tokens_CxL[:, :-1].astype(jnp.int32)
  following_CxL = tokens_CxL[:, 1:].astype(jnp.int32)
  if words_per_row == 1:
    word_index_CxL = current_CxL
  else:
    word_index_CxL = current_CxL * words_per_row + (following_CxL >> 5)
  word_CxL = words_flat.at[word_index_CxL].get(mode='promise_in_bounds')
  pair_ok_CxL = ((word_CxL >> (following_CxL & 31).astype(jnp.uint32)) & 1).astype(jnp.uint8)
  return jnp.min(pair_ok_CxL, axis=-1) > 0  # A uint8 min reduces much faster than a bool `all` on CPU.


def presence_chunk(params: ehrlich_params.EhrlichParams, tokens_CxL: jax.Array) -> jax.Array:
  """[C, M] quantised motif presence, holo's formula on narrow integer window counts."""
  length = tokens_CxL.shape[-1]
  count_dtype = jnp.int8 if params.motif_length < 2**7 else jnp.int32
  quant_factor_1 = math.ceil(params.motif_length / params.quantization)
  quant_factor_2 = np.float32(params.motif_length / quant_factor_1)
  per_motif = []
  for motif, offsets in zip(params.motifs, params.offsets, strict=True):
    width = length - offsets[-1]
    count_CxW = sum(
      (tokens_CxL[:, offset : offset + width] == element).astype(count_dtype)
      for element, offset in zip(motif, offsets, strict=True)
    )
    # An identity select, kept as a fusion fence: XLA:CPU otherwise pulls the adds into its YNN reduce
    # fusion, which materialises every compare separately and runs ~10x slower.
    count_CxW = jnp.where(count_CxW > 0, count_CxW, 0)
    # The quantisation floor(n / f1) / f2 is non-decreasing in n, so max over windows commutes with it.
    best_count_C = jnp.max(count_CxW, axis=-1).astype(jnp.float32)
    per_motif.append(jnp.floor(best_count_C / quant_factor_1) / quant_factor_2)
  return jnp.stack(per_motif, axis=-1)


def value_chunk(params: ehrlich_params.EhrlichParams, tokens_CxL: jax.Array) -> jax.Array:
  contributions_CxM = response(params, presence_chunk(params, tokens_CxL))
  value_C = contributions_CxM[:, 0]
  for i in range(1, params.num_motifs):  # Sequential, as torch's prod over a stacked dim 0.
    value_C = value_C * contributions_CxM[:, i]
  return jnp.where(feasible_chunk(params, tokens_CxL), value_C, -jnp.inf)


def map_chunks(chunk_fn, params: ehrlich_params.EhrlichParams, x: jax.Array) -> jax.Array:
  """Applies chunk_fn(params, tokens_CxL) -> [C, ...] to x [..., L] in chunks of `chunk_rows()` rows.

  The next chunk is encoded into the loop carry one iteration ahead, so the kernels read a plain
  buffer: reading through the loop's dynamic slice instead stops XLA from vectorising them (~10x).
  The last chunk starts at B - C and may overlap the one before it; the overlap is recomputed to equal
  values, so no padded copy of the input is needed.
  """
  length = x.shape[-1]
  x_BxL = x.reshape(-1, length)
  batch = x_BxL.shape[0]
  num_chunks = -(-batch // chunk_rows())
  chunk = -(-batch // num_chunks) if num_chunks else 0  # Equal chunks: the overlap is < num_chunks rows.
  if num_chunks <= 1:
    out = chunk_fn(params, encode_tokens(params, x_BxL))
    return out.reshape(x.shape[:-1] + out.shape[1:])

  def start(i):
    return jnp.minimum(i * chunk, batch - chunk)

  def load(i):
    return encode_tokens(params, jax.lax.dynamic_slice_in_dim(x_BxL, start(i), chunk))

  def body(i, carry):
    tokens_CxL, out = carry
    out = jax.lax.dynamic_update_slice_in_dim(out, chunk_fn(params, tokens_CxL), start(i), axis=0)
    return load(i + 1), out  # start(num_chunks) clamps, so the final prefetch stays in bounds.

  first_tokens_CxL = load(0)
  out_shape = jax.eval_shape(chunk_fn, params, first_tokens_CxL)
  out = jnp.zeros((batch,) + out_shape.shape[1:], out_shape.dtype)
  _, out = jax.lax.fori_loop(0, num_chunks, body, (first_tokens_CxL, out))
  return out.reshape(x.shape[:-1] + out.shape[1:])
