"""The poli adapter in both directions (llome_jax/poli_bridge.py, poli_worker.py, poli_solver.py).

poli-core pins numpy<2, so it never enters this venv. Most tests run the real worker in a real
subprocess, with this venv's python as "poli's python" and a stand-in poli package on its PYTHONPATH
(tests/data/fake_poli, with poli-core 1.3.1's entry point, return types and input checks): the protocol,
the [b, L] / [b, 1] conversions, -inf, errors and shutdown are exercised for real. The solver direction
runs here too (it needs only numpy) against the real GA binary. The tests at the end run against real
poli-core in .venv-poli (bash benchmarks/make_poli_venv.sh) and skip without it.
"""

import gc
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import processes
import pytest

from llome_jax import oracle, poli_bridge, poli_solver, poli_worker

REPO = processes.REPO
FAKE_POLI = REPO / 'tests' / 'data' / 'fake_poli'
POLI_PYTHON = REPO / '.venv-poli' / 'bin' / 'python'
FAKE_ENV = {'PYTHONPATH': str(FAKE_POLI)}


def fake(name, **kwargs):
  return poli_bridge.remote_black_box(sys.executable, name, env=FAKE_ENV, **kwargs)


def gone(pid: int, within: float = 10.0) -> bool:
  """Whether process `pid` has exited (or is a zombie nobody reaped) within `within` seconds."""
  deadline = time.monotonic() + within
  while time.monotonic() < deadline:
    try:
      state = pathlib.Path(f'/proc/{pid}/stat').read_text().rpartition(')')[2].split()[0]
    except FileNotFoundError:
      return True
    if state in ('Z', 'X'):
      return True
    time.sleep(0.05)
  return False


def test_values_survive_the_protocol():
  values = np.array([1.5, -np.inf, np.inf, np.nan, 0.0, -2.0])
  encoded = json.loads(json.dumps(poli_worker.encode_values(values), allow_nan=False))  # Strict JSON.
  np.testing.assert_array_equal(poli_worker.decode_values(encoded), values)
  assert poli_worker.from_poli(np.array([list('ALOHA'), list('ALOOF')])) == ['ALOHA', 'ALOOF']
  assert poli_worker.from_poli(np.array([['ABCAB'], ['CC']])) == ['ABCAB', 'CC']
  assert poli_worker.to_poli(['ALOHA', 'ALOOF'], 'characters').shape == (2, 5)
  assert poli_worker.to_poli(['ABCAB', 'CC'], 'strings').tolist() == [['ABCAB'], ['CC']]
  with pytest.raises(ValueError, match=r'shape \(2, 3\) for 2 sequences; expected \(2, 1\): one objective'):
    poli_worker.flatten_values(np.zeros((2, 3)), 2)


def test_aloha_through_the_worker():
  with fake('aloha') as black_box:
    assert black_box.pid is None  # Nothing starts before first use.
    info = black_box.info
    assert info['name'] == 'aloha' and info['layout'] == 'characters' and info['max_sequence_length'] == 5
    assert info['poli_version'] == '1.3.1+fake'
    assert black_box.alphabet == 'ABCDEFGHIJKLMNOPQRSTUVWXYZ' and black_box.x0 == ['ALOOF']
    values = black_box(['ALOHA', 'ALOOF', 'ZZZZZ'])  # Sent as [3, 5] of characters, back as [3, 1] ints.
    assert values.dtype == np.float64 and values.tolist() == [5.0, 3.0, 0.0]
    pid = black_box.pid
    with pytest.raises(poli_bridge.PoliBridgeError) as raised:
      black_box(['ALOHAS'])  # poli's own assertion, in the worker.
    assert "poli black box 'aloha' raised AssertionError: The input given is not suitable for aligned" in str(
      raised.value
    )
    assert black_box(['ALOHA']).tolist() == [5.0] and black_box.pid == pid  # The worker stays up.
    # poli's print went to the worker's stderr, not into the protocol. A thread forwards that stream, so
    # the line can reach the tail after the replies that followed it: wait for it.
    deadline = time.monotonic() + 30
    while not any('poli 🧪: creating aloha' in line for line in black_box._stderr_tail):
      assert time.monotonic() < deadline, list(black_box._stderr_tail)
      time.sleep(0.05)
  assert gone(pid)


def test_unaligned_black_box_takes_whole_strings():
  with fake('motifs') as black_box:
    assert black_box.info['layout'] == 'strings' and black_box.x0 == ['ABCAB', 'CCCAB']
    assert black_box(['ABABAB', 'CCCCCC']).tolist() == [3.0, 0.0]  # Its [b, 1] assertion held.


def test_infeasible_and_nan_replies():
  with fake('hydrophobic', sequence_length=6, nan_for='W', seed=3) as black_box:
    values = black_box(['AAAAAA', 'APPAAA', 'AWAAAA', 'SSSSSS'])
    assert values[0] == 1.0 and values[1] == -np.inf and np.isnan(values[2]) and values[3] == 0.0
    host = oracle.HostOracle(black_box, oracle.ALPHABETS['protein'], 'poli hydrophobic')
    with pytest.raises(oracle.OracleError, match=r'returned NaN for rows 1 \(AWAAAA\)'):
      host(np.array([[0] * 6, [0, 18, 0, 0, 0, 0]]))  # Token 18 is W: the oracle's check names the row.
  with fake('hydrophobic', sequence_length=6, nan_for='W', nan_value=-np.inf) as black_box:
    assert black_box(['AWAAAA', 'AAAAAA']).tolist() == [-np.inf, 1.0]


def test_errors_name_the_black_box_and_polis_message():
  with pytest.raises(
    poli_bridge.PoliBridgeError,
    match="poli black box 'nope' raised ValueError: Objective function 'nope' is not available in the repository",
  ):
    fake('nope')(['A'])
  failing = fake('fails')
  host = oracle.HostOracle(failing, 'ABC', 'poli fails')
  with pytest.raises(oracle.OracleError) as raised:
    host(np.zeros((2, 3), np.int32))
  assert str(raised.value) == (
    "poli fails raised PoliBridgeError: poli black box 'fails' raised RuntimeError: the assay server went away"
  )
  failing.close()
  with pytest.raises(poli_bridge.PoliBridgeError, match=r'\.venv-poli.*make_poli_venv\.sh'):
    poli_bridge.remote_black_box(str(REPO / '.venv-poli-missing' / 'bin' / 'python'), 'aloha')(['ALOHA'])
  with pytest.raises(TypeError, match='create arguments must be JSON values'):
    poli_bridge.remote_black_box(sys.executable, 'aloha', seed=object())


def test_a_worker_that_dies_is_reported_and_replaced():
  with fake('fails', mode='exit', trigger='C') as black_box:
    assert black_box(['AAA', 'BBB']).tolist() == [0.0, 0.0]
    first = black_box.pid
    with pytest.raises(poli_bridge.PoliBridgeError) as raised:
      black_box(['ACA'])
    message = str(raised.value)
    assert "the poli worker for 'fails'" in message and 'exited with code 3' in message
    assert 'segmentation fault in the assay driver' in message  # Its last words, from its stderr.
    assert black_box(['BBB']).tolist() == [0.0] and black_box.pid != first  # A new worker.


def test_the_worker_stops_with_its_parent():
  black_box = fake('aloha')
  black_box(['ALOHA'])
  pid = black_box.pid
  del black_box
  gc.collect()
  assert gone(pid)  # Collected: stopped.
  parent = subprocess.Popen(
    [
      sys.executable,
      '-c',
      textwrap.dedent(f"""
        import sys, time
        from llome_jax import poli_bridge
        black_box = poli_bridge.remote_black_box(sys.executable, 'aloha', env={FAKE_ENV!r})
        black_box(['ALOHA'])
        print(black_box.pid, flush=True)
        time.sleep(60)
      """),
    ],
    cwd=REPO,
    env=processes.one_device_env(),
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    worker = int(parent.stdout.readline())
    assert not gone(worker, within=0.2)
    os.kill(parent.pid, signal.SIGKILL)  # No atexit, no finalizer: the worker sees its input close.
    assert gone(worker)
  finally:
    parent.kill()
    parent.wait()


def test_x0_as_initial_sequences(tmp_path):
  env = processes.one_device_env(PYTHONPATH=f'{REPO}{os.pathsep}{FAKE_POLI}')
  command = [sys.executable, '-m', 'llome_jax.poli_bridge', 'x0', f'--python={sys.executable}']
  out = subprocess.run(
    command
    + ['--name=hydrophobic', '--kwargs={"seed": 1, "sequence_length": 8}', f'--out={tmp_path}/x0.fasta'],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  assert '--config.oracle.alphabet=ARNDCEQGHILKMFPSTWYV' in out
  initial = oracle.read_initial_sequences(str(tmp_path / 'x0.fasta'), 'ARNDCEQGHILKMFPSTWYV')
  assert initial.tokens_NxL.shape == (4, 8) and initial.names[0] == 'x0_0'
  with fake('aloha') as black_box:
    black_box.write_initial_sequences(tmp_path / 'x0.csv', with_values=True)
  assert (tmp_path / 'x0.csv').read_text() == 'name,sequence,value\nx0_0,ALOOF,3.0\n'
  initial = oracle.read_initial_sequences(str(tmp_path / 'x0.csv'), 'ABCDEFGHIJKLMNOPQRSTUVWXYZ')
  assert initial.values_N.tolist() == [3.0]  # Labelled: the run will not score it again.


# ---------------------------------------------------------------------- The solver direction.
@pytest.fixture
def fake_poli(monkeypatch):
  """The stand-in poli, imported in this process: the solver's side needs only numpy."""
  monkeypatch.syspath_prepend(str(FAKE_POLI))
  from poli import objective_factory

  yield objective_factory
  for name in [m for m in sys.modules if m == 'poli' or m.startswith('poli.')]:
    del sys.modules[name]


def _solver(problem, workdir, y0=True, **kwargs):
  black_box, x0 = problem.black_box, problem.x0
  return poli_solver.LlomeJaxSolver(
    black_box,
    x0,
    black_box(x0) if y0 else None,
    project_python=sys.executable,
    workdir=str(workdir),
    env=processes.one_device_env(),
    **({'overrides': ['--config.ga.num_particles=32']} | kwargs),
  )


def test_solver_serves_its_black_box_to_served(fake_poli, tmp_path, monkeypatch):
  problem = fake_poli.create(name='hydrophobic', seed=0, sequence_length=6, nan_for='W')
  solver = _solver(problem, tmp_path, nan_value=-np.inf)
  assert solver.alphabet == 'ARNDCEQGHILKMFPSTWYV' and solver.layout == 'characters'
  rows = (tmp_path / 'initial.csv').read_text().splitlines()
  assert rows[0] == 'name,sequence,value' and len(rows) == 5
  command = solver.command(3)
  assert '--config.oracle.target=llome_jax.poli_bridge:served' in command
  assert '--config.ga.num_steps=3' in command and command[-1] == '--config.ga.num_particles=32'
  monkeypatch.setattr(poli_bridge, '_connection', [None])
  monkeypatch.setenv(poli_bridge.ADDRESS_ENV, solver._serve())
  monkeypatch.setenv(poli_bridge.TOKEN_ENV, solver._token)
  values = poli_bridge.served(['AAAAAA', 'APPAAA', 'AWAAAA'])  # As the binary's scorer would.
  assert values.tolist() == [1.0, -np.inf, -np.inf]  # NaN -> nan_value for the binary...
  assert np.isnan(solver.history['y'][-1][0, 0]) and len(solver.history['x']) == 4 + 3  # ...not the history.
  assert solver.history['x'][-1].tolist() == [list('AWAAAA')]
  assert problem.black_box.num_evaluations == 4 + 3
  monkeypatch.setattr(poli_bridge, '_connection', [None])
  monkeypatch.setenv(poli_bridge.TOKEN_ENV, 'not-the-token')
  with pytest.raises(poli_bridge.PoliBridgeError, match='wrong token'):
    poli_bridge.served(['AAAAAA'])
  assert problem.black_box.num_evaluations == 4 + 3
  solver.close()
  with pytest.raises(ValueError, match='the solver sets ga.num_steps'):
    _solver(problem, tmp_path / 'b', overrides=['--config.ga.num_steps=5'])


@pytest.mark.slow
def test_solver_steps_resume_the_ga(fake_poli, tmp_path):
  problem = fake_poli.create(name='hydrophobic', seed=0, sequence_length=24)
  solver = _solver(problem, tmp_path / 'steps')
  y0 = np.concatenate(solver.history['y'])
  x, y = solver.step()
  assert x.shape == (32, 24) and y.shape == (32, 1) and solver.iteration == 1
  x, y = solver.step()  # Resumes: only the new generation is scored.
  assert x.shape == (32, 24) and solver.iteration == 2
  best_x, best_y = solver.solve(max_iter=2)  # In one binary call.
  summary = solver.summary
  assert solver.iteration == summary['num_generations'] == 4
  assert summary['num_evaluations'] == 4 * 32 == len(solver.history['y']) - 4  # x0 came labelled.
  assert problem.black_box.num_evaluations == 4 + 4 * 32  # y0, then each generation once.
  check = fake_poli.create(name='hydrophobic', seed=0, sequence_length=24).black_box
  np.testing.assert_array_equal(y, check(x))
  best = np.float32(summary['best_value'])  # best.json holds the binary's float32.
  best_sequence = np.array([list(summary['best_sequence'])])
  assert np.float32(check(best_x)[0, 0]) == np.float32(check(best_sequence)[0, 0]) == best  # Ties may differ.
  assert np.float32(best_y[0]) == best > summary['initial_best_value'] == np.float32(y0.max())
  # Four generations in one run from scratch: the same evaluations, in the same order.
  fresh = _solver(fake_poli.create(name='hydrophobic', seed=0, sequence_length=24), tmp_path / 'once')
  fresh.solve(max_iter=4)
  np.testing.assert_array_equal(fresh.get_history_as_arrays()[0], solver.get_history_as_arrays()[0])
  np.testing.assert_array_equal(fresh.get_history_as_arrays()[1], solver.get_history_as_arrays()[1])
  assert fresh.summary == summary


@pytest.mark.slow
def test_solver_reports_the_black_boxs_failure(fake_poli, tmp_path):
  problem = fake_poli.create(name='hydrophobic', seed=0, sequence_length=24, evaluation_budget=4 + 20)
  solver = _solver(problem, tmp_path)
  with pytest.raises(poli_solver.SolverError) as raised:
    solver.step()  # A generation of 32 passes poli's budget of 24.
  message = str(raised.value)
  assert 'the black box raised BudgetExhaustedException: Exhausted the evaluation budget of 24' in message
  assert 'Fix the scorer and rerun the command to resume' in message  # The binary's words, from its log.
  assert solver.iteration == 0 and len(solver.history['y']) == 4


# ---------------------------------------------------------------------- Against real poli-core.
needs_poli = pytest.mark.skipif(
  not POLI_PYTHON.exists(), reason='no .venv-poli (bash benchmarks/make_poli_venv.sh)'
)


@needs_poli
def test_real_poli_black_boxes():
  with poli_bridge.remote_black_box(str(POLI_PYTHON), 'aloha') as aloha:
    assert aloha.x0 == ['ALOOF'] and aloha.alphabet == 'ABCDEFGHIJKLMNOPQRSTUVWXYZ'
    assert aloha(['ALOHA', 'ALOOF', 'ZZZZZ']).tolist() == [5.0, 3.0, 0.0]
    with pytest.raises(poli_bridge.PoliBridgeError, match="'aloha' raised AssertionError: The input given"):
      aloha(['ALOHAS'])
  ehrlich = poli_bridge.remote_black_box(
    str(POLI_PYTHON),
    'ehrlich',
    sequence_length=8,
    motif_length=2,
    n_motifs=2,
    quantization=2,
    seed=1,
    return_value_on_unfeasible=-np.inf,
  )
  with ehrlich:
    rng = np.random.default_rng(0)
    values = ehrlich(ehrlich.x0 + [''.join(rng.choice(list(ehrlich.alphabet), 8)) for _ in range(20)])
    assert np.isfinite(values[0]) and (values == -np.inf).any()  # x0 is feasible; -inf comes back.


@needs_poli
@pytest.mark.slow
def test_real_poli_aloha_as_the_oracle(tmp_path):
  (tmp_path / 'aloha.py').write_text(
    f"from llome_jax import poli_bridge\n\nscore = poli_bridge.remote_black_box({str(POLI_PYTHON)!r}, 'aloha')\n"
  )
  with poli_bridge.remote_black_box(str(POLI_PYTHON), 'aloha') as aloha:
    aloha.write_initial_sequences(tmp_path / 'x0.fasta')
    processes.run_one(
      [
        '-m',
        'experiments.ga_baseline',
        '--config=experiments/configs/oracle_ga.py',
        f'--workdir={tmp_path / "run"}',
        f'--config.oracle.target={tmp_path / "aloha.py"}:score',
        f'--config.oracle.alphabet={aloha.alphabet}',
        f'--config.oracle.initial_sequences={tmp_path / "x0.fasta"}',
        '--config.oracle.optimal_value=5',
        '--config.ga.num_particles=64',
        '--config.ga.num_steps=8',
        '--config.ga.mutation_prob=0.2',
      ]
    )
    summary = json.loads((tmp_path / 'run' / 'best.json').read_text())
    assert summary['num_evaluations'] == 1 + 8 * 64 and summary['initial_best_value'] == 3.0
    assert aloha([summary['best_sequence']]).tolist() == [summary['best_value']]
    assert summary['best_value'] >= 4.0


@needs_poli
@pytest.mark.slow
def test_real_poli_runs_the_ga_as_a_solver(tmp_path):
  script = textwrap.dedent(f"""
    import json, sys
    sys.path.insert(0, {str(REPO)!r})
    import numpy as np
    from poli import objective_factory
    from llome_jax.poli_solver import LlomeJaxSolver

    problem = objective_factory.create(name='aloha')
    f, x0 = problem.black_box, problem.x0
    solver = LlomeJaxSolver(
      f, x0, f(x0), project_python={sys.executable!r}, workdir={str(tmp_path / 'solver')!r},
      overrides=['--config.ga.num_particles=64', '--config.ga.mutation_prob=0.2'],
    )
    x, y = solver.step()
    best_x, best_y = solver.solve(max_iter=7)
    evaluations = f.num_evaluations
    best_sequence = np.array([list(solver.summary['best_sequence'])])
    print(json.dumps({{
      'step_shapes': [list(x.shape), list(y.shape)], 'step_check': f(x).ravel().tolist() == y.ravel().tolist(),
      'best_x': best_x.tolist(), 'best_y': best_y.tolist(), 'recheck': f(best_x).ravel().tolist(),
      'recheck_summary': f(best_sequence).ravel().tolist(), 'evaluations': evaluations,
      'summary': solver.summary, 'history': len(solver.history['y']),
      'jax_imported': any(m == 'jax' or m.startswith('jax.') for m in sys.modules),
      'numpy': np.__version__,
    }}))
  """)
  result = subprocess.run(
    [str(POLI_PYTHON), '-c', script],
    cwd=tmp_path,
    env=processes.one_device_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out['numpy'].startswith('1.') and not out['jax_imported']
  assert out['step_shapes'] == [[64, 5], [64, 1]] and out['step_check']
  summary = out['summary']
  assert summary['num_generations'] == 8 and summary['num_evaluations'] == 8 * 64
  assert out['history'] == 1 + 8 * 64
  assert out['evaluations'] == 1 + 8 * 64  # y0, then each generation once.
  assert out['best_y'] == [summary['best_value']] == out['recheck'] == out['recheck_summary']
  assert summary['best_value'] >= 4.0  # From ALOOF's 3.
