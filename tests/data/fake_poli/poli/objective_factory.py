"""As poli.objective_factory.create(name, *, seed=None, ..., **kwargs_for_factory) -> Problem, with these
black boxes:

  aloha        poli's own (objective_repository/aloha): L=5, A-Z, matches to ALOHA as ints [b, 1],
               x0 [['A', 'L', 'O', 'O', 'F']].
  hydrophobic  aligned protein sequences of `sequence_length` (24): the fraction of AILMFVW, -inf with
               two prolines in a row (the project's example scorer), NaN where `nan_for` occurs; x0:
               `num_x0` seeded random sequences.
  motifs       unaligned (max length inf): takes [b, 1] whole strings, counts 'AB'.
  fails        raises RuntimeError on every call, or with mode='exit' kills its process (os._exit(3))
               after a last word on stderr, when a sequence holds `trigger`.
Like poli, create announces itself with print: the worker must keep that out of its protocol.
"""

import os
import sys
from string import ascii_uppercase

import numpy as np

from poli.core.abstract_black_box import AbstractBlackBox
from poli.core.black_box_information import BlackBoxInformation
from poli.core.problem import Problem

AMINO_ACIDS = list('ARNDCEQGHILKMFPSTWYV')  # poli.core.util.proteins.defaults.AMINO_ACIDS's order.


class Aloha(AbstractBlackBox):
  def get_black_box_info(self):
    return BlackBoxInformation('aloha', 5, True, list(ascii_uppercase))

  def _black_box(self, x, context=None):
    assert x.dtype.kind == 'U', 'The input must be an array of strings.'
    return np.sum(x == np.array(list('ALOHA')), axis=1, keepdims=True)


class Hydrophobic(AbstractBlackBox):
  def __init__(self, sequence_length, nan_for, evaluation_budget):
    super().__init__(evaluation_budget)
    self.sequence_length, self.nan_for = sequence_length, nan_for

  def get_black_box_info(self):
    return BlackBoxInformation('hydrophobic', self.sequence_length, True, AMINO_ACIDS)

  def _black_box(self, x, context=None):
    values = []
    for row in x:
      sequence = ''.join(row)
      if 'PP' in sequence:
        values.append(-np.inf)
      elif self.nan_for and self.nan_for in sequence:
        values.append(np.nan)
      else:
        values.append(sum(c in 'AILMFVW' for c in sequence) / len(sequence))
    return np.array(values).reshape(-1, 1)


class Motifs(AbstractBlackBox):
  def get_black_box_info(self):
    return BlackBoxInformation('motifs', None, False, list('ABC'))

  def _black_box(self, x, context=None):
    assert x.shape[1] == 1, f'an unaligned black box takes [b, 1] whole strings, got {x.shape}'
    return np.array([[float(s.count('AB'))] for s in x[:, 0]])


class Fails(AbstractBlackBox):
  def __init__(self, mode, trigger):
    super().__init__()
    self.mode, self.trigger = mode, trigger

  def get_black_box_info(self):
    return BlackBoxInformation('fails', 3, True, list('ABC'))

  def _black_box(self, x, context=None):
    if self.mode == 'exit':
      if any(self.trigger in ''.join(row) for row in x):
        print('fake poli: segmentation fault in the assay driver', file=sys.stderr, flush=True)
        os._exit(3)
      return np.zeros((x.shape[0], 1))
    raise RuntimeError('the assay server went away')


def create(
  name,
  *,
  seed=None,
  observer_init_info=None,
  observer_name=None,
  force_isolation=False,
  batch_size=None,
  parallelize=False,
  num_workers=None,
  evaluation_budget=None,
  quiet=False,
  **kwargs_for_factory,
):
  if not quiet:
    print(f'poli 🧪: creating {name} (fake).')
  if name == 'aloha':
    return Problem(Aloha(evaluation_budget), np.array([['A', 'L', 'O', 'O', 'F']]))
  if name == 'hydrophobic':
    length = kwargs_for_factory.get('sequence_length', 24)
    rng = np.random.default_rng(seed)
    x0 = rng.choice(np.array(AMINO_ACIDS), (kwargs_for_factory.get('num_x0', 4), length))
    x0[:, 1::2] = 'S'  # No two prolines in a row: x0 is feasible.
    return Problem(Hydrophobic(length, kwargs_for_factory.get('nan_for'), evaluation_budget), x0)
  if name == 'motifs':
    return Problem(Motifs(evaluation_budget), np.array([['ABCAB'], ['CCCAB']]))
  if name == 'fails':
    mode, trigger = kwargs_for_factory.get('mode', 'raise'), kwargs_for_factory.get('trigger', 'C')
    return Problem(Fails(mode, trigger), np.array([['A', 'B', 'A']]))
  raise ValueError(f"Objective function '{name}' is not available in the repository.")
