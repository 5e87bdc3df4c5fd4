"""Starts a pipeline from nothing: random weights for every model, in the layout of `python -m convert all`,
and a SentencePiece tokenizer trained on the captions of the data (for models trained from scratch, such
as the embedded demo's):

  python -m train.init_weights OUT --pipeline demo --captions videos/captions.jsonl [--seed 0]
  python -m train --config keyframe-tiny --set pipeline=demo --data prepared/ --weights OUT --workdir runs/keyframe

--captions takes JSON lines with a "caption" field (what `python -m train.make_shapes` writes and
`python -m train.prepare_data --captions` reads). The null embeddings of the UNets are random too. The
folder appears only when complete; an existing OUT is refused unless --overwrite.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from kvjax.cli import program_name

MAX_CAPTION_LINE = 1 << 16  # bytes: a caption file line longer than this is not a caption


def _parser() -> argparse.ArgumentParser:
  from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS
  p = argparse.ArgumentParser(prog=program_name("train.init_weights", __package__), description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("out", help="new weights folder")
  p.add_argument("--pipeline", required=True, choices=sorted(PIPELINE_PRESETS), help="which models")
  p.add_argument("--captions", required=True, help="JSON lines with a \"caption\" field, to train the tokenizer on")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
  return p


def read_captions(path: str) -> list[str]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--captions {path}: no such file")
  captions = []
  with open(path, "rb") as f:
    for number, line in enumerate(iter(lambda: f.readline(MAX_CAPTION_LINE + 1), b""), 1):
      if len(line) > MAX_CAPTION_LINE:
        raise ValueError(f"--captions {path}:{number}: line longer than {MAX_CAPTION_LINE} bytes")
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--captions {path}:{number}: not JSON ({e})") from None
      if not isinstance(record, dict) or not isinstance(record.get("caption"), str):
        raise ValueError(f"--captions {path}:{number}: no \"caption\" string")
      captions.append(record["caption"])
  if not captions:
    raise ValueError(f"--captions {path}: no captions")
  return captions


def init_weights(out: str, pipeline: str, captions: list[str], seed: int = 0, overwrite: bool = False) -> str:
  import numpy as np

  from kvjax.atomic import staged
  from kvjax.conversion.store import ConvertedModel, save_converted
  from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS
  from kvjax.pipeline.pipeline_weights import FOLDERS, random_weights
  from kvjax.text.tokenizer import T5Tokenizer
  from kvjax.text.tokenizer_training import train_tokenizer

  config = PIPELINE_PRESETS[pipeline]
  with staged(out, overwrite=overwrite) as staging:
    tokenizer_path = train_tokenizer(captions, os.path.join(staging, "spiece.model"))
    tokenizer = T5Tokenizer(tokenizer_path, config.tokens_length)
    if tokenizer.vocab_size > config.text_encoder.vocab_size:
      raise ValueError(f"the captions need {tokenizer.vocab_size} token ids (their words and 100 sentinels); the "
                       f"{pipeline} text encoder has {config.text_encoder.vocab_size}")
    weights = random_weights(config, seed)
    for field, folder in FOLDERS.items():
      extras = {}
      if field in ("keyframe", "interpolation"):
        extras = {"null_embedding": np.asarray(getattr(weights, f"{field}_null"), np.float32)}
      model_config = getattr(config, field)
      save_converted(ConvertedModel(model_config.kind, model_config, getattr(weights, field), extras),
                     os.path.join(staging, folder), source=f"random weights (seed {seed})")
  return f"wrote {out}: random {pipeline} weights (seed {seed}), tokenizer of {len(captions)} captions"


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    print(init_weights(args.out, args.pipeline, read_captions(args.captions), args.seed, args.overwrite),
          file=sys.stderr)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
