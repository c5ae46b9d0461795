"""The user-oracle pieces: alphabets, initial-sequence files, import paths, reply checks, the jitted
bridge (rows outside the mask never reach the scorer; one call per batch on 8 devices) and the config
checks that run before any work."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import oracle_scorers
import pytest

from experiments import common
from experiments.configs import ga_ehrlich, oracle_ga
from llome_jax import oracle, sharding

PROTEIN = oracle.ALPHABETS['protein']


def test_alphabets():
  assert oracle.resolve_alphabet('protein') == 'ACDEFGHIKLMNPQRSTVWY'
  assert oracle.resolve_alphabet('dna') == 'ACGT'
  assert oracle.resolve_alphabet('01') == '01'
  for bad, message in (('', 'is empty'), ('ACGA', r"repeats the characters \['A'\]"), ('A', 'fewer than 2')):
    with pytest.raises(ValueError, match=message):
      oracle.resolve_alphabet(bad)


def test_fasta_with_wrapped_lines_and_lower_case(tmp_path):
  path = tmp_path / 'start.fa'
  path.write_text('; a comment\n>one first\nacgt\nAC\n\n>two\nTTGG\nCA\n')
  initial = oracle.read_initial_sequences(str(path), 'ACGT')
  np.testing.assert_array_equal(initial.tokens_NxL, [[0, 1, 2, 3, 0, 1], [3, 3, 2, 2, 1, 0]])
  assert initial.names == ('one first', 'two') and np.isnan(initial.values_N).all()
  assert oracle.decode(initial.tokens_NxL, 'ACGT') == ['ACGTAC', 'TTGGCA']


def test_csv_values_are_labels_and_empty_cells_are_not(tmp_path):
  path = tmp_path / 'start.csv'
  path.write_text('sequence,value,name\nACGT,0.5,x\nTTTT,,y\nGGGG,-inf,z\n')
  initial = oracle.read_initial_sequences(str(path), 'ACGT')
  np.testing.assert_array_equal(initial.labelled_N, [True, False, True])
  assert initial.values_N[0] == 0.5 and initial.values_N[2] == -np.inf and initial.names == ('x', 'y', 'z')


@pytest.mark.parametrize(
  'text, suffix, message',
  [
    ('>a\nACGT\n>b\nACG\n', '.fasta', "record 'b' has length 3, the first record 'a' has 4"),
    ('>a\nACGT\n>b\nACNT\n', '.fasta', "record 'b', position 3: 'N' is not in the alphabet 'ACGT'"),
    ('  \n', '.fasta', 'is empty'),
    ('ACGT\n>a\nACGT\n', '.fasta', 'sequence data before the first ">" header'),
    ('>a\n>b\nACGT\n', '.fasta', "record 'a' is an empty sequence"),
    ('seq,value\nACGT,1\n', '.csv', 'needs a "sequence" column'),
    ('sequence,value\nACGT,high\n', '.csv', "line 2: value 'high' is not a number"),
    ('sequence,value\nACGT,nan\n', '.csv', "line 2: value 'nan'"),
    ('sequence\n', '.csv', 'holds no sequence'),
  ],
)
def test_bad_initial_sequences_name_the_record(tmp_path, text, suffix, message):
  path = tmp_path / f'start{suffix}'
  path.write_text(text)
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
    oracle.read_initial_sequences(str(path), 'ACGT')


def test_import_paths(tmp_path):
  assert oracle.load_target('oracle_scorers:recorded') is oracle_scorers.recorded
  script = tmp_path / 'mine.py'
  script.write_text('def score(sequences):\n  return [len(s) for s in sequences]\n')
  assert oracle.load_target(f'{script}:score')(['AB', 'C']) == [2, 1]
  for target, message in (
    ('oracle_scorers', 'is not MODULE:FUNCTION'),
    ('no_such_module_here:score', "cannot import 'no_such_module_here'"),
    ('oracle_scorers:missing', "has no attribute 'missing'"),
    ('oracle_scorers:calls', "'calls' is not callable"),
    (f'{tmp_path}/absent.py:score', 'is not a file'),
  ):
    with pytest.raises(ValueError, match=message):
      oracle.load_target(target)


@pytest.mark.parametrize(
  'reply, message',
  [
    (np.zeros((3, 1)), r'returned shape \(3, 1\) for 3 sequences; expected \(3,\)'),
    (np.array(['a', 'b', 'c']), 'returned dtype <U1, not numbers'),
    (np.array([0.1, np.nan, np.nan]), r'returned NaN for rows 1 \(CC\), 2 \(GG\)'),
    (np.array([0.1, np.inf, 0.0]), r'returned \+inf for rows 1 \(CC\)'),
  ],
)
def test_bad_replies_are_refused(reply, message):
  with pytest.raises(oracle.OracleError, match=message):
    oracle.check_scores(reply, ['AA', 'CC', 'GG'])


def test_jitted_scorer_sees_only_masked_rows_once_per_batch_on_eight_devices():
  oracle_scorers.reset()
  host = oracle.HostOracle(oracle_scorers.recorded, PROTEIN)
  evaluate = host.jit_objective()
  mesh = sharding.make_mesh(8)
  tokens = np.random.default_rng(0).integers(0, 20, (16, 6)).astype(np.int32)
  where = np.arange(16) % 3 == 0

  @jax.jit
  def twice(x, w):  # Two batches inside one scanned program.
    return jax.lax.scan(lambda c, _: (c, evaluate(x, w)), 0, length=2)[1]

  values = jax.block_until_ready(twice(jax.device_put(tokens, sharding.leading_axis(mesh)), where))
  strings = oracle.decode(tokens, PROTEIN)
  assert oracle_scorers.calls == [[s for s, w in zip(strings, where, strict=True) if w]] * 2
  want = np.where(where, np.asarray(oracle_scorers.recorded(strings)), -np.inf)
  np.testing.assert_array_equal(values, np.stack([want, want]))
  assert host.num_scored == 2 * where.sum()


def test_a_failing_scorer_is_kept_and_not_called_again_until_raised():
  """Raising inside the compiled program would leave the other devices of a mesh waiting at their next
  collective (XLA then aborts the process); the failure is kept and raised after the program."""
  oracle_scorers.reset(fail_after_batches=1)
  host = oracle.HostOracle(oracle_scorers.recorded, PROTEIN, name='mine')
  evaluate = jax.jit(lambda x: jax.lax.scan(lambda c, _: (c, host.jit_objective()(x)), 0, length=3)[1])
  values = jax.block_until_ready(evaluate(jnp.zeros((4, 3), jnp.int32)))
  assert len(oracle_scorers.calls) == 1 and np.all(values[1:] == -np.inf)
  with pytest.raises(
    oracle.OracleError, match='mine raised ConnectionError: the assay server went away rerun'
  ):
    host.raise_if_failed('rerun')
  host.raise_if_failed('nothing kept now')
  bad = oracle.HostOracle(oracle_scorers.wrong_shape, PROTEIN, name='mine')
  bad.masked(np.zeros((4, 3), np.int32), np.ones(4, bool))
  with pytest.raises(oracle.OracleError, match=r'mine: the scorer returned shape \(4, 1\)'):
    bad.raise_if_failed('')


def _oracle_config(**changes) -> ml_collections.ConfigDict:
  config = oracle_ga.get_config()
  config.update_from_flattened_dict(changes)
  return config


def test_problem_of_a_scorer():
  problem = common.resolve_problem(_oracle_config(), ga_ehrlich.get_config())
  assert (problem.num_states, problem.dim, problem.initial_KxL.shape) == (20, 24, (16, 24))
  assert math.isnan(problem.optimal_value) and problem.value_floor == -math.inf
  assert np.isnan(float(problem.regret(jnp.float32(0.5))))
  known = common.resolve_problem(_oracle_config(**{'oracle.optimal_value': 1.0}), ga_ehrlich.get_config())
  assert float(known.regret(jnp.float32(-0.5))) == 1.5  # A scorer's values are not floored at 0.


@pytest.mark.parametrize(
  'changes, message',
  [
    ({'test_function.name': 'ehr_v32_l128_c4_k4_q4'}, r"\['test_function.name'\] are set too"),
    ({'oracle.initial_sequences': ''}, 'oracle.initial_sequences is empty'),
    ({'oracle.alphabet': 'ACGT'}, "'Y' is not in the alphabet 'ACGT'"),
    ({'oracle.target': '', 'oracle.initial_sequences': ''}, r"\['oracle.alphabet'\] are only read with"),
  ],
)
def test_scorer_config_errors(changes, message):
  with pytest.raises(ValueError, match=message):
    common.resolve_problem(_oracle_config(**changes), ga_ehrlich.get_config())
