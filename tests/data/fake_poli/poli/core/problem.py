"""As poli.core.problem.Problem: what objective_factory.create returns since poli 1.0."""

import numpy as np


class Problem:
  def __init__(self, black_box, x0: np.ndarray):
    if not isinstance(x0, np.ndarray):
      raise ValueError('x0 must be a numpy array.')
    self.black_box = black_box
    self.x0 = x0
