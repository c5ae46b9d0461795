"""The landscape around a sequence: every substitution at one or two sites, evaluated, and the improving
feasible ones; and how a policy ranks given edits against its own proposals. What `experiments.diagnose`
reports to show why an optimiser stalls on a plateau. Exhaustive: at f2's size (L=32, v=32) a sequence has
992 single and 476,656 double substitutions.
"""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from llome_jax import codec as codec_lib
from llome_jax import model as model_lib
from llome_jax import sampling, sharding, train
from llome_jax.test_functions import ehrlich


def substitutions(x_L: np.ndarray, num_states: int, num_sites: int) -> tuple[np.ndarray, np.ndarray]:
  """Every sequence that differs from `x_L` at exactly `num_sites` positions, in a fixed order.

  Returns:
    The sequences [N, L] and their changed positions [N, num_sites] (ascending), where
    N = C(L, num_sites) * (num_states - 1) ** num_sites.
  """
  x_L = np.asarray(x_L)
  length = x_L.shape[0]
  sites_SxK = np.asarray(list(itertools.combinations(range(length), num_sites)), np.int32).reshape(
    -1, num_sites
  )
  # Token offsets 1..v-1 added modulo v run over every token but the current one.
  offsets_OxK = np.asarray(list(itertools.product(range(1, num_states), repeat=num_sites)), np.int32)
  num_sets, num_offsets = sites_SxK.shape[0], offsets_OxK.shape[0]
  sites_NxK = np.repeat(sites_SxK, num_offsets, axis=0)
  offsets_NxK = np.tile(offsets_OxK, (num_sets, 1))
  edits_NxL = np.tile(x_L.astype(np.int32), (sites_NxK.shape[0], 1))
  rows_N = np.arange(sites_NxK.shape[0])[:, None]
  edits_NxL[rows_N, sites_NxK] = (x_L[sites_NxK] + offsets_NxK) % num_states
  return edits_NxL.astype(x_L.dtype), sites_NxK


def motif_arrangements(params: ehrlich.EhrlichParams, seqs_NxL: np.ndarray) -> np.ndarray:
  """Where each sequence holds each motif: at the placement with the most of its elements present
  (the earliest start among ties), how many elements that is and where it starts. Ehrlich's motif
  presence is the maximum over placements, so two sequences of equal f can hold their motifs in
  different places; a plateau whose sequences all share one arrangement is a single trap.

  Returns:
    int32 [N, c, 2]: (elements present, start position) of each motif c.
  """
  seqs_NxL = np.asarray(seqs_NxL)
  out = np.zeros((seqs_NxL.shape[0], len(params.motifs), 2), np.int32)
  for m, (motif, gaps) in enumerate(zip(params.motifs, params.spacings, strict=True)):
    offsets_K = np.concatenate([[0], np.cumsum(gaps)]).astype(np.int64)
    starts_S = np.arange(seqs_NxL.shape[1] - offsets_K[-1])
    present_NxS = (seqs_NxL[:, starts_S[:, None] + offsets_K[None]] == np.asarray(motif)).sum(-1)
    best_N = present_NxS.argmax(axis=1)  # The first maximum: the earliest start.
    out[:, m] = np.stack([present_NxS[np.arange(len(best_N)), best_N], starts_S[best_N]], axis=1)
  return out


@dataclasses.dataclass(frozen=True)
class Neighbourhood:
  """The substitutions of one sequence at `num_sites` sites and the improving feasible ones."""

  value: float  # f of the centre.
  num_sites: int
  num_edits: int
  num_feasible: int
  improving_NxL: np.ndarray  # The improving edits (feasible by definition: infeasible is -inf) ...
  improving_values_N: np.ndarray  # ... their values ...
  improving_sites_NxK: np.ndarray  # ... and the positions each changes.


def neighbourhood(params: ehrlich.EhrlichParams, x_L: np.ndarray, num_sites: int) -> Neighbourhood:
  """Evaluates every substitution of `x_L` at `num_sites` sites (1 or 2 at f2's size) exactly."""
  edits_NxL, sites_NxK = substitutions(x_L, params.num_states, num_sites)
  values_N = np.asarray(ehrlich.evaluate(params, edits_NxL))
  value = float(ehrlich.evaluate(params, np.asarray(x_L)[None])[0])
  improving_N = values_N > value
  return Neighbourhood(
    value=value,
    num_sites=num_sites,
    num_edits=len(values_N),
    num_feasible=int(np.sum(np.isfinite(values_N))),
    improving_NxL=edits_NxL[improving_N],
    improving_values_N=values_N[improving_N],
    improving_sites_NxK=sites_NxK[improving_N],
  )


def segment_copies(x_L: np.ndarray, max_length: int) -> np.ndarray:
  """Every distinct sequence `x_L` becomes when a segment of it, 2 to `max_length` long (at most L - 1),
  is copied over another place of it (from `x_L` as it was), `x_L` itself left out: the reach of one
  `outer_loop.duplications` step, in a fixed order."""
  x_L = np.asarray(x_L)
  length = x_L.shape[0]
  rows = []
  for size in range(2, min(max_length, length - 1) + 1):
    starts = np.arange(length - size + 1)
    source_S, dest_S = np.repeat(starts, len(starts)), np.tile(starts, len(starts))
    copies_SxL = np.tile(x_L, (len(source_S), 1))
    offsets_T = np.arange(size)
    rows_S = np.arange(len(source_S))[:, None]
    copies_SxL[rows_S, dest_S[:, None] + offsets_T] = x_L[source_S[:, None] + offsets_T]
    rows.append(copies_SxL)
  copies_NxL = np.unique(np.concatenate(rows), axis=0)
  return copies_NxL[np.any(copies_NxL != x_L, axis=1)]


def opening(params: ehrlich.EhrlichParams, seqs_NxL: np.ndarray, value: float) -> np.ndarray:
  """Whether each sequence has a feasible single substitution whose f exceeds `value`: run on the
  neutral neighbours of a plateau sequence (f = `value`), which of them are one substitution from
  leaving the plateau."""
  out = np.zeros(len(seqs_NxL), bool)
  for i, y_L in enumerate(np.asarray(seqs_NxL)):
    edits_NxL, _ = substitutions(y_L, params.num_states, 1)
    out[i] = np.any(np.asarray(ehrlich.evaluate(params, edits_NxL)) > value)
  return out


@dataclasses.dataclass(frozen=True)
class Openings:
  """How the neutral neighbours of one plateau sequence, under one kind of step, open the plateau."""

  value: float  # f of the centre.
  num_steps: int  # Distinct neighbours the step reaches.
  num_feasible: int
  num_improving: int  # Better than the centre at once.
  num_neutral: int  # As good as the centre ...
  num_checked: int  # ... of which this many (all, or a sample) were checked for ...
  num_opening: int  # ... an improving single substitution.


def openings(
  params: ehrlich.EhrlichParams, x_L: np.ndarray, neighbours_NxL: np.ndarray, max_checked: int, rng
) -> Openings:
  """Evaluates `neighbours_NxL` of plateau sequence `x_L` and checks up to `max_checked` of the neutral
  ones (a uniform sample when there are more) for an improving single substitution (`opening`)."""
  value = float(ehrlich.evaluate(params, np.asarray(x_L)[None])[0])
  values_N = np.asarray(ehrlich.evaluate(params, neighbours_NxL))
  neutral_NxL = neighbours_NxL[values_N == value]
  if len(neutral_NxL) > max_checked:
    neutral_NxL_checked = neutral_NxL[rng.choice(len(neutral_NxL), max_checked, replace=False)]
  else:
    neutral_NxL_checked = neutral_NxL
  return Openings(
    value=value,
    num_steps=len(values_N),
    num_feasible=int(np.sum(np.isfinite(values_N))),
    num_improving=int(np.sum(values_N > value)),
    num_neutral=len(neutral_NxL),
    num_checked=len(neutral_NxL_checked),
    num_opening=int(np.sum(opening(params, neutral_NxL_checked, value))),
  )


def edit_mean_logps(
  graphdef: nnx.GraphDef,
  params: model_lib.Params,
  codec: codec_lib.CompactCodec,
  x_NxL: Int[Array, 'N L'],
  y_NxL: Int[Array, 'N L'],
  *,
  rows: int = 1024,
) -> Float[Array, ' N']:
  """Mean token log-likelihood of each edit x -> y under the policy, by teacher forcing: the statistic
  LLOME ranks generations and selects labels by (`sampling.Samples.mean_logp` of a generation of y)."""

  @jax.jit
  def run(x_NxL, y_NxL):
    def chunk(_, xy):
      summed_B, count_B = train.sequence_logps(graphdef, params, codec.encode_pairs(*xy))
      return summed_B / jnp.maximum(count_B, 1)

    return sharding.chunked_map(chunk, (x_NxL, y_NxL), rows=rows)

  return run(jnp.asarray(x_NxL, jnp.int32), jnp.asarray(y_NxL, jnp.int32))


def proposal_logps(
  graphdef: nnx.GraphDef,
  params: model_lib.Params,
  codec: codec_lib.CompactCodec,
  x_NxL: Int[Array, 'N L'],
  y_NxL: Int[Array, 'N L'],
  temperature: float,
  *,
  top_k: int = 0,
  rows: int = 1024,
) -> Float[Array, ' N']:
  """log P(the sampler proposes y from x) at `temperature` with constrained decoding: the summed
  log-probabilities of y's tokens and the closing EOS under the distribution `sampling.sample` draws
  from (allowed tokens, top-k, tempered). exp of it, summed over a set of edits, is the chance that one
  proposal is one of them."""
  allowed_GxV = codec.allowed_tokens_GxV(codec.max_target_len)
  first = codec.prompt_len - 1  # Targets are tokens[1:]: y starts right after the prompt.

  @jax.jit
  def run(x_NxL, y_NxL):
    def chunk(_, xy):
      pairs = codec.encode_pairs(*xy)
      logits_BxTxV, _ = model_lib.apply(graphdef, params, pairs.inputs_BxT, pairs.input_mask_BxT)
      logits_BxGxV = logits_BxTxV[:, first : first + codec.max_target_len].astype(jnp.float32)
      batch, num_new, vocab = logits_BxGxV.shape
      _, tempered = sampling.filtered_logits(
        logits_BxGxV.reshape(-1, vocab),
        jnp.broadcast_to(allowed_GxV, logits_BxGxV.shape).reshape(-1, vocab),
        jnp.full(batch * num_new, temperature, jnp.float32),
        top_k=top_k,
      )
      logps_BxGxV = jax.nn.log_softmax(tempered.reshape(batch, num_new, vocab), axis=-1)
      targets_BxG = pairs.targets_BxT[:, first : first + codec.max_target_len]
      return jnp.sum(jnp.take_along_axis(logps_BxGxV, targets_BxG[..., None], axis=-1)[..., 0], axis=-1)

    return sharding.chunked_map(chunk, (x_NxL, y_NxL), rows=rows)

  return run(jnp.asarray(x_NxL, jnp.int32), jnp.asarray(y_NxL, jnp.int32))
