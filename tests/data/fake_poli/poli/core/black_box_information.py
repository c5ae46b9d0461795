"""As poli.core.black_box_information.BlackBoxInformation (the accessors the worker reads)."""

import numpy as np


class BlackBoxInformation:
  def __init__(self, name, max_sequence_length, aligned, alphabet, padding_token=''):
    self.name = name
    self.max_sequence_length = np.inf if max_sequence_length is None else max_sequence_length
    self.aligned = aligned
    self.alphabet = alphabet
    self.padding_token = padding_token

  def get_problem_name(self) -> str:
    return self.name

  def get_max_sequence_length(self):
    return self.max_sequence_length

  def sequences_are_aligned(self) -> bool:
    return self.aligned

  def get_alphabet(self):
    return self.alphabet
