"""LLOME's inner loop (SPEC 3, step 4): iterated edits of seed sequences by the policy, no oracle calls.

Every seed is expanded into trajectories, one per decoding setting (greedy, and several samples at each
temperature). Each iteration asks the policy for an edit of the trajectory's current input; the next
input is the valid candidate with the highest mean token log-likelihood seen so far in that trajectory.
All generations form the next round's pool.
"""

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from llome_jax import codec as codec_lib
from llome_jax import model as model_lib
from llome_jax import sampling, sharding

# SPEC 3.5: mean normalised input -> output Hamming distance below which temperatures shift up.
COLLAPSE_THRESHOLDS = ((0.075, 0.6), (0.1, 0.4), (0.15, 0.2))


@dataclasses.dataclass(frozen=True)
class InnerLoopConfig:
  """Decoding settings per seed: greedy (if `greedy`) plus `samples_per_temperature` samples at each
  temperature; `num_iterations` edits per trajectory. `chunk_rows` trajectories are decoded at a time
  (KV-cache memory); it is part of the random stream, so changing it changes the samples.
  `row_groups` is `sampling.SampleConfig.row_groups` (None: 2 on CPU, 1 on accelerators)."""

  num_iterations: int = 10
  temperatures: tuple[float, ...] = (0.6, 0.8, 1.0, 1.2, 1.4, 1.6)
  samples_per_temperature: int = 10
  greedy: bool = True
  top_k: int = 0
  logprobs: str = 'model'
  constrained: bool = True
  chunk_rows: int = 1024
  row_groups: int | None = None

  def __post_init__(self):
    if self.num_iterations < 1:
      raise ValueError(f'num_iterations must be positive, got {self.num_iterations}.')
    if any(not t > 0 for t in self.temperatures):
      raise ValueError(
        f'temperatures must all be > 0 (greedy is the `greedy` flag), got {self.temperatures}.'
      )
    if self.samples_per_temperature < 0 or (not self.greedy and not self.rows_per_seed):
      raise ValueError('The inner loop needs at least one decoding setting per seed.')
    if self.chunk_rows < 1:
      raise ValueError(f'chunk_rows must be positive, got {self.chunk_rows}.')
    sampling.check_row_groups(self.row_groups)

  @property
  def rows_per_seed(self) -> int:
    return int(self.greedy) + len(self.temperatures) * self.samples_per_temperature


def collapse_shift(mean_hamming: Float[Array, '']) -> Float[Array, '']:
  """Temperature shift against generator collapse: +0.2 / 0.4 / 0.6 when the last round's mean
  normalised edit distance fell below 0.15 / 0.1 / 0.075, else 0."""
  shift = jnp.zeros((), jnp.float32)
  for threshold, value in reversed(COLLAPSE_THRESHOLDS):
    shift = jnp.where(mean_hamming < threshold, value, shift)
  return shift


def seed_temperatures(cfg: InnerLoopConfig, shift: Float[Array, '']) -> Float[Array, ' R']:
  """The temperature of each of a seed's trajectories (0 = greedy), temperatures shifted by `shift`."""
  sampled = jnp.repeat(jnp.asarray(cfg.temperatures, jnp.float32), cfg.samples_per_temperature) + shift
  return jnp.concatenate([jnp.zeros(int(cfg.greedy), jnp.float32), sampled])


@flax.struct.dataclass
class Generations:
  """The pool of one inner loop, iteration-major: I iterations of R = seeds x rows_per_seed
  trajectories. `valid_IxR` is False for invalid outputs and for trajectories of masked seeds."""

  inputs_IxRxL: Int[Array, 'I R L']
  outputs_IxRxL: Int[Array, 'I R L']
  valid_IxR: Bool[Array, 'I R']
  mean_logp_IxR: Float[Array, 'I R']
  temperature_R: Float[Array, ' R']
  where_R: Bool[Array, ' R']


def _decode_chunks(
  key, graphdef, params, inputs_RxL, temperature_R, *, codec, scfg, allowed, chunk_rows, mesh
):
  """Samples one edit of every row, `chunk_rows` rows at a time; returns outputs, validity, mean logp."""

  def run(i, chunk):
    x_NxL, temperature_N = chunk
    prompts = codec.encode_prompts(x_NxL)
    out = sampling.sample(
      jax.random.fold_in(key, i),
      graphdef,
      params,
      prompts.tokens_BxT,
      prompts.mask_BxT,
      temperature_N,
      cfg=scfg,
      allowed_GxV=allowed,
    )
    seqs_NxL, funnel = codec.decode(out.tokens_BxG)
    return seqs_NxL, funnel.valid_B, out.mean_logp()

  return sharding.chunked_map(run, (inputs_RxL, temperature_R), rows=chunk_rows, mesh=mesh)


def run(
  key: PRNGKeyArray,
  graphdef: nnx.GraphDef,
  params: model_lib.Params,
  seeds_SxL: Int[Array, 'S L'],
  seed_where_S: Bool[Array, ' S'],
  temperature_shift: Float[Array, ''],
  *,
  codec: codec_lib.CompactCodec,
  cfg: InnerLoopConfig,
  mesh: Mesh | None = None,
) -> Generations:
  """Runs the inner loop from every seed; no oracle calls.

  Args:
    key: randomness; iteration i uses fold_in(key, i).
    graphdef, params: the policy.
    seeds_SxL, seed_where_S: seed sequences (fixed capacity) and which are real.
    temperature_shift: added to every sampling temperature (see `collapse_shift`).
    codec: a fixed-layout codec (jittable encoding and decoding).
    cfg: static settings.
    mesh: when given, each chunk's trajectories are split across its data axis (see
      `sharding.chunked_map`): on N devices each decodes 1/N of the rows.

  Returns:
    Generations of shape [num_iterations, S * rows_per_seed].
  """
  per_seed = cfg.rows_per_seed
  temperature_R = jnp.tile(seed_temperatures(cfg, temperature_shift), seeds_SxL.shape[0])
  where_R = jnp.repeat(seed_where_S, per_seed)
  start_RxL = jnp.repeat(jnp.asarray(seeds_SxL, jnp.int32), per_seed, axis=0)
  scfg = sampling.SampleConfig(
    max_new_tokens=codec.max_target_len,
    eos_id=codec.eos_id,
    pad_id=codec.pad_id,
    top_k=cfg.top_k,
    logprobs=cfg.logprobs,
    row_groups=cfg.row_groups,
  )
  allowed = codec.allowed_tokens_GxV(codec.max_target_len) if cfg.constrained else None

  def iteration(carry, i):
    current_RxL, best_logp_R = carry
    outputs_RxL, valid_R, mean_logp_R = _decode_chunks(
      jax.random.fold_in(key, i),
      graphdef,
      params,
      current_RxL,
      temperature_R,
      codec=codec,
      scfg=scfg,
      allowed=allowed,
      chunk_rows=cfg.chunk_rows,
      mesh=mesh,
    )
    valid_R = valid_R & where_R
    # The next input: the likeliest valid candidate of this trajectory so far (the seed until one).
    better_R = valid_R & (mean_logp_R > best_logp_R)
    next_RxL = jnp.where(better_R[:, None], outputs_RxL, current_RxL)
    best_logp_R = jnp.where(better_R, mean_logp_R, best_logp_R)
    return (next_RxL, best_logp_R), (current_RxL, outputs_RxL, valid_R, mean_logp_R)

  init = (start_RxL, jnp.full(start_RxL.shape[:1], -jnp.inf, jnp.float32))
  _, (inputs, outputs, valid, mean_logp) = jax.lax.scan(iteration, init, jnp.arange(cfg.num_iterations))
  return Generations(
    inputs_IxRxL=inputs,
    outputs_IxRxL=outputs,
    valid_IxR=valid,
    mean_logp_IxR=mean_logp,
    temperature_R=temperature_R,
    where_R=where_R,
  )
