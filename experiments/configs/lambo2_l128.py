"""LaMBO-2 on the paper's L=128 variant ehr_v32_l128_c4_k4_q4 (v=32, L=128, c=4, k=4, q=4; holo seed
50494), with lambo2_f2.py's CPU sizing and the GA seed data of l128_marge.py (so LLOME and LaMBO-2 start
from the same sequences).

  python -m experiments.lambo2 --config=experiments/configs/lambo2_l128.py --workdir=runs/lambo2_l128

Each guided step handles sequences 4x longer than f2's: expect about 4x f2's time a round on a CPU.
The reference draws 24 positions per step on the L=128 variants (bbo-bench's grid: 16 or 24).
"""

from experiments.configs import lambo2_f2


def get_config():
  config = lambo2_f2.get_config()
  config.test_function.name = 'ehr_v32_l128_c4_k4_q4'
  config.ga.mutation_prob = 1.1 / 128
  config.guide.num_mutations = 24
  return config
