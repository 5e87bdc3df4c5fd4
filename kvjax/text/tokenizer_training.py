"""Trains a T5-layout SentencePiece model on captions (pad 0, EOS 1, unk 2, no BOS; the 100 sentinels are
added by `T5Tokenizer`), for models trained from scratch such as the embedded demo.

A word model: a caption language of a few dozen words gets one piece per word (a unigram model of that
size splits words into letters and fills the context with them); case is folded, unknown words become
<unk>. Deterministic: one thread, the captions in the given order."""

from __future__ import annotations

import io
import os
from typing import Iterable

import sentencepiece

from kvjax.atomic import staged

MAX_CAPTIONS = 1_000_000  # SentencePiece holds every sentence in memory


def train_tokenizer(captions: Iterable[str], out_path: str | os.PathLike, vocab_size: int = 64,
                    overwrite: bool = False) -> str:
  """Writes the model file to `out_path` (atomically) and returns its path. `vocab_size` is an upper
  bound: a small caption language gets the pieces it has (SentencePiece's soft limit)."""
  sentences = []
  for caption in captions:
    sentences.append(str(caption))
    if len(sentences) > MAX_CAPTIONS:
      raise ValueError(f"more than {MAX_CAPTIONS} captions to train a tokenizer on")
  if not sentences:
    raise ValueError("no captions to train a tokenizer on")
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size, model_type="word",
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False,
      normalization_rule_name="nmt_nfkc_cf",
      num_threads=1, shuffle_input_sentence=False, minloglevel=2)
  with staged(out_path, overwrite=overwrite, folder=False) as staging:
    with open(staging, "wb") as f:
      f.write(model.getvalue())
  return os.path.abspath(os.fspath(out_path))
