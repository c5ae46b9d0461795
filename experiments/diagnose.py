r"""Why an LLOME run stalls: the landscape around its best labelled sequences, and where its policy ranks
the edits that would improve them, round by round.

  python -m experiments.diagnose --workdir=runs/f2_marge

For each round r (round 0: the seed data) and its best labelled sequences so far (the plateau: every
distinct labelled sequence at the best value; `--max_sequences` of them analysed, evenly spaced in the
order they were first labelled):
- landscape: how many of the substitutions at one and at two sites improve f (exhaustive, evaluated
  with the run's Ehrlich instance) and at which positions;
- policy (rounds with a checkpoint; run with `--config.keep_checkpoints` >= the number of rounds to
  keep them all): the policy as it left round r, i.e. as it enters round r+1 before training, decodes
  `--proposal_seeds` copies of each plateau sequence with the run's decoding settings (one iteration of
  the inner loop). Reported: its proposals' edit distance, feasibility and how often they improve; the
  mean token log-likelihood (the statistic label selection keeps the top 40% of) of every improving edit,
  as a percentile among the proposals, and how many improving edits the selection quantile would keep;
  and, exactly, the chance that one proposal at each of the run's temperatures is an improving 1- or
  2-site edit (summed proposal probabilities), against the rate at which a uniformly random 2-site
  substitution improves.
The Ehrlich values of proposals are computed here, for the diagnosis only; the run never saw them.

Writes WORKDIR/diagnosis.jsonl (one object per round) and WORKDIR/diagnosis.md (the table, also printed),
or --diagnosis_path.jsonl and .md.
"""

import collections
import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging

from experiments import common, llome
from experiments.configs import llome_defaults
from llome_jax import checkpoint, inner_loop, landscape, metrics_io, sharding
from llome_jax.test_functions import ehrlich

_MAX_SEQUENCES = flags.DEFINE_integer('max_sequences', 4, 'Plateau sequences analysed per round.')
_PROPOSAL_SEEDS = flags.DEFINE_integer(
  'proposal_seeds', 16, 'Copies of each plateau sequence the policy decodes (x the decoding settings).'
)
_ROUNDS = flags.DEFINE_list('rounds', None, 'Rounds to diagnose (default: every round of the run).')
_SEED = flags.DEFINE_integer('seed', 0, 'Randomness of the proposals.')
_OPENINGS = flags.DEFINE_integer(
  'openings',
  0,
  "If > 0: of each analysed plateau sequence's neutral segment copies (outer.duplication_max_length "
  'long at most) and neutral 2-site substitutions, how many (of up to this many checked) are one '
  'substitution from leaving the plateau. Seconds per sequence.',
)
# Not --output: experiments.compare defines that flag, and absl flags are global to a process.
_OUTPUT = flags.DEFINE_string(
  'diagnosis_path', None, 'Path of the outputs without suffix (default WORKDIR/diagnosis: .jsonl and .md).'
)
_CHANCE_TEMPERATURES = flags.DEFINE_list(
  'chance_temperatures',
  None,
  "Temperatures at which to compute the chance of an improving proposal (default: the run's own).",
)


def labelled_rounds(workdir: pathlib.Path) -> list[tuple[np.ndarray, np.ndarray]]:
  """(sequences, values) labelled in each round: round 0 is the seed data."""
  rounds = [np.load(workdir / 'seed_data.npz')]
  for path in sorted((workdir / 'labelled').glob('round_*.npz')):
    rounds.append(np.load(path))
  return [(np.asarray(r['sequences']), np.asarray(r['values'])) for r in rounds]


def plateau(rounds, upto: int) -> tuple[float, np.ndarray]:
  """The best value labelled in rounds 0..upto and the distinct sequences at it, first seen first."""
  seqs = np.concatenate([s for s, _ in rounds[: upto + 1]])
  values = np.concatenate([v for _, v in rounds[: upto + 1]])
  best = float(values.max())
  at_best = seqs[values == best]
  _, first = np.unique(at_best, axis=0, return_index=True)
  return best, at_best[np.sort(first)]


@dataclasses.dataclass(frozen=True)
class Centre:
  """One analysed plateau sequence and its exhaustive neighbourhoods."""

  x_L: np.ndarray
  singles: landscape.Neighbourhood
  doubles: landscape.Neighbourhood

  @property
  def improving_NxL(self) -> np.ndarray:
    return np.concatenate([self.singles.improving_NxL, self.doubles.improving_NxL])


def landscape_row(params: ehrlich.EhrlichParams, sequences: np.ndarray) -> tuple[dict, list[Centre]]:
  """How many substitutions at one and two sites improve each sequence, and where the doubles are."""
  centres = [
    Centre(x, landscape.neighbourhood(params, x, 1), landscape.neighbourhood(params, x, 2)) for x in sequences
  ]
  site_pairs = collections.Counter(
    tuple(int(i) for i in sites) for c in centres for sites in c.doubles.improving_sites_NxK
  )
  values = [
    v for c in centres for v in c.singles.improving_values_N.tolist() + c.doubles.improving_values_N.tolist()
  ]
  return {
    'improving_singles': [len(c.singles.improving_values_N) for c in centres],
    'improving_doubles': [len(c.doubles.improving_values_N) for c in centres],
    'num_singles': centres[0].singles.num_edits,
    'num_doubles': centres[0].doubles.num_edits,
    'feasible_singles': float(np.mean([c.singles.num_feasible / c.singles.num_edits for c in centres])),
    'feasible_doubles': float(np.mean([c.doubles.num_feasible / c.doubles.num_edits for c in centres])),
    'double_sites_top': [[*pair, count] for pair, count in site_pairs.most_common(5)],
    'best_reachable_value': max(values) if values else None,
  }, centres


def _proposals(key, graphdef, params, setup, centre: Centre, copies: int, shift: float) -> dict:
  """One inner-loop iteration from `copies` copies of the centre: the valid proposals' mean token
  log-likelihoods, and (for the diagnosis only) their validity, feasibility, improvement and edits."""
  cfg = dataclasses.replace(setup.loop_cfg.inner, num_iterations=1)
  gens = inner_loop.run(
    key,
    graphdef,
    params,
    jnp.tile(jnp.asarray(centre.x_L, jnp.int32)[None], (copies, 1)),
    jnp.ones(copies, bool),
    jnp.float32(shift),
    codec=setup.codec,
    cfg=cfg,
  )
  valid_R = np.asarray(gens.valid_IxR[0])
  outputs_RxL = np.asarray(gens.outputs_IxRxL[0])[valid_R]
  values_R = np.asarray(ehrlich.evaluate(setup.problem.ehrlich_params, outputs_RxL))
  return {
    'logp_R': np.asarray(gens.mean_logp_IxR[0])[valid_R],
    'frac_valid': valid_R.mean(),
    'frac_feasible': np.isfinite(values_R).mean(),
    'frac_improving': (values_R > centre.singles.value).mean(),
    'frac_copies': np.all(outputs_RxL == centre.x_L, axis=1).mean(),
    'mean_hamming': np.mean(outputs_RxL != centre.x_L),
  }


def _improving_chance(graphdef, params, setup, centre: Centre, temperatures) -> dict[str, float]:
  """At each temperature, the exact chance that one decoding proposes an improving 1- or 2-site edit."""
  improving_NxL = centre.improving_NxL
  chances = {}
  for t in temperatures:
    chance = 0.0
    if len(improving_NxL):
      x_NxL = np.tile(centre.x_L, (len(improving_NxL), 1))
      logps_N = landscape.proposal_logps(
        graphdef, params, setup.codec, x_NxL, improving_NxL, t, top_k=setup.loop_cfg.inner.top_k
      )
      chance = float(np.sum(np.exp(np.asarray(logps_N, np.float64))))
    chances[f'{t:.2f}'] = chance
  return chances


def policy_row(
  key, graphdef, params, setup, centres: list[Centre], state, round_threshold, *, copies, chance_temperatures
) -> dict:
  """What the policy proposes from each plateau sequence, and where the improving edits rank."""
  shift = float(inner_loop.collapse_shift(state.mean_hamming)) if setup.loop_cfg.temperature_scaling else 0.0
  temperatures = chance_temperatures or [t + shift for t in setup.loop_cfg.inner.temperatures]
  quantile = setup.loop_cfg.select.likelihood_quantile
  stats = collections.defaultdict(list)
  for i, centre in enumerate(centres):
    proposals = _proposals(jax.random.fold_in(key, i), graphdef, params, setup, centre, copies, shift)
    logp_R = proposals.pop('logp_R')
    for name, value in proposals.items():
      stats[name].append(value)
    stats['proposal_logp'] += list(logp_R)
    stats['chances'].append(_improving_chance(graphdef, params, setup, centre, temperatures))
    stats['blind_double_rate'].append(len(centre.doubles.improving_values_N) / centre.doubles.num_edits)
    improving_NxL = centre.improving_NxL
    if len(improving_NxL):
      x_NxL = np.tile(centre.x_L, (len(improving_NxL), 1))
      edit_logp_N = np.asarray(landscape.edit_mean_logps(graphdef, params, setup.codec, x_NxL, improving_NxL))
      stats['percentiles'] += list(100.0 * np.mean(logp_R[None, :] < edit_logp_N[:, None], axis=1))
      stats['kept'] += list(edit_logp_N >= np.quantile(logp_R, quantile))
      if round_threshold is not None:
        stats['kept_by_round_threshold'] += list(edit_logp_N >= round_threshold)
  percentiles = np.asarray(stats['percentiles'])
  return {
    # The chance that one proposal (one decoding at that temperature) is an improving 1- or 2-site
    # edit, exactly, against the chance that a uniformly random 2-site substitution improves.
    'improving_proposal_chance': {
      t: float(np.mean([c[t] for c in stats['chances']])) for t in stats['chances'][0]
    },
    'blind_double_rate': float(np.mean(stats['blind_double_rate'])),
    'proposals': copies * setup.loop_cfg.inner.rows_per_seed * len(centres),
    'temperature_shift': shift,
    **{k: float(np.mean(stats[k])) for k in ('frac_valid', 'frac_feasible', 'frac_improving', 'frac_copies')},
    'mean_hamming': float(np.mean(stats['mean_hamming'])),
    'proposal_logp_median': float(np.median(stats['proposal_logp'])),
    'improving_edits': len(percentiles),
    'improving_percentile_median': float(np.median(percentiles)) if len(percentiles) else None,
    'improving_percentile_max': float(np.max(percentiles)) if len(percentiles) else None,
    'improving_kept': int(np.sum(stats['kept'])),
    'improving_kept_by_round_threshold': int(np.sum(stats['kept_by_round_threshold']))
    if stats['kept_by_round_threshold']
    else None,
  }


def diagnose(
  workdir: str | pathlib.Path,
  *,
  rounds=None,
  max_sequences: int = 4,
  proposal_seeds: int = 16,
  chance_temperatures: list[float] | None = None,
  seed: int = 0,
  output: str | pathlib.Path | None = None,
  openings: int = 0,
) -> list[dict]:
  """The diagnosis of every round (or of `rounds`) of an LLOME workdir; writes diagnosis.jsonl/.md."""
  workdir = pathlib.Path(workdir)
  held = json.loads((workdir / 'config.json').read_text())
  config = ml_collections.ConfigDict(common.with_added_keys(held, llome_defaults.get_config().to_dict()))
  if isinstance(config.inner.temperatures, list):
    with config.unlocked():
      config.inner.temperatures = tuple(config.inner.temperatures)
  setup = llome.build_setup(config)
  if setup.problem.ehrlich_params is None:
    raise ValueError(
      f'{workdir} optimised a scorer of your own (oracle.target={config.oracle.target!r}); the diagnosis '
      'enumerates every single and double edit of the best sequences, which needs an Ehrlich function.'
    )
  labelled = labelled_rounds(workdir)
  metrics = {row['round']: row for row in metrics_io.read_jsonl(workdir / 'metrics.jsonl')}
  rounds = range(len(labelled)) if rounds is None else [int(r) for r in rounds]
  checkpoints = workdir / 'checkpoints'
  steps = set(checkpoint.all_steps(checkpoints))
  mesh = sharding.make_mesh(1)
  target = graphdef = None
  if steps & set(rounds):
    graphdef, _, state, state_sh = llome.initial_state(setup, config, mesh)
    target = checkpoint.abstract_like(state, state_sh)
  rows = []
  for r in rounds:
    best, centres_all = plateau(labelled, r)
    # Evenly spaced in the order first labelled: the oldest and the newest plateau sequences both.
    picks = np.unique(np.linspace(0, len(centres_all) - 1, min(max_sequences, len(centres_all))).round())
    row = {'round': r, 'best_value': best, 'num_plateau': len(centres_all), 'analysed': len(picks)}
    # Every plateau sequence's arrangement ((elements present, start) per motif), the commonest first.
    arrangements = collections.Counter(
      tuple(map(tuple, a.tolist()))
      for a in landscape.motif_arrangements(setup.problem.ehrlich_params, centres_all)
    )
    row['arrangements'] = [[[list(m) for m in key], count] for key, count in arrangements.most_common(3)]
    land, centres = landscape_row(setup.problem.ehrlich_params, centres_all[picks.astype(int)])
    row |= land
    if openings:
      row['openings'] = openings_row(setup, centres, openings, np.random.default_rng(seed + r))
    if r in steps:
      state, _ = checkpoint.restore(checkpoints, target, step=r)
      threshold = metrics.get(r, {}).get('likelihood_threshold')
      row['policy'] = policy_row(
        jax.random.fold_in(jax.random.key(seed), r),
        graphdef,
        state.params,
        setup,
        centres,
        state,
        threshold,
        copies=proposal_seeds,
        chance_temperatures=chance_temperatures,
      )
    logging.info('round %d: %s', r, row)
    rows.append(row)
  output = pathlib.Path(output) if output else workdir / 'diagnosis'
  metrics_io.rewrite_jsonl(output.with_suffix('.jsonl'), rows)
  table = markdown(rows)
  output.with_suffix('.md').write_text(table)
  print(table)
  return rows


def openings_row(setup, centres: list[Centre], max_checked: int, rng) -> dict:
  """For each centre, its neutral neighbours under one segment copy and under one 2-site
  substitution, and how many of those checked have an improving single substitution: whether a
  duplication step (`outer_loop.duplications`) or a substitution step leads off the plateau."""
  params = setup.problem.ehrlich_params
  out = {'copies': [], 'doubles': []}
  for centre in centres:
    copies_NxL = landscape.segment_copies(centre.x_L, setup.loop_cfg.duplication_max_length)
    doubles_NxL, _ = landscape.substitutions(centre.x_L, params.num_states, 2)
    for name, neighbours_NxL in (('copies', copies_NxL), ('doubles', doubles_NxL)):
      found = landscape.openings(params, centre.x_L, neighbours_NxL, max_checked, rng)
      out[name].append({k: v for k, v in dataclasses.asdict(found).items() if k != 'value'})
  return out


def _per_sequence(counts: list[int]) -> str:
  return ', '.join(str(c) for c in counts)


def _arrangement(row: dict) -> str:
  if not row.get('arrangements'):
    return '-'
  motifs, count = row['arrangements'][0]
  return f'{" ".join(f"{present}@{start}" for present, start in motifs)}, {count} of {row["num_plateau"]}'


def markdown(rows: list[dict]) -> str:
  lines = [
    '| round | best f | plateau seqs | improving 1-site edits (per seq) | improving 2-site edits (per seq) '
    '| top 2-site positions | proposals: Hamming, feasible, improving | improving edits: likelihood '
    'percentile (median, max) | improving edits kept by selection | chance a proposal is an improving '
    'edit (best temperature) vs a random 2-site edit | commonest motif arrangement (present@start), share |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for row in rows:
    policy = row.get('policy')
    sites = ', '.join(f'({i},{j}) x{c}' for i, j, c in row['double_sites_top'][:3]) or '-'
    if policy:
      proposals = (
        f'{policy["mean_hamming"]:.2f}, {policy["frac_feasible"]:.2f}, {policy["frac_improving"]:.3f}'
      )
      if policy['improving_edits']:
        ranks = f'{policy["improving_percentile_median"]:.0f}, {policy["improving_percentile_max"]:.0f}'
        kept = f'{policy["improving_kept"]} of {policy["improving_edits"]}'
      else:
        ranks, kept = '-', '-'
      chance = max(policy['improving_proposal_chance'].values())
      odds = f'{chance:.1e} vs {policy["blind_double_rate"]:.1e}'
    else:
      proposals = ranks = kept = odds = 'no checkpoint'
    lines.append(
      f'| {row["round"]} | {row["best_value"]:.4f} | {row["num_plateau"]} (analysed {row["analysed"]}) | '
      f'{_per_sequence(row["improving_singles"])} | {_per_sequence(row["improving_doubles"])} | {sites} | '
      f'{proposals} | {ranks} | {kept} | {odds} | {_arrangement(row)} |'
    )
  opened = [row for row in rows if row.get('openings')]
  if opened:
    lines += [
      '',
      '| round | segment copies: neutral, opening of checked (per seq) | 2-site substitutions: neutral, '
      'opening of checked (per seq) |',
      '|---|---|---|',
    ]
    for row in opened:
      cells = [
        '; '.join(f'{o["num_neutral"]}, {o["num_opening"]} of {o["num_checked"]}' for o in row['openings'][k])
        for k in ('copies', 'doubles')
      ]
      lines.append(f'| {row["round"]} | {cells[0]} | {cells[1]} |')
  return '\n'.join(lines) + '\n'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  diagnose(
    common.WORKDIR.value,
    rounds=_ROUNDS.value,
    max_sequences=_MAX_SEQUENCES.value,
    proposal_seeds=_PROPOSAL_SEEDS.value,
    chance_temperatures=[float(t) for t in _CHANCE_TEMPERATURES.value or []] or None,
    output=_OUTPUT.value,
    seed=_SEED.value,
    openings=_OPENINGS.value,
  )


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
