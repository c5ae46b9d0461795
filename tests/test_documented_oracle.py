"""README's worked example of a scorer of one's own, run as a user runs it (one device, fresh processes,
the scorer file written from README's own python block): the GA and LLOME binaries both write their
outputs and end above the best initial sequence. Its own file so that pytest-xdist can run it beside
test_documented_commands.py."""

import json
import re

import pytest
from test_documented_commands import REPO, _documented, _rows, _run

POLI_PYTHON = REPO / '.venv-poli' / 'bin' / 'python'


@pytest.mark.slow
def test_readme_own_oracle(tmp_path):
  readme = (REPO / 'README.md').read_text()
  scorer = re.search(r'<!-- my-scorer -->\n```python\n(.*?)^```', readme, flags=re.MULTILINE | re.DOTALL)
  assert scorer and _documented(r'^mkdir -p runs$')
  (tmp_path / 'runs').mkdir()
  (tmp_path / 'runs' / 'my_scorer.py').write_text(scorer.group(1))
  for binary, workdir in (('ga_baseline', 'my_ga'), ('llome', 'my_llome')):
    result = _run(_documented(rf'experiments\.{binary} --config=experiments/configs/oracle_'), tmp_path)
    assert ' 1 devices' in result.stderr or '(1 devices)' in result.stderr
    best = json.loads((tmp_path / 'runs' / workdir / 'best.json').read_text())
    assert best['best_value'] > best['initial_best_value'] == pytest.approx(5 / 24), binary
    assert len(best['best_sequence']) == 24 and 'PP' not in best['best_sequence']
    rows = _rows(tmp_path / 'runs' / workdir)
    assert rows[-1]['num_evaluations'] == best['num_evaluations'] and rows[-1]['simple_regret_best'] is None


@pytest.mark.slow
@pytest.mark.skipif(not POLI_PYTHON.exists(), reason='no .venv-poli (bash benchmarks/make_poli_venv.sh)')
def test_readme_poli(tmp_path):
  """README's poli commands: aloha's x0 written as FASTA, then the GA on aloha through the bridge."""
  (tmp_path / 'runs').mkdir()
  _run(_documented(r'llome_jax\.poli_bridge x0 '), tmp_path)
  assert (tmp_path / 'runs' / 'aloha_x0.fasta').read_text().split() == ['>x0_0', 'ALOOF']
  _run(_documented(r'--workdir=runs/poli_aloha '), tmp_path)
  best = json.loads((tmp_path / 'runs' / 'poli_aloha' / 'best.json').read_text())
  assert best['best_value'] > best['initial_best_value'] == 3
  assert best['simple_regret_best'] == 5 - best['best_value']
