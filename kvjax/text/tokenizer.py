"""The prompt tokenizer (spec §6.1): Hugging Face's SentencePiece `T5Tokenizer`, legacy mode, as the
reference loads it for google/flan-ul2, over a SentencePiece model file the user supplies (`spiece.model`).

A prompt becomes its pieces' ids, cut to `max_length - 1`, then EOS, right-padded with the pad id to
`max_length`; the attention mask is 1 on every real token including EOS. Special-token spellings typed in
a prompt (`</s>`, `<pad>`, `<unk>`, `<extra_id_N>`) become those tokens, as in Hugging Face.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Sequence

import numpy as np
import sentencepiece

EOS, PAD, UNK = "</s>", "<pad>", "<unk>"


@dataclasses.dataclass(frozen=True)
class TokenizedText:
  input_ids: np.ndarray  # (B, max_length) int32, right-padded with the pad id
  attention_mask: np.ndarray  # (B, max_length) int32, 1 on real tokens (EOS included), 0 on padding


def pad_batch(token_ids: Sequence[Sequence[int]], max_length: int, pad_id: int) -> TokenizedText:
  """Right-pads each row of ids (at most `max_length`) with `pad_id`; the mask is 1 on the given ids."""
  input_ids = np.full((len(token_ids), max_length), pad_id, np.int32)
  attention_mask = np.zeros((len(token_ids), max_length), np.int32)
  for row, ids in enumerate(token_ids):
    input_ids[row, : len(ids)] = ids
    attention_mask[row, : len(ids)] = 1
  return TokenizedText(input_ids, attention_mask)


class T5Tokenizer:
  """Tokenizes batches of prompts to fixed-length ids and masks (128 tokens for Kandinsky Video 1.1)."""

  def __init__(self, model_file: str | os.PathLike, max_length: int = 128, extra_ids: int = 100):
    path = os.fspath(model_file)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: no such SentencePiece model file (google/flan-ul2's spiece.model)")
    processor = sentencepiece.SentencePieceProcessor()
    try:
      processor.Load(path)
    except (RuntimeError, OSError) as e:
      raise ValueError(f"{path}: not a SentencePiece model: {e}") from None
    if max_length < 1:
      raise ValueError(f"max_length must be at least 1 (room for EOS), got {max_length}")
    self._processor = processor
    self.max_length = max_length
    special = {}
    for piece in (PAD, EOS, UNK):
      token_id = processor.piece_to_id(piece)
      if processor.id_to_piece(token_id) != piece:
        raise ValueError(f"{path}: the SentencePiece model has no {piece} piece: not a T5 vocabulary")
      special[piece] = token_id
    self.pad_id, self.eos_id = special[PAD], special[EOS]
    # Sentinels follow the SentencePiece vocabulary, numbered downwards: <extra_id_0> is the last id.
    size = processor.get_piece_size()
    self.vocab_size = size + extra_ids  # ids are below this: the pieces, then the sentinels
    self._sentinels = {f"<extra_id_{i}>": size - 1 + extra_ids - i for i in range(extra_ids)}
    special.update(self._sentinels)
    self._special = special
    # Longest first, so that <extra_id_10> is never read as <extra_id_1> followed by "0>".
    spellings = sorted(special, key=len, reverse=True)
    self._splitter = re.compile("(" + "|".join(re.escape(s) for s in spellings) + ")")

  def encode(self, prompt: str) -> list[int]:
    """One prompt's ids with EOS, not padded (at most `max_length`)."""
    ids = self._pieces(prompt)[: self.max_length - 1]
    # As in Hugging Face, a prompt that already ends in EOS gets no second one.
    if not ids or ids[-1] != self.eos_id:
      ids.append(self.eos_id)
    return ids

  def cut_tokens(self, prompt: str) -> int:
    """How many of the prompt's tokens `encode` drops to fit `max_length` (0 when it fits)."""
    return max(0, len(self._pieces(prompt)) - (self.max_length - 1))

  def _pieces(self, prompt: str) -> list[int]:
    """The prompt's ids before the cut and EOS."""
    # Odd entries are special tokens; sentinels swallow the white space on both sides.
    chunks = self._splitter.split(prompt)
    for i in range(1, len(chunks), 2):
      if chunks[i] in self._sentinels:
        chunks[i - 1] = chunks[i - 1].rstrip()
        chunks[i + 1] = chunks[i + 1].lstrip()
    ids: list[int] = []
    for i, chunk in enumerate(chunks):
      if i % 2:
        ids.append(self._special[chunk])
      elif chunk:
        ids.extend(self._processor.encode(chunk))
    return ids

  def __call__(self, prompts: str | Sequence[str]) -> TokenizedText:
    if isinstance(prompts, str):
      prompts = [prompts]
    return pad_batch([self.encode(prompt) for prompt in prompts], self.max_length, self.pad_id)
