import re

import numpy as np
import pytest

sentencepiece = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")

from kvjax.text import T5Tokenizer

WORDS = ("a red fox jumps over the lazy dog while cats watch from the old wooden fence under bright "
         "morning light, and birds sing quietly near a river of blue water; snow falls on mountains").split()

PROMPTS = [
    "A red fox jumps over the lazy dog.",
    "",
    "   leading and trailing spaces   ",
    "unseen letters: Ж ψ 漢字 and émigré",
    "double  spaces\tand\nnew lines",
    "special </s> inside and <pad> and <unk> spelled out",
    "sentinels <extra_id_0> with  <extra_id_10>  spaces<extra_id_1>around",
    "ends with eos</s>",
    " ".join(WORDS * 8),  # far longer than 128 tokens
]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
  """A tiny unigram SentencePiece model with T5's special ids: pad 0, EOS 1, unk 2, no BOS."""
  root = tmp_path_factory.mktemp("spm")
  rng = np.random.default_rng(0)
  corpus = root / "corpus.txt"
  corpus.write_text("\n".join(" ".join(rng.choice(WORDS, 12)) for _ in range(400)))
  sentencepiece.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=str(root / "spiece"), vocab_size=120, model_type="unigram",
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2)
  return root / "spiece.model"


@pytest.fixture(scope="module")
def reference(model_file):
  return transformers.T5Tokenizer(vocab_file=str(model_file), legacy=True)


@pytest.mark.filterwarnings("ignore:This sequence already has </s>")  # the prompt typed its own EOS
def test_matches_transformers_legacy_t5_tokenizer(model_file, reference):
  ours = T5Tokenizer(model_file)
  for prompt in PROMPTS:
    theirs = reference(prompt, max_length=128, truncation=True)["input_ids"]
    assert ours.encode(prompt) == theirs, prompt
  batch = ours(PROMPTS)
  theirs = reference(PROMPTS, max_length=128, truncation=True, padding="max_length", return_tensors="np")
  np.testing.assert_array_equal(batch.input_ids, theirs["input_ids"])
  np.testing.assert_array_equal(batch.attention_mask, theirs["attention_mask"])


def test_padding_mask_and_truncation(model_file):
  tokenizer = T5Tokenizer(model_file)
  batch = tokenizer(["", "fox", PROMPTS[-1]])
  assert batch.input_ids.shape == batch.attention_mask.shape == (3, 128)
  assert batch.input_ids.dtype == np.int32
  lengths = batch.attention_mask.sum(axis=1)
  assert lengths[0] == 1 and batch.input_ids[0, 0] == 1  # an empty prompt is EOS alone
  assert lengths[2] == 128 and batch.input_ids[2, -1] == 1  # 127 text tokens, then EOS
  for row, n in enumerate(lengths):
    assert batch.attention_mask[row, :n].all() and not batch.attention_mask[row, n:].any()
    assert (batch.input_ids[row, n:] == 0).all() and batch.input_ids[row, n - 1] == 1
  single = tokenizer("fox")
  np.testing.assert_array_equal(single.input_ids, batch.input_ids[1:2])
  short = T5Tokenizer(model_file, max_length=4)
  assert short.encode(PROMPTS[0])[-1] == 1 and len(short.encode(PROMPTS[0])) == 4


def test_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="spiece.model"):
    T5Tokenizer(tmp_path / "spiece.model")
  garbage = tmp_path / "garbage.model"
  garbage.write_bytes(b"not a sentencepiece model at all")
  with pytest.raises(ValueError, match="not a SentencePiece model"):
    T5Tokenizer(garbage)


def test_cut_tokens_counts_what_the_cut_drops(model_file, reference, capsys):
  from sample.__main__ import _warn_cut_prompts
  tokenizer = T5Tokenizer(model_file, max_length=16)
  full = len(reference(PROMPTS[-1])["input_ids"])  # untruncated, EOS included
  assert tokenizer.cut_tokens(PROMPTS[-1]) == full - 16
  assert tokenizer.cut_tokens("fox") == 0
  _warn_cut_prompts(["fox", PROMPTS[-1]], tokenizer)
  err = capsys.readouterr().err.strip()
  assert err == (f"warning: prompt 2 is longer than the 16 tokens the text encoder reads (EOS included): its "
                 f"last {full - 16} tokens are cut")


def test_new_words_read_as_their_sentinels(model_file):
  """A LoRA adapter's trigger words (kvjax.text.tokenizer.trigger_tokens): each read, standing alone, as its
  sentinel, the white space around it dropped as around a typed sentinel; everything else as before."""
  from kvjax.text.tokenizer import trigger_tokens
  base = T5Tokenizer(model_file, max_length=16)
  words = trigger_tokens(["zigzag", "huge"])
  assert words == {"zigzag": "<extra_id_0>", "huge": "<extra_id_1>"}
  taught = base.with_words(words)
  for prompt in ("a huge red fox", "zigzag", "a huge, zigzag fox", "hugely zigzags huge-ish", "a red fox"):
    typed = prompt
    for word, token in words.items():
      typed = re.sub(rf"(?<![\w-]){word}(?![\w-])", token, typed)
    assert taught.encode(prompt) == base.encode(typed), prompt
  assert taught.encode("huge")[0] == base.encode("<extra_id_1>")[0] == base.vocab_size - 2
  assert taught.with_words({"huge": "<extra_id_1>"}).words == taught.words  # the same word again: unchanged
  with pytest.raises(ValueError, match="new word 'huge' is read as <extra_id_1> already, not <extra_id_0>"):
    taught.with_words({"huge": "<extra_id_0>"})
  for bad, message in ((["two words"], "trigger word 'two words': give one word"), (["<pad>"], "give one word"),
                       (["huge", "huge"], "a word is given twice")):
    with pytest.raises(ValueError, match=message):
      trigger_tokens(bad)
  with pytest.raises(ValueError, match="a sentinel <extra_id_N> of this vocabulary"):
    T5Tokenizer(model_file, words={"huge": "<extra_id_100>"})
