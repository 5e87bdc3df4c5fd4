"""Runs the frozen encoders once over a prepared dataset and writes what training reads instead of frames
and captions: latents, text context and mask, motion score.

  python -m train.precompute --config keyframe-1.1 --data prepared/ --out inputs/ --weights converted/
  python -m train --config keyframe-1.1 --data inputs/ ...        # trains from the pre-computed inputs

Every clip of the dataset is read once, in order. The output is for the settings of --config and its --set
overrides (frozen models, frames per clip and their spacing, resolution); training with other settings is
refused. The folder appears only when complete.
"""

from __future__ import annotations

import argparse
import os
import sys

from kvjax.cli import program_name
from kvjax.training.overrides import add_config_arguments, config_from_args


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=program_name("train.precompute", __package__), description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  add_config_arguments(p)
  p.add_argument("--data", required=True, help="folder written by `python -m train.prepare_data`")
  p.add_argument("--out", required=True, help="new folder for the pre-computed inputs")
  p.add_argument("--weights", help="folder written by `python -m convert all` (default: random weights)")
  p.add_argument("--tokenizer", help="FLAN-UL2's spiece.model (default: WEIGHTS/spiece.model)")
  p.add_argument("--mesh", default="", help="devices for the encoders, e.g. fsdp=8 (default: all on data)")
  p.add_argument("--batch-size", type=int, default=8, help="clips encoded at once")
  p.add_argument("--overwrite", action="store_true")
  return p


def main(argv=None) -> int:
  try:
    return _precompute(_parser().parse_args(argv))
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


def _precompute(args) -> int:
  from kvjax.atomic import check_free, check_writable
  from kvjax.training.inputs import ClipEncoder, clip_reader
  from kvjax.sharding import make_mesh
  from kvjax.training.precomputed import write_precomputed
  from kvjax.training.starting_weights import training_weights

  if not 1 <= args.batch_size <= 4096:
    raise ValueError(f"--batch-size {args.batch_size}: give 1 to 4096 clips")
  config = config_from_args(args, {"global_batch_size": args.batch_size})
  if not os.path.isdir(args.data):
    raise ValueError(f"--data {args.data}: no such folder (make one with `python -m train.prepare_data`)")
  check_writable(os.path.dirname(check_free(args.out, args.overwrite)))  # before any encoding
  mesh = make_mesh(args.mesh)
  if args.batch_size % (mesh.shape["data"] * mesh.shape["fsdp"]):
    raise ValueError(f"--batch-size {args.batch_size} must split over the mesh's data x fsdp = "
                     f"{mesh.shape['data'] * mesh.shape['fsdp']} devices")
  weights, tokenizer = training_weights(config, args.weights, args.tokenizer)
  if args.weights is None:
    print("no --weights: encoding with RANDOM weights and a stand-in tokenizer", file=sys.stderr)
  encoder = ClipEncoder(config, weights, tokenizer, mesh)
  # One pass in order; the last partial batch is dropped by the reader.
  clips = clip_reader(config, args.data, args.batch_size, 0, 1, shuffle=False, num_epochs=1)

  def batches():
    for examples in clips:
      encoded = encoder.encode(examples["frames"], examples["caption"])
      yield {**encoded, "motion_score": examples["motion_score"]}

  count = write_precomputed(args.out, config, batches(), overwrite=args.overwrite,
                            normalization=weights.latent_normalization)
  print(f"{count} clips encoded into {args.out}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
