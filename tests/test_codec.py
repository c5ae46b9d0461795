"""Tests for llome_jax.codec: token layouts, loss masks, round trips, the validity funnel, jit, padding."""

import chex
import jax
import numpy as np
import pytest

from llome_jax import codec

# v = 4, L = 3: PAD 4, BOS 5, INC 6, SEP 7, EOS 8.
_X = np.array([[0, 3, 1], [2, 2, 0]])
_Y = np.array([[1, 3, 1], [2, 0, 0]])


def _random_pairs(num_states, length, batch=16, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, num_states, (2, batch, length))


def _target_tokens(pair: codec.PairBatch, pad_id: int, width: int) -> np.ndarray:
  """Each row's loss-masked target tokens, right-padded to `width`, as a sampler would emit them."""
  targets, mask = np.asarray(pair.targets_BxT), np.asarray(pair.loss_mask_BxT) > 0
  out = np.full((targets.shape[0], width), pad_id, np.int32)
  for b in range(targets.shape[0]):
    row = targets[b, mask[b]]
    out[b, : len(row)] = row
  return out


def _funnel(funnel: codec.Funnel) -> dict[str, list[bool]]:
  return {name: np.asarray(value).tolist() for name, value in vars(funnel).items()}


# ---------------------------------------------------------------------------------------------------
# CompactCodec


def test_compact_layout():
  c = codec.CompactCodec(num_states=4, length=3)
  assert (c.pad_id, c.bos_id, c.inc_id, c.sep_id, c.eos_id, c.vocab_size) == (4, 5, 6, 7, 8, 9)
  prompts = c.encode_prompts(_X)
  chex.assert_trees_all_equal(
    prompts.tokens_BxT, np.array([[5, 6, 0, 3, 1, 7], [5, 6, 2, 2, 0, 7]], np.int32)
  )
  assert np.all(prompts.mask_BxT)

  pair = c.encode_pairs(_X, _Y)
  tokens_0 = [5, 6, 0, 3, 1, 7, 1, 3, 1, 8]  # prompt + target, 2L + 4 tokens.
  chex.assert_trees_all_equal(pair.tokens[0], np.array(tokens_0, np.int32))
  chex.assert_trees_all_equal(pair.inputs_BxT[0], np.array(tokens_0[:-1], np.int32))
  chex.assert_trees_all_equal(pair.targets_BxT[0], np.array(tokens_0[1:], np.int32))
  # Aligned with targets: exactly y_1..y_3 and EOS.
  mask = np.asarray(pair.loss_mask_BxT)
  chex.assert_trees_all_equal(mask[0], np.array([0, 0, 0, 0, 0, 1, 1, 1, 1], np.float32))
  assert np.all(mask.sum(1) == c.max_target_len)
  chex.assert_trees_all_equal(np.asarray(pair.targets_BxT)[mask > 0].reshape(2, 4)[:, :3], _Y)
  assert np.all(pair.input_mask_BxT)
  chex.assert_trees_all_equal(pair.inputs_BxT[:, : c.prompt_len], prompts.tokens_BxT)


def test_compact_round_trip():
  c = codec.CompactCodec(num_states=32, length=32)
  x, y = _random_pairs(32, 32)
  pair = c.encode_pairs(x, y)
  seqs, funnel = c.decode(_target_tokens(pair, c.pad_id, c.max_target_len + 2))
  chex.assert_trees_all_equal(seqs, y.astype(np.int32))
  assert np.all(funnel.valid_B)
  assert pair.inputs_BxT.shape == (16, 2 * 32 + 3)


def test_compact_decode_funnel():
  c = codec.CompactCodec(num_states=4, length=3)
  eos, pad, sep = c.eos_id, c.pad_id, c.sep_id
  generated = np.array(
    [
      [1, 2, 3, eos, pad],  # valid
      [1, 2, 3, 0, eos],  # too long
      [1, 2, eos, pad, pad],  # too short
      [1, sep, 3, eos, pad],  # a special token among the states
      [1, 2, 3, 0, 1],  # no EOS
      [1, 2, 3, eos, sep],  # junk after EOS is ignored
    ]
  )
  seqs, funnel = c.decode(generated)
  assert _funnel(funnel) == {
    'terminated_B': [True, True, True, True, False, True],
    'parsed_B': [True, True, True, False, True, True],
    'right_length_B': [True, False, False, True, False, True],
    'in_range_B': [True, True, False, False, True, True],
    'valid_B': [True, False, False, False, False, True],
  }
  chex.assert_trees_all_equal(
    seqs, np.array([[1, 2, 3], [0] * 3, [0] * 3, [0] * 3, [0] * 3, [1, 2, 3]], np.int32)
  )
  with pytest.raises(ValueError, match='L \\+ 1'):
    c.decode(generated[:, :3])


def test_compact_jit_equals_eager_and_traces_once():
  c = codec.CompactCodec(num_states=8, length=5)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def encode_decode(x, y, generated):
    return c.encode_pairs(x, y), c.encode_prompts(x), c.decode(generated)

  for seed in range(3):
    x, y = _random_pairs(8, 5, batch=4, seed=seed)
    generated = np.random.default_rng(seed).integers(0, c.vocab_size, (4, 7))
    generated[0, :6] = [*y[0], c.eos_id]
    jitted = encode_decode(x, y, generated)
    chex.assert_trees_all_equal(jitted, (c.encode_pairs(x, y), c.encode_prompts(x), c.decode(generated)))
    assert bool(jitted[2][1].valid_B[0])


def test_compact_allowed_tokens():
  c = codec.CompactCodec(num_states=4, length=3)
  allowed = np.asarray(c.allowed_tokens_GxV(6))
  assert allowed.shape == (6, 9) and allowed.dtype == bool
  states_only = [True] * 4 + [False] * 5
  eos_only = [False] * 8 + [True]
  pad_only = [False] * 4 + [True] + [False] * 4
  assert allowed.tolist() == [states_only] * 3 + [eos_only] + [pad_only] * 2
  # Any path through the table decodes as valid.
  rng = np.random.default_rng(0)
  generated = np.array([[rng.choice(np.flatnonzero(row)) for row in allowed] for _ in range(8)])
  assert np.all(c.decode(generated)[1].valid_B)
  with pytest.raises(ValueError):
    c.allowed_tokens_GxV(3)


# ---------------------------------------------------------------------------------------------------
# TextCodec


def test_byte_tokenizer():
  tok = codec.ByteTokenizer()
  assert tok.encode('[0, 3]') == [91, 48, 44, 32, 51, 93]
  assert tok.decode([tok.bos_id, *tok.encode('<inc> [1]'), tok.pad_id]) == '<inc> [1]'
  assert tok.vocab_size == 259


def test_text_layout():
  c = codec.TextCodec(num_states=4, length=3)
  tok = c.tokenizer
  assert c.prompt_text(_X[0]) == '<inc> [0, 3, 1]\n'
  prompts = c.encode_prompts(_X[:1])
  assert prompts.tokens_BxT[0].tolist() == [tok.bos_id, *tok.encode('<inc> [0, 3, 1]\n')]
  assert tok.decode(prompts.tokens_BxT[0].tolist()) == '<inc> [0, 3, 1]\n'

  pair = c.encode_pairs(_X[:1], _Y[:1])
  expected = [tok.bos_id, *tok.encode('<inc> [0, 3, 1]\n'), *tok.encode('[1, 3, 1]'), tok.eos_id]
  assert pair.tokens[0].tolist() == expected
  assert pair.inputs_BxT[0].tolist() == expected[:-1] and pair.targets_BxT[0].tolist() == expected[1:]
  # Aligned with targets: the 9 characters of "[1, 3, 1]" and EOS.
  mask = pair.loss_mask_BxT[0]
  num_prompt = len(expected) - 10
  assert mask.tolist() == [0.0] * (num_prompt - 1) + [1.0] * 10
  assert pair.targets_BxT[0][mask > 0].tolist() == [*tok.encode('[1, 3, 1]'), tok.eos_id]
  assert c.max_target_len == 10


def test_text_round_trip():
  c = codec.TextCodec(num_states=32, length=8)
  x, y = _random_pairs(32, 8)
  pair = c.encode_pairs(x, y)
  seqs, funnel = c.decode(_target_tokens(pair, c.pad_id, c.max_target_len + 3))
  chex.assert_trees_all_equal(seqs, y.astype(np.int32))
  assert np.all(funnel.valid_B)
  # The prompt part of each pair is the prompt batch.
  prompts = c.encode_prompts(x)
  width = prompts.tokens_BxT.shape[1]
  chex.assert_trees_all_equal(pair.inputs_BxT[:, :width], prompts.tokens_BxT)
  chex.assert_trees_all_equal(pair.input_mask_BxT[:, :width], prompts.mask_BxT)


def test_text_padding_with_numbers_of_different_width():
  c = codec.TextCodec(num_states=16, length=2)
  tok = c.tokenizer
  x = np.array([[3, 3], [13, 13]])
  y = np.array([[13, 3], [3, 3]])
  prompts = c.encode_prompts(x)
  # "<inc> [3, 3]\n" is two bytes shorter than "<inc> [13, 13]\n": two pads on the left.
  assert prompts.tokens_BxT.shape == (2, 1 + len('<inc> [13, 13]\n'))
  assert prompts.tokens_BxT[0, :2].tolist() == [tok.pad_id] * 2
  assert prompts.mask_BxT.tolist()[0] == [False] * 2 + [True] * 14 and np.all(prompts.mask_BxT[1])
  assert prompts.tokens_BxT[0, 2] == tok.bos_id and prompts.tokens_BxT[:, -1].tolist() == [10, 10]
  assert tok.decode(prompts.tokens_BxT[0].tolist()) == '<inc> [3, 3]\n'

  pair = c.encode_pairs(x, y)
  width = prompts.tokens_BxT.shape[1]
  # Targets start at the same column in every row; the shorter one is right-padded and masked out.
  assert pair.loss_mask_BxT.sum(1).tolist() == [len('[13, 3]') + 1, len('[3, 3]') + 1]
  assert np.all(pair.loss_mask_BxT[:, : width - 1] == 0) and np.all(pair.loss_mask_BxT[:, width - 1] == 1)
  assert pair.targets_BxT[1, -1] == tok.pad_id and pair.loss_mask_BxT[1, -1] == 0
  assert pair.inputs_BxT[1, -1] == tok.eos_id and pair.input_mask_BxT[1, -1]  # EOS is real, pad follows.
  assert pair.input_mask_BxT[0].tolist() == [False] * 2 + [True] * (pair.inputs_BxT.shape[1] - 2)


def test_text_decode_funnel():
  c = codec.TextCodec(num_states=4, length=3)
  tok = c.tokenizer

  def row(text, eos=True, width=16):
    ids = tok.encode(text) + ([tok.eos_id] if eos else [])
    return ids + [tok.pad_id] * (width - len(ids))

  generated = np.array(
    [
      row('[1, 2, 3]'),  # valid
      row('[1, 2]'),  # wrong length
      row('[1, 2, 3, 0]'),  # wrong length
      row('[1, 4, 3]'),  # out of range
      row('[1, 2, 3]', eos=False),  # missing EOS
      row('[1, 2 3]'),  # unparsable
      row('1, 2, 3'),  # unparsable
      row('[1,2,  3] '),  # whitespace is tolerated
    ]
  )
  seqs, funnel = c.decode(generated)
  assert _funnel(funnel) == {
    'terminated_B': [True, True, True, True, False, True, True, True],
    'parsed_B': [True, True, True, True, True, False, False, True],
    'right_length_B': [True, False, False, True, True, False, False, True],
    'in_range_B': [True, True, True, False, True, False, False, True],
    'valid_B': [True, False, False, False, False, False, False, True],
  }
  expected = np.zeros((8, 3), np.int32)
  expected[[0, 7]] = [1, 2, 3]
  chex.assert_trees_all_equal(seqs, expected)


def test_text_allowed_tokens_raises():
  with pytest.raises(ValueError, match='CompactCodec'):
    codec.TextCodec(num_states=4, length=3).allowed_tokens_GxV(10)


def test_codecs_share_structure():
  x, y = _random_pairs(4, 3, batch=2)
  compact, text = codec.CompactCodec(4, 3), codec.TextCodec(4, 3)
  for c in (compact, text):
    pair = c.encode_pairs(x, y)
    assert jax.tree.structure(pair) == jax.tree.structure(compact.encode_pairs(x, y))
    for leaf in jax.tree.leaves(pair):
      assert leaf.shape == pair.inputs_BxT.shape
  assert jax.tree.structure(text.encode_prompts(x)) == jax.tree.structure(compact.encode_prompts(x))
