"""A T5-layout SentencePiece model trained on captions: one piece per word, deterministic, T5's special ids."""

import numpy as np
import pytest

from kvjax.data import shapes
from kvjax.text.tokenizer import T5Tokenizer
from kvjax.text.tokenizer_training import train_tokenizer


def _captions(count=60):
  rng = np.random.default_rng(0)
  return [shapes.caption(shapes.sample_spec(rng, 48)) for _ in range(count)]


def test_every_caption_word_is_one_piece_with_t5_special_ids(tmp_path):
  tokenizer = T5Tokenizer(train_tokenizer(_captions(), tmp_path / "spiece.model"), max_length=16)
  assert (tokenizer.pad_id, tokenizer.eos_id) == (0, 1)
  ids = tokenizer.encode("a red circle moving right")
  assert len(ids) == 6 and ids[-1] == 1 and 2 not in ids  # five words, EOS, no <unk>
  assert tokenizer.encode("A RED Circle moving right") == ids  # case is folded
  assert tokenizer.encode("a purple dog")[1] == 2  # unknown words are <unk>
  words = {w for c in _captions() for w in c.split()}
  assert tokenizer.vocab_size == 3 + len(words) + 100  # specials, the words, T5's sentinels


def test_training_is_deterministic_and_atomic(tmp_path):
  first = train_tokenizer(_captions(), tmp_path / "a.model")
  second = train_tokenizer(_captions(), tmp_path / "b.model")
  assert open(first, "rb").read() == open(second, "rb").read()
  with pytest.raises(FileExistsError):
    train_tokenizer(_captions(), tmp_path / "a.model")
  with pytest.raises(ValueError, match="no captions"):
    train_tokenizer([], tmp_path / "c.model")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.model", "b.model"]
