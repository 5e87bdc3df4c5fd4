"""A stand-in tokenizer for random-weight runs, when no SentencePiece model is at hand. NOT FLAN-UL2's.

Words are hashed (stable across runs) into the vocabulary; EOS, padding and the mask follow the real
tokenizer's layout, so everything downstream runs unchanged.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from kvjax.text.tokenizer import TokenizedText

PAD_ID, EOS_ID, FIRST_WORD_ID = 0, 1, 3


class HashedWordTokenizer:
  def __init__(self, vocab_size: int, max_length: int):
    if vocab_size <= FIRST_WORD_ID or max_length < 1:
      raise ValueError(f"need vocab_size > {FIRST_WORD_ID} and max_length >= 1")
    self.vocab_size, self.max_length = vocab_size, max_length

  def encode(self, prompt: str) -> list[int]:
    words = prompt.lower().split()[: self.max_length - 1]
    span = self.vocab_size - FIRST_WORD_ID
    return [FIRST_WORD_ID + zlib.crc32(w.encode()) % span for w in words] + [EOS_ID]

  def __call__(self, prompts: str | Sequence[str]) -> TokenizedText:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    ids = np.full((len(prompts), self.max_length), PAD_ID, np.int32)
    mask = np.zeros((len(prompts), self.max_length), np.int32)
    for row, prompt in enumerate(prompts):
      tokens = self.encode(prompt)
      ids[row, :len(tokens)] = tokens
      mask[row, :len(tokens)] = 1
    return TokenizedText(ids, mask)
