"""A scorer of the kind `--config.oracle.target` takes, used by oracle_ga.py and oracle_llome.py.

score(sequences) -> array [len(sequences)]: the fraction of hydrophobic residues (A, I, L, M, F, V, W),
higher is better, and -inf (infeasible) for a sequence holding two prolines in a row, a stand-in for
a hard constraint of a real assay. Replace it with your own: any importable `MODULE:FUNCTION`, or
`PATH.py:FUNCTION`, with this signature.
"""

import numpy as np

HYDROPHOBIC = frozenset('AILMFVW')


def score(sequences: list[str]) -> np.ndarray:
  return np.array(
    [-np.inf if 'PP' in s else sum(c in HYDROPHOBIC for c in s) / len(s) for s in sequences], np.float32
  )
