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
# A word a tokenizer can be taught (`with_words`): letters, digits, '-' and '_', not a special spelling.
WORD = re.compile(r"[^\W]([\w-]*[^\W])?")


def trigger_tokens(words: Sequence[str]) -> dict[str, str]:
  """The sentinel each trigger word is read as: the k-th word gets `<extra_id_k>`. ValueError for a word that
  is not one word (WORD) or is given twice."""
  for word in words:
    if not WORD.fullmatch(word):
      raise ValueError(f"trigger word {word!r}: give one word of letters, digits, '-' or '_'")
  if len(set(words)) != len(words):
    raise ValueError(f"trigger words {', '.join(words)}: a word is given twice")
  return {word: f"<extra_id_{k}>" for k, word in enumerate(words)}


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

  def __init__(self, model_file: str | os.PathLike, max_length: int = 128, extra_ids: int = 100,
               words: dict[str, str] | None = None):
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
    self._model_file, self._extra_ids, self.words = path, extra_ids, dict(words or {})
    for word, token in self.words.items():
      if not WORD.fullmatch(word) or token not in self._sentinels:
        raise ValueError(f"new word {word!r} -> {token!r}: give one word and a sentinel <extra_id_N> of this "
                         f"vocabulary (N < {extra_ids})")
      special[word] = self._sentinels[token]
    # Longest first, so that <extra_id_10> is never read as <extra_id_1> followed by "0>"; a new word only
    # where it stands alone (not inside another word).
    spellings = sorted(special, key=len, reverse=True)
    self._splitter = re.compile("(" + "|".join(rf"(?<![\w-]){re.escape(s)}(?![\w-])" if s in self.words
                                               else re.escape(s) for s in spellings) + ")")

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
      if chunks[i] in self._sentinels or chunks[i] in self.words:
        chunks[i - 1] = chunks[i - 1].rstrip()
        chunks[i + 1] = chunks[i + 1].lstrip()
    ids: list[int] = []
    for i, chunk in enumerate(chunks):
      if i % 2:
        ids.append(self._special[chunk])
      elif chunk:
        ids.extend(self._processor.encode(chunk))
    return ids

  def with_words(self, words: dict[str, str]) -> "T5Tokenizer":
    """This tokenizer also reading each word of `words` as its sentinel (`trigger_tokens`), on top of the
    words it already reads so; ValueError where a word would be read as two sentinels."""
    merged = dict(self.words)
    for word, token in words.items():
      if merged.setdefault(word, token) != token:
        raise ValueError(f"new word {word!r} is read as {merged[word]} already, not {token}")
    return T5Tokenizer(self._model_file, self.max_length, self._extra_ids, merged)

  def __call__(self, prompts: str | Sequence[str]) -> TokenizedText:
    if isinstance(prompts, str):
      prompts = [prompts]
    return pad_batch([self.encode(prompt) for prompt in prompts], self.max_length, self.pad_id)
