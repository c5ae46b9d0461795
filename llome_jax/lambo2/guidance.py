"""LaMBO-2's guided discrete diffusion (SPEC 7): from each starting sequence, `num_steps` steps of
mask -> perturb the features towards higher acquisition -> denoise -> keep if not worse.

One step, for every row at once:
1. Positions: the saliency of masking position i, sum_d dA/de_id (e_mask,d - e_id) (a first-order
   estimate of how the acquisition A changes when token i is masked), scaled by its L1 norm over the
   row, is a logit (over `position_temperature`); `num_mutations` positions are drawn without
   replacement (Gumbel top-k) and each is masked with probability 1 / sqrt(1 + step).
2. Features: the encoder's features of the masked sequence get an additive perturbation at the masked
   positions, optimised by Adam for `num_updates` updates to raise the acquisition of the heads on them.
3. Denoising: before the first update and after each, the masked tokens are sampled from the denoiser
   on the perturbed features (temperature 1, never the mask token); a sample replaces the row's
   current sequence when its acquisition (a fresh forward pass) is not lower.
The final sequence of each row is its proposal.

Departures from cortex, each noted where it happens: the mask embedding in the saliency is the
normalised one the encoder sees (cortex subtracts token embeddings from the raw mask embedding), and
the perturbation's objective sums the rows' acquisitions instead of averaging them, so a row's update
does not depend on how many rows share the batch or the device (and Adam is invariant to the scale).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from llome_jax.lambo2 import acquisition, network


@dataclasses.dataclass(frozen=True)
class GuideConfig:
  """Static settings of the guided steps; the defaults are bbo-bench's Ehrlich reproduction settings
  (64 steps, 16 mutations, 2 updates of size 0.05), with Adam's usual betas (cortex: 0.09, 0.0999)."""

  num_steps: int = 64
  num_mutations: int = 16
  num_updates: int = 2
  step_size: float = 0.05
  b1: float = 0.9
  b2: float = 0.999
  position_temperature: float = 1.0
  acquisition: str = 'log_ei'
  use_feasibility: bool = True
  accept_first: bool = False  # cortex's exclude_initial_solution: the first sample is always taken.

  def __post_init__(self):
    if self.num_steps < 1 or self.num_mutations < 1 or self.num_updates < 0:
      raise ValueError('num_steps and num_mutations must be >= 1, num_updates >= 0.')
    if not self.step_size > 0 or not self.position_temperature > 0:
      raise ValueError('step_size and position_temperature must be positive.')
    if self.acquisition not in ('log_ei', 'reference'):
      raise ValueError(f"acquisition must be 'log_ei' or 'reference', got {self.acquisition!r}.")


def _acquire(cfg: GuideConfig, best_M, heads) -> Float[Array, ' B']:
  return acquisition.acquisition(heads, best_M, kind=cfg.acquisition, use_feasibility=cfg.use_feasibility)


def _positions(key, net: network.Network, tokens_BxL, best_M, cfg: GuideConfig, step) -> Bool[Array, 'B L']:
  """Which positions this step masks (step 1 above)."""
  embedded = net.embed_tokens(tokens_BxL)
  grad_BxLxD = jax.grad(lambda e: jnp.sum(_acquire(cfg, best_M, net.heads(net.encode(e)))))(embedded)
  mask_D = net.embed_tokens(jnp.full((1, 1), net.cfg.mask_token))[0, 0]
  score_BxL = jnp.sum(grad_BxLxD * (mask_D - embedded), axis=-1)
  score_BxL = score_BxL / (jnp.sum(jnp.abs(score_BxL), axis=1, keepdims=True) + 1e-6)
  pick_key, keep_key = jax.random.split(key)
  gumbel_BxL = jax.random.gumbel(pick_key, score_BxL.shape)
  count = min(cfg.num_mutations, tokens_BxL.shape[1])
  _, picked_BxK = jax.lax.top_k(score_BxL / cfg.position_temperature + gumbel_BxL, count)
  chosen_BxL = (
    jnp.zeros(tokens_BxL.shape, bool).at[jnp.arange(tokens_BxL.shape[0])[:, None], picked_BxK].set(True)
  )
  keep = 1.0 / jnp.sqrt(1.0 + step)
  return chosen_BxL & (jax.random.uniform(keep_key, tokens_BxL.shape) < keep)


def _decode(key, net, features_BxLxD, masked_BxL, tokens_BxL) -> Int[Array, 'B L']:
  logits_BxLxV = net.heads(features_BxLxD)['denoiser_BxLxV'][..., : net.cfg.num_states]
  sampled_BxL = jax.random.categorical(key, logits_BxLxV)
  return jnp.where(masked_BxL, sampled_BxL, tokens_BxL)


def guided_step(
  key: PRNGKeyArray,
  carry: tuple[Array, Array, Array],
  step: Array,
  *,
  net: network.Network,
  best_M: Array,
  cfg: GuideConfig,
) -> tuple[tuple[Array, Array, Array], dict[str, Array]]:
  """One step for every row: carry (tokens_BxL, their acquisition_B, accepted count_B) -> the same."""
  tokens_BxL, acq_B, accepted_B = carry
  position_key, decode_key = jax.random.split(jax.random.fold_in(key, step))
  masked_BxL = _positions(position_key, net, tokens_BxL, best_M, cfg, step)
  base_BxLxD = net.encode(net.embed_tokens(jnp.where(masked_BxL, net.cfg.mask_token, tokens_BxL)))
  where_BxLx1 = masked_BxL[..., None]
  adam = optax.adam(cfg.step_size, b1=cfg.b1, b2=cfg.b2)

  def objective(delta_BxLxD):
    return -jnp.sum(_acquire(cfg, best_M, net.heads(base_BxLxD + delta_BxLxD * where_BxLx1)))

  def decode(tokens_BxL, acq_B, accepted_B, delta_BxLxD, i):
    candidate_BxL = _decode(
      jax.random.fold_in(decode_key, i), net, base_BxLxD + delta_BxLxD * where_BxLx1, masked_BxL, tokens_BxL
    )
    candidate_acq_B = _acquire(cfg, best_M, net(candidate_BxL))
    take_B = candidate_acq_B >= acq_B
    tokens_BxL = jnp.where(take_B[:, None], candidate_BxL, tokens_BxL)
    return tokens_BxL, jnp.where(take_B, candidate_acq_B, acq_B), accepted_B + take_B

  def update_then_decode(state, i):
    tokens_BxL, acq_B, accepted_B, delta_BxLxD, opt_state = state
    updates, opt_state = adam.update(jax.grad(objective)(delta_BxLxD), opt_state)
    delta_BxLxD = optax.apply_updates(delta_BxLxD, updates)
    return (*decode(tokens_BxL, acq_B, accepted_B, delta_BxLxD, i), delta_BxLxD, opt_state), None

  delta = jnp.zeros_like(base_BxLxD)
  state = (*decode(tokens_BxL, acq_B, accepted_B, delta, 0), delta, adam.init(delta))
  (tokens_BxL, acq_B, accepted_B, _, _), _ = jax.lax.scan(
    update_then_decode, state, jnp.arange(1, cfg.num_updates + 1)
  )
  return (tokens_BxL, acq_B, accepted_B), {'frac_masked': jnp.mean(masked_BxL)}


def guide(
  key: PRNGKeyArray,
  graphdef: nnx.GraphDef,
  params: network.Params,
  starts_BxL: Int[Array, 'B L'],
  best_M: Float[Array, ' M'],
  *,
  cfg: GuideConfig,
) -> tuple[Int[Array, 'B L'], dict[str, Array]]:
  """`cfg.num_steps` guided steps from every start; rows are independent of each other.

  Returns:
    (the proposals, metrics: mean acquisition of the starts and of the proposals, the fraction of
    decodes accepted, the mean fraction of positions masked per step).
  """
  net = network.merge(graphdef, params)
  start_acq_B = _acquire(cfg, best_M, net(starts_BxL))
  acq_B = jnp.full_like(start_acq_B, -jnp.inf) if cfg.accept_first else start_acq_B
  step_fn = functools.partial(guided_step, key, net=net, best_M=best_M, cfg=cfg)
  carry = (starts_BxL, acq_B, jnp.zeros(starts_BxL.shape[0], jnp.int32))
  (proposals_BxL, final_acq_B, accepted_B), per_step = jax.lax.scan(step_fn, carry, jnp.arange(cfg.num_steps))
  decodes = cfg.num_steps * (cfg.num_updates + 1)
  return proposals_BxL, {
    'acquisition_start': jnp.mean(start_acq_B),
    'acquisition_proposal': jnp.mean(final_acq_B),
    'frac_decodes_accepted': jnp.mean(accepted_B) / decodes,
    'frac_masked': jnp.mean(per_step['frac_masked']),
  }
