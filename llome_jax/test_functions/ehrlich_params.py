"""`EhrlichParams`, one Ehrlich instance as a pytree: the transition matrix traced, the motif layout static.

Its own module so that the instance definition (`ehrlich`) and the XLA kernels (`ehrlich_kernels`) both
depend on it and neither on the other.
"""

import flax.struct
import numpy as np
from jaxtyping import Array, Float


@flax.struct.dataclass
class EhrlichParams:
  """One Ehrlich instance.

  The transition matrix is a traced leaf. Motifs, spacings, quantization and epistasis are static: they
  fix the window offsets, so XLA compiles each motif into contiguous shifted compares instead of
  gathers (one compilation per instance, which is what an optimisation run uses).
  """

  transition_matrix: Float[Array, 'V V']
  motifs: tuple[tuple[int, ...], ...] = flax.struct.field(pytree_node=False)
  spacings: tuple[tuple[int, ...], ...] = flax.struct.field(pytree_node=False)
  quantization: int = flax.struct.field(pytree_node=False)
  epistasis_factor: float = flax.struct.field(pytree_node=False)

  @property
  def num_states(self) -> int:
    return self.transition_matrix.shape[0]

  @property
  def num_motifs(self) -> int:
    return len(self.motifs)

  @property
  def motif_length(self) -> int:
    return len(self.motifs[0])

  @property
  def offsets(self) -> tuple[tuple[int, ...], ...]:
    """Position of each motif element relative to the window start: (0, cumsum(spacings))."""
    return tuple(tuple(int(o) for o in np.cumsum((0,) + gaps)) for gaps in self.spacings)

  @property
  def min_dim(self) -> int:
    """Shortest sequence that can hold every motif at its spacing (the optimum's footprint)."""
    return sum(offsets[-1] + 1 for offsets in self.offsets)
