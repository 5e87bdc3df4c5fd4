"""A stand-in tokenizer for random-weight runs, when no SentencePiece model is at hand. NOT FLAN-UL2's.

Words are hashed (stable across runs) into the vocabulary; EOS, padding and the mask follow the real
tokenizer's layout, so everything downstream runs unchanged.
"""

from __future__ import annotations

import zlib
from typing import Sequence

from kvjax.text.tokenizer import TokenizedText, pad_batch

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

  def cut_tokens(self, prompt: str) -> int:
    """How many of the prompt's words `encode` drops to fit `max_length`."""
    return max(0, len(prompt.split()) - (self.max_length - 1))

  def __call__(self, prompts: str | Sequence[str]) -> TokenizedText:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    return pad_batch([self.encode(prompt) for prompt in prompts], self.max_length, PAD_ID)
