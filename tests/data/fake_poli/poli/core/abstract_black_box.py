"""As poli.core.abstract_black_box.AbstractBlackBox.__call__ (poli-core 1.3.1): the input checks of an
aligned black box (the same assertion message), the evaluation budget, and the [b, 1] reply check."""

import numpy as np


class BudgetExhaustedException(Exception):
  pass


class AbstractBlackBox:
  def __init__(self, evaluation_budget=None):
    self.evaluation_budget = float('inf') if evaluation_budget is None else evaluation_budget
    self.num_evaluations = 0

  @property
  def info(self):
    return self.get_black_box_info()

  def __call__(self, x, context=None):
    length = self.info.get_max_sequence_length()
    if self.info.sequences_are_aligned():
      aligned = x.ndim == 2 and (length == np.inf or x.shape[1] == length)
      assert aligned, (
        'The input given is not suitable for aligned problems. This may happen because the input is not '
        'an array of strings, the input is not of shape [b, L], or the input is of shape [b, ], but the '
        'lengths of the strings are not the same.  Aligned problems, by definition, have as input arrays '
        'of the same length.'
      )
    elif x.ndim == 1:
      x = x.reshape(-1, 1)
    if self.num_evaluations + x.shape[0] > self.evaluation_budget:
      raise BudgetExhaustedException(
        f'Exhausted the evaluation budget of {self.evaluation_budget} evaluations. (tried to evaluate '
        f'{x.shape[0]}, but we have already evaluated {self.num_evaluations}/{self.evaluation_budget}).'
      )
    y = self._black_box(x, context)
    assert len(y.shape) == 2, f'len(f(x).shape)={len(y.shape)}, expected 2'
    assert x.shape[0] == y.shape[0], f'Inconsistent evaluation axis=0 x={x.shape} != black_box y={y.shape}'
    self.num_evaluations += x.shape[0]
    return y

  def terminate(self) -> None:
    pass
