"""Measures a trained image MoVQ's latents on a prepared dataset and writes the weights folder's latent
normalization (WEIGHTS/latents.json, kvjax.models.latent_normalization), which the UNets then train on and
sampling applies: each channel's latents get zero mean and standard deviation --std, and the samplers clamp
x0 to the box they then occupy.

  python -m train.calibrate_latents WEIGHTS --config keyframe-tiny --set pipeline=demo --data prepared/ [--std 1]

The frames are read as the --config UNet preset reads them (its resolution and frames per clip). Official
weights need none: their latents fit the reference's samplers as they are.
"""

from __future__ import annotations

import argparse
import os
import sys

from kvjax.cli import program_name
from kvjax.training.overrides import add_config_arguments, config_from_args


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=program_name("train.calibrate_latents", __package__),
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("weights", help="a weights folder (its movq/ is measured, its latents.json written)")
  add_config_arguments(p, help="the UNet preset that will train on the latents (how frames are read)")
  p.add_argument("--data", required=True, help="folder written by `python -m train.prepare_data`")
  p.add_argument("--clips", type=int, default=256, help="clips to measure (from the start of the dataset)")
  p.add_argument("--std", type=float, default=1.0, help="each channel's standard deviation after the map (1: "
                 "as Stable Diffusion's scaling factor)")
  p.add_argument("--batch-size", type=int, default=8, help="clips encoded at once")
  p.add_argument("--overwrite", action="store_true", help="replace an existing latents.json")
  return p


def main(argv=None) -> int:
  try:
    return _calibrate(_parser().parse_args(argv))
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


def _calibrate(args) -> int:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from kvjax.conversion.store import load_converted
  from kvjax.models import latent_normalization
  from kvjax.params import build_model
  from kvjax.pipeline.pipeline_weights import FOLDERS
  from kvjax.training.inputs import clip_reader
  from kvjax.training.movq_gan import frames_to_unit_range

  if not 1 <= args.clips <= 1 << 20 or not 1 <= args.batch_size <= 4096:  # before the config sees the batch size
    raise ValueError(f"--clips {args.clips} must be in [1, 2**20] and --batch-size {args.batch_size} in [1, 4096]")
  config = config_from_args(args, {"global_batch_size": args.batch_size})
  if config.is_movq:
    raise ValueError(f"--config {args.config}: a MoVQ preset; name the UNet preset that will train on the latents")
  try:
    latent_normalization.check_std(args.std)  # before any encoding
  except ValueError as e:
    raise ValueError(f"--std {args.std}: {e}")
  if not os.path.isdir(args.data):
    raise ValueError(f"--data {args.data}: no such folder (make one with `python -m train.prepare_data`)")
  movq_dir = os.path.join(args.weights, FOLDERS["image_movq"])
  if not os.path.isfile(os.path.join(movq_dir, "config.json")):
    raise ValueError(f"{args.weights}: no converted image MoVQ in {movq_dir}")
  out = os.path.join(args.weights, latent_normalization.LATENTS_FILE)
  if os.path.lexists(out) and not args.overwrite:
    raise ValueError(f"{out} exists (pass --overwrite to replace it)")
  movq = load_converted(movq_dir)
  if movq.config != config.pipeline_config.image_movq:
    raise ValueError(f"{movq_dir}: not the image MoVQ of the {config.pipeline!r} pipeline (other configuration)")
  model = build_model(movq.config)
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), movq.params)
  encode = jax.jit(lambda p, frames: model.apply({"params": p}, frames_to_unit_range(frames), method="encode"))

  latents, seen = [], 0
  for examples in clip_reader(config, args.data, args.batch_size, 0, 1, shuffle=False, num_epochs=1):
    frames = np.asarray(examples["frames"])[: args.clips - seen]
    latents.append(np.asarray(encode(params, frames.reshape(-1, *frames.shape[2:]))))
    seen += frames.shape[0]
    if seen >= args.clips:
      break
  if not latents:
    raise ValueError(f"--data {args.data}: no clips of {config.loader_frames} frames to measure")
  try:
    normalization = latent_normalization.calibrate(np.concatenate(latents), std=args.std)
  except ValueError as e:
    raise ValueError(f"{movq_dir}: {e}")
  latent_normalization.save(normalization, out, source=f"{seen} clips of {args.data} ({args.config}) through {movq_dir}")
  fmt = lambda values: "[" + ", ".join(f"{v:.3f}" for v in np.asarray(values)) + "]"
  print(f"{out}: shift {fmt(normalization.shift)}, scale {fmt(normalization.scale)}, sample range "
        f"{normalization.sample_range:.3f} ({seen} clips)", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
