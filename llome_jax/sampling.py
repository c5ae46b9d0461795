"""Jitted autoregressive decoding with a KV cache: greedy, temperature and top-k, one `lax.scan`.

Temperatures are per row, so one compiled sampler serves a batch that mixes greedy rows (temperature 0)
with sampled rows at several temperatures, as LLOME's inner loop does.
"""

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from llome_jax import model as model_lib
from llome_jax import sharding

LOGPROB_MODES = ('model', 'tempered')


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """Static decoding settings.

  `logprobs`: 'model' reports each chosen token's log-probability under the untempered, unfiltered
  model, so likelihoods are comparable across temperatures; 'tempered' reports it under the
  distribution actually sampled from (temperature and top-k applied), which is what the reference
  ranks by and which favours low temperatures. Greedy rows report the model's log-probability in both.

  `row_groups`: the batch runs through the model as this many independent groups of rows (row r in
  group r mod G), each with its own cache. The numbers are the same; the point is the schedule. XLA:CPU
  runs one small op at a time per dependency chain, so independent groups let its threads decode side
  by side: with the f2 policy (width 128, 1,700 rows) a decode took 0.76-0.80 s in two groups against
  0.94-1.11 s in one, on 2 cores, and an f2 MargE round 27 s instead of 36 s, with the same metrics;
  with the `small` preset at 256 rows, whose matmuls already use both cores, the two tie. On
  accelerators one group is best (fewer, larger kernels). None picks 2 on the CPU backend and 1
  elsewhere; a count that does not divide the batch falls back to 1.
  """

  max_new_tokens: int
  eos_id: int
  pad_id: int
  top_k: int = 0
  logprobs: str = 'model'
  row_groups: int | None = None

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f'max_new_tokens must be positive, got {self.max_new_tokens}.')
    check_row_groups(self.row_groups)
    if self.top_k < 0:
      raise ValueError(f'top_k must be >= 0 (0 disables it), got {self.top_k}.')
    if self.logprobs not in LOGPROB_MODES:
      raise ValueError(f'logprobs must be one of {LOGPROB_MODES}, got {self.logprobs!r}.')


@flax.struct.dataclass
class Samples:
  """Generated tokens (PAD after EOS), their log-probabilities (0 where not generated), and which
  positions were generated (up to and including the first EOS)."""

  tokens_BxG: Int[Array, 'B G']
  logps_BxG: Float[Array, 'B G']
  mask_BxG: Bool[Array, 'B G']

  def mean_logp(self) -> Float[Array, ' B']:
    """Mean token log-likelihood of each generation (the LLOME ranking statistic)."""
    count_B = jnp.maximum(jnp.sum(self.mask_BxG, axis=1), 1)
    return jnp.sum(self.logps_BxG, axis=1) / count_B


# Above this vocabulary size the k-th largest logit is found by bisection: XLA:CPU's sort-based
# lax.top_k took ~200 ms per decoding step over Pythia's 50k tokens, bisection ~1 ms.
_BISECT_VOCAB = 1024


def _kth_largest(x_BxV: Float[Array, 'B V'], k: int) -> Float[Array, 'B 1']:
  """The k-th largest value of each row, exactly (ties counted), as lax.top_k's k-th value."""
  if x_BxV.shape[-1] <= _BISECT_VOCAB:
    return jax.lax.top_k(x_BxV, k)[0][:, -1:]
  # Order-preserving uint32 keys of float32 values (negatives' magnitude bits flipped, sign bit
  # flipped), then the largest key t with #{key >= t} >= k, built bit by bit from the top: exact.
  bits = jax.lax.bitcast_convert_type(x_BxV.astype(jnp.float32), jnp.int32)
  keys_BxV = jax.lax.bitcast_convert_type(
    jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits) ^ jnp.int32(-(2**31)), jnp.uint32
  )

  def add_bit(i, key_B):
    candidate_B = key_B | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
    enough_B = jnp.sum(keys_BxV >= candidate_B[:, None], axis=-1) >= k
    return jnp.where(enough_B, candidate_B, key_B)

  key_B = jax.lax.fori_loop(0, 32, add_bit, jnp.zeros(x_BxV.shape[:1], jnp.uint32))
  signed_B = jax.lax.bitcast_convert_type(key_B, jnp.int32) ^ jnp.int32(-(2**31))
  bits_B = jnp.where(signed_B < 0, signed_B ^ jnp.int32(0x7FFFFFFF), signed_B)
  return jax.lax.bitcast_convert_type(bits_B, jnp.float32)[:, None].astype(x_BxV.dtype)


def filtered_logits(
  logits_BxV: Float[Array, 'B V'],
  allowed_BxV: Bool[Array, 'B V'],
  temperature_B: Float[Array, ' B'],
  *,
  top_k: int,
) -> tuple[Float[Array, 'B V'], Float[Array, 'B V']]:
  """The logits each row's next token is drawn from: disallowed tokens and those outside the top k set
  to -inf (`masked`), then divided by the row's temperature (`tempered`; greedy rows, temperature <= 0,
  are divided by 1 and take the argmax of `masked`)."""
  masked_BxV = jnp.where(allowed_BxV, logits_BxV, -jnp.inf)
  if 0 < top_k < masked_BxV.shape[-1]:  # Keeping k >= V tokens keeps them all: skip the sort.
    kth_B1 = _kth_largest(masked_BxV, top_k)
    masked_BxV = jnp.where(masked_BxV >= kth_B1, masked_BxV, -jnp.inf)
  # Dividing by 1 on greedy rows keeps them finite.
  return masked_BxV, masked_BxV / jnp.where(temperature_B <= 0.0, 1.0, temperature_B)[:, None]


def _choose(key, logits_BxV, temperature_B, allowed_BxV, cfg: SampleConfig):
  """Next token per row and its log-probability (see SampleConfig.logprobs)."""
  model_logps_BxV = jax.nn.log_softmax(logits_BxV, axis=-1)
  masked_BxV, tempered_BxV = filtered_logits(logits_BxV, allowed_BxV, temperature_B, top_k=cfg.top_k)
  greedy_B = temperature_B <= 0.0
  sampled_B = jax.random.categorical(key, tempered_BxV, axis=-1)
  token_B = jnp.where(greedy_B, jnp.argmax(masked_BxV, axis=-1), sampled_B).astype(jnp.int32)
  logp_B = jnp.take_along_axis(model_logps_BxV, token_B[:, None], axis=-1)[:, 0]
  if cfg.logprobs == 'tempered':
    tempered_logps_BxV = jax.nn.log_softmax(tempered_BxV, axis=-1)
    tempered_B = jnp.take_along_axis(tempered_logps_BxV, token_B[:, None], axis=-1)[:, 0]
    logp_B = jnp.where(greedy_B, logp_B, tempered_B)
  return token_B, logp_B


def check_row_groups(row_groups: int | None) -> None:
  if row_groups is not None and row_groups < 1:
    raise ValueError(f'row_groups must be positive (or None for the platform default), got {row_groups}.')


def _num_groups(cfg: SampleConfig, batch_size: int) -> int:
  groups = cfg.row_groups
  if groups is None:
    groups = 2 if jax.default_backend() == 'cpu' else 1
  return groups if batch_size % groups == 0 else 1


def _split_rows(x_BxN: Array, groups: int) -> tuple[Array, ...]:
  """Rows r = i * groups + g go to group g: a reshape that keeps a row-sharded batch on its devices."""
  x = x_BxN.reshape(x_BxN.shape[0] // groups, groups, *x_BxN.shape[1:])
  return tuple(x[:, g] for g in range(groups))


def _join_rows(parts: tuple[Array, ...]) -> Array:
  joined = jnp.stack(parts, axis=1)
  return joined.reshape(-1, *joined.shape[2:])


def sample(
  key: PRNGKeyArray,
  graphdef: nnx.GraphDef,
  params: model_lib.Params,
  prompts_BxT: Int[Array, 'B T'],
  prompt_mask_BxT: Bool[Array, 'B T'],
  temperature_B: Float[Array, ' B'],
  *,
  cfg: SampleConfig,
  allowed_GxV: Bool[Array, 'G V'] | None = None,
) -> Samples:
  """Decodes `cfg.max_new_tokens` tokens after each (left-padded) prompt.

  Args:
    key: randomness; step g uses fold_in(key, g).
    graphdef, params: the policy, split at the boundary.
    prompts_BxT, prompt_mask_BxT: prompts, left-padded so that every row continues at slot T.
    temperature_B: per-row temperature; <= 0 means greedy.
    cfg: static decoding settings.
    allowed_GxV: constrained decoding: row g lists the tokens allowed at generated position g (for
      example exactly L state tokens then EOS, so every output is valid). None: unconstrained.

  Returns:
    Samples with G = cfg.max_new_tokens positions; rows stop (PAD, log-prob 0) after their first EOS.
  """
  model_cfg = nnx.merge(graphdef, params).cfg
  b, t = prompts_BxT.shape
  g = cfg.max_new_tokens
  vocab = model_cfg.vocab_size
  if allowed_GxV is None:
    allowed_GxV = jnp.ones((g, vocab), bool)
  elif allowed_GxV.shape != (g, vocab):
    raise ValueError(f'allowed_GxV must have shape {(g, vocab)}, got {allowed_GxV.shape}.')
  if t + g > model_cfg.max_len:
    raise ValueError(f'prompt length {t} + {g} new tokens exceeds the model max_len {model_cfg.max_len}.')
  temperature_B = jnp.broadcast_to(jnp.asarray(temperature_B, jnp.float32), (b,))

  groups = _num_groups(cfg, b)

  def forward(tokens_BxT, mask_BxT, caches):
    """The model on each row group with its own cache; logits of the last position, rows rejoined."""
    logits, new_caches = [], []
    for tokens, mask, cache in zip(
      _split_rows(tokens_BxT, groups), _split_rows(mask_BxT, groups), caches, strict=True
    ):
      logits_Nx1xV, cache = model_lib.apply(graphdef, params, tokens, mask, cache, last_only=True)
      logits.append(logits_Nx1xV[:, 0])
      new_caches.append(cache)
    return _join_rows(tuple(logits)), tuple(new_caches)

  caches = tuple(model_lib.init_cache(model_cfg, b // groups, t + g) for _ in range(groups))
  logits_BxV, caches = forward(prompts_BxT, prompt_mask_BxT, caches)

  def step(carry, inputs):
    caches, logits_BxV, done_B = carry
    i, allowed_V = inputs
    allowed_BxV = jnp.broadcast_to(allowed_V, logits_BxV.shape)
    token_B, logp_B = _choose(jax.random.fold_in(key, i), logits_BxV, temperature_B, allowed_BxV, cfg)
    live_B = ~done_B
    token_B = jnp.where(live_B, token_B, cfg.pad_id)
    logp_B = jnp.where(live_B, logp_B, 0.0)
    done_B = done_B | (token_B == cfg.eos_id)
    next_logits_BxV, caches = forward(token_B[:, None], live_B[:, None], caches)
    return (caches, next_logits_BxV, done_B), (token_B, logp_B, live_B)

  carry = (caches, logits_BxV, jnp.zeros((b,), bool))
  _, (tokens_GxB, logps_GxB, live_GxB) = jax.lax.scan(step, carry, (jnp.arange(g), allowed_GxV))
  return Samples(tokens_BxG=tokens_GxB.T, logps_BxG=logps_GxB.T, mask_BxG=live_GxB.T)


def jit_sample(graphdef: nnx.GraphDef, params_shardings, mesh, *, cfg: SampleConfig):
  """`sample` jitted at the edge: prompts and outputs split over the data axis (`sharding.rows`: whole
  when the batch does not divide evenly), params as given. One compilation per batch size."""
  replicated = sharding.replicated(mesh)

  @functools.cache
  def compiled(num_rows: int):
    rows = sharding.rows(mesh, num_rows)
    return jax.jit(
      lambda key, params, prompts_BxT, mask_BxT, temperature_B, allowed_GxV: sample(
        key, graphdef, params, prompts_BxT, mask_BxT, temperature_B, cfg=cfg, allowed_GxV=allowed_GxV
      ),
      in_shardings=(replicated, params_shardings, rows, rows, rows, replicated),
      out_shardings=rows,
    )

  def run(key, params, prompts_BxT, mask_BxT, temperature_B, allowed_GxV):
    return compiled(prompts_BxT.shape[0])(key, params, prompts_BxT, mask_BxT, temperature_B, allowed_GxV)

  return run
