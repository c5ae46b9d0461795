"""Codecs between edit pairs (x -> y) of state sequences and language-model tokens, and back.

`CompactCodec` (one token per state, fixed layout, jittable) is for models trained from scratch;
`TextCodec` (the reference's "<inc> [x_1, ..., x_L]" text, host-side) is for pretrained tokenizers.
"""

import dataclasses
import re
from typing import Any, Protocol

import flax.struct
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int


@flax.struct.dataclass
class PairBatch:
  """Teacher-forcing inputs for the sequences prompt(x) + target(y); T = total tokens - 1.

  Alignment: logits at input position t predict `targets_BxT[:, t]`, which is token t + 1, so
  `targets_BxT = tokens[:, 1:]` and `inputs_BxT = tokens[:, :-1]`. `loss_mask_BxT` is aligned with
  the targets: 1.0 exactly where `targets_BxT[:, t]` is a token of y or the closing EOS (so its row sum
  is the number of target tokens). `input_mask_BxT` is aligned with the inputs: True where
  `inputs_BxT[:, t]` is a real (non-pad) token, for attention; the model derives positions from it
  (real tokens counted from 0), so left padding does not shift them.
  """

  inputs_BxT: Int[Array, 'B T']
  targets_BxT: Int[Array, 'B T']
  loss_mask_BxT: Float[Array, 'B T']
  input_mask_BxT: Bool[Array, 'B T']

  @property
  def tokens(self) -> Int[Array, 'B T+1']:
    """The whole token sequences, prompt and target, [B, T + 1]."""
    xp = np if isinstance(self.inputs_BxT, np.ndarray) else jnp
    return xp.concatenate([self.inputs_BxT[:, :1], self.targets_BxT], axis=1)


@flax.struct.dataclass
class PromptBatch:
  """Prompts for generation, LEFT-padded so every row's next token goes at column T.

  `mask_BxT` is True on real tokens (the model counts positions over them, as for PairBatch).
  """

  tokens_BxT: Int[Array, 'B T']
  mask_BxT: Bool[Array, 'B T']


@flax.struct.dataclass
class Funnel:
  """Per-row validity of decoded generations, stage by stage (the reference's validity funnel).

  terminated: an EOS was generated. parsed: the tokens before the first EOS (all of them if there is
  none) form a list of integers (text: "[a, b, ...]"; compact: only state tokens). right_length: exactly L of them. in_range: the
  items are states in [0, v) (text: all parsed items; compact: the first L tokens). valid: all of
  these; only valid rows keep their sequence, the others decode to zeros.
  """

  terminated_B: Bool[Array, ' B']
  parsed_B: Bool[Array, ' B']
  right_length_B: Bool[Array, ' B']
  in_range_B: Bool[Array, ' B']
  valid_B: Bool[Array, ' B']


class Codec(Protocol):
  """What training and sampling code may rely on; both codecs implement it."""

  @property
  def num_states(self) -> int: ...

  @property
  def length(self) -> int: ...

  @property
  def vocab_size(self) -> int: ...

  @property
  def pad_id(self) -> int: ...

  @property
  def eos_id(self) -> int: ...

  @property
  def max_target_len(self) -> int: ...

  def encode_pairs(self, x_BxL: Int[ArrayLike, 'B L'], y_BxL: Int[ArrayLike, 'B L']) -> PairBatch: ...

  def encode_prompts(self, x_BxL: Int[ArrayLike, 'B L']) -> PromptBatch: ...

  def decode(self, generated_BxG: Int[ArrayLike, 'B G']) -> tuple[Int[ArrayLike, 'B L'], Funnel]: ...

  def allowed_tokens_GxV(self, num_new: int) -> Bool[Array, 'G V']: ...


def _check_sizes(num_states: int, length: int):
  if num_states < 2:
    raise ValueError(f'num_states must be >= 2, got {num_states}.')
  if length < 1:
    raise ValueError(f'length must be >= 1, got {length}.')


@dataclasses.dataclass(frozen=True)
class CompactCodec:
  """One token per state; every array has a static shape, so all methods trace inside jit or scan.

  Token ids: 0..v-1 the states, then PAD = v, BOS = v+1, INC = v+2 (the "improve this" control),
  SEP = v+3, EOS = v+4; vocab_size = v + 5. Layout: prompt [BOS, INC, x_1..x_L, SEP] (L + 3 tokens),
  target [y_1..y_L, EOS] (L + 1 tokens). No row is ever padded.
  """

  num_states: int
  length: int

  def __post_init__(self):
    _check_sizes(self.num_states, self.length)

  pad_id = property(lambda self: self.num_states)
  bos_id = property(lambda self: self.num_states + 1)
  inc_id = property(lambda self: self.num_states + 2)
  sep_id = property(lambda self: self.num_states + 3)
  eos_id = property(lambda self: self.num_states + 4)
  vocab_size = property(lambda self: self.num_states + 5)
  prompt_len = property(lambda self: self.length + 3)
  max_target_len = property(lambda self: self.length + 1)

  def encode_prompts(self, x_BxL: Int[ArrayLike, 'B L']) -> PromptBatch:
    """[BOS, INC, x_1..x_L, SEP] per row; T = L + 3, no padding."""
    x_BxL = jnp.asarray(x_BxL, jnp.int32)

    def column(token_id: int):
      return jnp.full((x_BxL.shape[0], 1), token_id, jnp.int32)

    tokens_BxT = jnp.concatenate([column(self.bos_id), column(self.inc_id), x_BxL, column(self.sep_id)], 1)
    return PromptBatch(tokens_BxT, jnp.ones(tokens_BxT.shape, bool))

  def encode_pairs(self, x_BxL: Int[ArrayLike, 'B L'], y_BxL: Int[ArrayLike, 'B L']) -> PairBatch:
    """Prompt(x) + [y_1..y_L, EOS]: 2L + 4 tokens, so T = 2L + 3; the last L + 1 targets are in the loss."""
    prompt = self.encode_prompts(x_BxL)
    y_BxL = jnp.asarray(y_BxL, jnp.int32)
    eos_Bx1 = jnp.full((y_BxL.shape[0], 1), self.eos_id, jnp.int32)
    tokens = jnp.concatenate([prompt.tokens_BxT, y_BxL, eos_Bx1], axis=1)
    shape = (tokens.shape[0], tokens.shape[1] - 1)
    # Targets t >= prompt_len - 1 are tokens prompt_len.., i.e. y_1..y_L and EOS.
    loss_mask_T = (jnp.arange(shape[1]) >= self.prompt_len - 1).astype(jnp.float32)
    return PairBatch(
      inputs_BxT=tokens[:, :-1],
      targets_BxT=tokens[:, 1:],
      loss_mask_BxT=jnp.broadcast_to(loss_mask_T, shape),
      input_mask_BxT=jnp.ones(shape, bool),
    )

  def decode(self, generated_BxG: Int[ArrayLike, 'B G']) -> tuple[Int[Array, 'B L'], Funnel]:
    """Sequences from the tokens generated after the prompt (G >= L + 1).

    Returns:
      The first L tokens as int32 states where valid, else zeros; and the per-row `Funnel`.
    """
    generated_BxG = jnp.asarray(generated_BxG, jnp.int32)
    num_new = generated_BxG.shape[1]
    if num_new < self.max_target_len:
      raise ValueError(f'Need at least L + 1 = {self.max_target_len} generated tokens, got {num_new}.')
    is_eos_BxG = generated_BxG == self.eos_id
    terminated_B = jnp.any(is_eos_BxG, axis=1)
    first_eos_B = jnp.where(terminated_B, jnp.argmax(is_eos_BxG, axis=1), num_new)
    is_state_BxG = (generated_BxG >= 0) & (generated_BxG < self.num_states)
    before_eos_BxG = jnp.arange(num_new) < first_eos_B[:, None]
    parsed_B = jnp.all(is_state_BxG | ~before_eos_BxG, axis=1)
    right_length_B = first_eos_B == self.length
    in_range_B = jnp.all(is_state_BxG[:, : self.length], axis=1)
    valid_B = terminated_B & parsed_B & right_length_B & in_range_B
    seqs_BxL = jnp.where(valid_B[:, None], generated_BxG[:, : self.length], 0)
    return seqs_BxL, Funnel(terminated_B, parsed_B, right_length_B, in_range_B, valid_B)

  def allowed_tokens_GxV(self, num_new: int) -> Bool[Array, 'G V']:
    """Constrained decoding table: row g lists the tokens allowed at generated position g.

    States for g < L, only EOS at g == L, only PAD after; every sequence it admits decodes as valid.
    """
    if num_new < self.max_target_len:
      raise ValueError(f'num_new must be >= L + 1 = {self.max_target_len}, got {num_new}.')
    g_Gx1 = jnp.arange(num_new)[:, None]
    v_1xV = jnp.arange(self.vocab_size)[None, :]
    return jnp.where(
      g_Gx1 < self.length,
      v_1xV < self.num_states,
      jnp.where(g_Gx1 == self.length, v_1xV == self.eos_id, v_1xV == self.pad_id),
    )


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
  """UTF-8 bytes as ids 0..255, then PAD = 256, BOS = 257, EOS = 258. Implements the tokenizer protocol
  of `TextCodec`."""

  pad_id: int = 256
  bos_id: int = 257
  eos_id: int = 258
  vocab_size: int = 259

  def encode(self, text: str) -> list[int]:
    return list(text.encode('utf-8'))

  def decode(self, ids: list[int]) -> str:
    """Bytes back to text; special ids are skipped."""
    return bytes(i for i in ids if 0 <= i < 256).decode('utf-8', errors='replace')


_LIST_RE = re.compile(r'\s*\[\s*([+-]?\d+(?:\s*,\s*[+-]?\d+)*)?\s*\]\s*')


@dataclasses.dataclass(frozen=True)
class TextCodec:
  """The reference's text format: prompt "<inc> [x_1, x_2, ..., x_L]\\n", target "[y_1, ..., y_L]" + EOS.

  Host-side (numpy) and variable-length: a batch is padded to its longest row (prompts on the left,
  targets on the right), so its arrays go to the device as data, never traced. `tokenizer` (default
  `ByteTokenizer()`) is any object with `encode(str) -> list[int]`, `decode(list[int]) -> str` (skipping
  special ids), and int attributes `pad_id`, `eos_id`, `vocab_size` and `bos_id` (an int, or None for
  no BOS). A Hugging Face tokenizer needs a five-line wrapper that maps these names and calls
  `decode(ids, skip_special_tokens=True)`.
  """

  num_states: int
  length: int
  tokenizer: Any = None

  def __post_init__(self):
    _check_sizes(self.num_states, self.length)
    if self.tokenizer is None:
      object.__setattr__(self, 'tokenizer', ByteTokenizer())

  pad_id = property(lambda self: self.tokenizer.pad_id)
  eos_id = property(lambda self: self.tokenizer.eos_id)
  vocab_size = property(lambda self: self.tokenizer.vocab_size)

  @property
  def max_target_len(self) -> int:
    """Tokens in the widest target (all states v - 1) + EOS, counted in bytes: exact for the byte
    tokenizer, an upper bound for byte-level BPE, where a token covers at least one byte."""
    return len(self.target_text([self.num_states - 1] * self.length).encode('utf-8')) + 1

  def prompt_text(self, x_L) -> str:
    return f'<inc> {self.target_text(x_L)}\n'

  def target_text(self, y_L) -> str:
    return '[' + ', '.join(str(int(s)) for s in y_L) + ']'

  def _prompt_ids(self, x_L) -> list[int]:
    bos = [] if self.tokenizer.bos_id is None else [self.tokenizer.bos_id]
    return bos + list(self.tokenizer.encode(self.prompt_text(x_L)))

  def _left_pad(self, rows: list[list[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.full((len(rows), width), self.pad_id, np.int32)
    real = np.zeros((len(rows), width), bool)
    for b, row in enumerate(rows):
      tokens[b, width - len(row) :] = row
      real[b, width - len(row) :] = True
    return tokens, real

  def encode_prompts(self, x_BxL: Int[ArrayLike, 'B L']) -> PromptBatch:
    """Tokenised prompts, left-padded to the longest; numpy arrays."""
    rows = [self._prompt_ids(x_L) for x_L in np.asarray(x_BxL)]
    tokens_BxT, mask_BxT = self._left_pad(rows, max(map(len, rows)))
    return PromptBatch(tokens_BxT, mask_BxT)

  def encode_pairs(self, x_BxL: Int[ArrayLike, 'B L'], y_BxL: Int[ArrayLike, 'B L']) -> PairBatch:
    """Prompts left-padded to the longest, then targets (with EOS) right-padded to the longest, so the
    first target token of every row sits at the same column; numpy arrays."""
    prompts = [self._prompt_ids(x_L) for x_L in np.asarray(x_BxL)]
    targets = [
      list(self.tokenizer.encode(self.target_text(y_L))) + [self.eos_id] for y_L in np.asarray(y_BxL)
    ]
    prompt_width = max(map(len, prompts))
    prompt_tokens, prompt_real = self._left_pad(prompts, prompt_width)
    target_width = max(map(len, targets))
    target_tokens = np.full((len(targets), target_width), self.pad_id, np.int32)
    target_real = np.zeros(target_tokens.shape, bool)
    for b, row in enumerate(targets):
      target_tokens[b, : len(row)] = row
      target_real[b, : len(row)] = True
    tokens = np.concatenate([prompt_tokens, target_tokens], axis=1)
    real = np.concatenate([prompt_real, target_real], axis=1)
    in_target = np.concatenate([np.zeros_like(prompt_real), target_real], axis=1)
    return PairBatch(
      inputs_BxT=tokens[:, :-1],
      targets_BxT=tokens[:, 1:],
      loss_mask_BxT=in_target[:, 1:].astype(np.float32),
      input_mask_BxT=real[:, :-1],
    )

  def decode(self, generated_BxG: Int[ArrayLike, 'B G']) -> tuple[Int[np.ndarray, 'B L'], Funnel]:
    """Parses each row's text up to its first EOS (the whole row if none) as "[a, b, ...]".

    Returns:
      int32 states where valid, else zeros; and the per-row `Funnel` (numpy booleans).
    """
    rows = np.asarray(generated_BxG).tolist()
    seqs_BxL = np.zeros((len(rows), self.length), np.int32)
    funnel = Funnel(*(np.zeros(len(rows), bool) for _ in range(5)))
    for b, row in enumerate(rows):
      funnel.terminated_B[b] = self.eos_id in row
      if funnel.terminated_B[b]:
        row = row[: row.index(self.eos_id)]
      match = _LIST_RE.fullmatch(self.tokenizer.decode(row))
      if match is None:
        continue
      items = [int(s) for s in match.group(1).split(',')] if match.group(1) else []
      funnel.parsed_B[b] = True
      funnel.right_length_B[b] = len(items) == self.length
      funnel.in_range_B[b] = all(0 <= s < self.num_states for s in items)
      funnel.valid_B[b] = funnel.terminated_B[b] and funnel.right_length_B[b] and funnel.in_range_B[b]
      if funnel.valid_B[b]:
        seqs_BxL[b] = items
    return seqs_BxL, funnel

  def allowed_tokens_GxV(self, num_new: int) -> Bool[Array, 'G V']:
    """Always raises: free-form text (numbers of varying width, BPE merges) has no per-position token
    table. Constrained decoding needs a fixed-layout codec such as `CompactCodec`."""
    raise ValueError(
      'TextCodec has no allowed-token table: constrained decoding needs a fixed-layout codec such as '
      'CompactCodec.'
    )
