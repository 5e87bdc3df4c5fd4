"""Generates videos from text (and optionally a first-frame image) with Kandinsky Video 1.1.

  python -m sample "a red fox running through snow" --out fox.mp4 --weights converted/ --tokenizer spiece.model
  python -m sample "waves at sunset" --image beach.jpg --fps medium --motion high --out waves.gif --weights converted/

--out takes .mp4, .gif, or a folder (no suffix) of PNG frames; with several prompts, files are numbered.
Without --weights, the tiny preset runs with RANDOM weights (the output is noise): a smoke test of the
whole path that needs no download.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from kvjax.diffusion.loop import SAMPLERS
from kvjax.pipeline.config import FPS_PASSES, MOTION_SCORES, GenerationOptions


def _parser() -> argparse.ArgumentParser:
  d = GenerationOptions()
  p = argparse.ArgumentParser(prog="python -m sample", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("prompts", nargs="+", help="one or more prompts (generated as one batch)")
  p.add_argument("--out", required=True, help="output .mp4, .gif, or folder for PNG frames")
  p.add_argument("--image", nargs="+", help="first-frame image(s) for image-to-video (one, or one per prompt)")
  p.add_argument("--weights", help="folder written by `python -m convert all` (default: tiny random weights)")
  p.add_argument("--image-movq", help="converted image MoVQ folder replacing the one of --weights (e.g. from "
                 "`python -m train.export`)")
  p.add_argument("--video-movq", help="converted video MoVQ decoder folder replacing the one of --weights")
  p.add_argument("--tokenizer", help="SentencePiece model of FLAN-UL2 (spiece.model); default: WEIGHTS/spiece.model")
  p.add_argument("--fps", choices=sorted(FPS_PASSES), default=d.fps, help="low: 12 frames, medium: 45, high: 177")
  p.add_argument("--motion", choices=list(MOTION_SCORES), default=d.motion)
  p.add_argument("--width", type=int, help="video width (default 512; 64 with random weights)")
  p.add_argument("--height", type=int, help="video height (default 512; 64 with random weights)")
  p.add_argument("--key-frame-guidance", type=float, default=d.key_frame_guidance_scale)
  p.add_argument("--text-guidance", type=float, default=d.guidance_weight_prompt)
  p.add_argument("--image-guidance", type=float, default=d.guidance_weight_image)
  p.add_argument("--interpolation-guidance", type=float, default=d.interpolation_guidance_scale)
  p.add_argument("--noise-augmentation", type=int, default=d.noise_augmentation)
  p.add_argument("--steps", type=int, nargs=3, metavar=("KEY", "BASE", "INTERP"),
                 help=f"denoising steps per stage (default {d.key_frame_steps} {d.base_frame_steps} "
                 f"{d.interpolation_steps}; 4 4 2 with random weights)")
  p.add_argument("--sampler", choices=SAMPLERS, default=d.sampler,
                 help="ddpm is the reference; ddim and dpm_solver_pp are faster (not the reference)")
  p.add_argument("--seed", type=int, default=d.seed)
  p.add_argument("--bf16", action="store_true", help="compute the UNets in bfloat16")
  p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
  return p


def _outputs(out: str, count: int) -> list[str]:
  if count == 1:
    return [out]
  stem, suffix = os.path.splitext(out.rstrip("/"))
  return [f"{stem}_{i}{suffix}" for i in range(count)]


def _images(paths, count):
  from PIL import Image, UnidentifiedImageError
  if paths is None:
    return None
  if len(paths) not in (1, count):
    raise ValueError(f"--image: give one image or one per prompt ({count}), got {len(paths)}")
  images = []
  for path in paths:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"--image {path}: no such file")
    try:
      with Image.open(path) as image:
        image.load()
        images.append(image.copy())
    except (UnidentifiedImageError, OSError) as e:
      raise ValueError(f"--image {path}: not a readable image ({e})") from None
  return images * count if len(images) == 1 else images


def _model_overrides(args) -> dict[str, str]:
  paths = {"image_movq": args.image_movq, "video_movq": args.video_movq}
  for field, path in paths.items():
    if path is not None and not os.path.isfile(os.path.join(path, "config.json")):
      raise FileNotFoundError(f"--{field.replace('_', '-')} {path}: not a converted model folder (no config.json)")
    if path is not None:
      print(f"{field.replace('_', ' ')}: {path}", file=sys.stderr)
  return {field: path for field, path in paths.items() if path is not None}


def run(args) -> int:
  import jax.numpy as jnp
  from sample.writers import check_output_path, write_frames
  from kvjax.pipeline.config import PIPELINE_PRESETS
  from kvjax.pipeline.text_to_video import TextToVideo
  from kvjax.pipeline.weights import random_weights, with_models

  outputs = _outputs(args.out, len(args.prompts))
  for out in outputs:  # fail before any work on a bad or taken output path
    check_output_path(out, args.overwrite)
  images = _images(args.image, len(args.prompts))
  random = args.weights is None
  if random:
    print("no --weights: running the TINY preset with RANDOM weights and a stand-in tokenizer; the video "
          "will be noise (convert the official checkpoints with `python -m convert all` for real output)",
          file=sys.stderr)
    from kvjax.text.hashed_tokenizer import HashedWordTokenizer
    config = PIPELINE_PRESETS["tiny"]
    config, weights = with_models(config, random_weights(config, args.seed), _model_overrides(args))
    tokenizer = HashedWordTokenizer(config.text_encoder.vocab_size, config.tokens_length)
  else:
    from kvjax.pipeline.weights import load_pipeline_weights
    from kvjax.text.tokenizer import T5Tokenizer
    tokenizer_path = args.tokenizer or os.path.join(args.weights, "spiece.model")
    if not os.path.isfile(tokenizer_path):
      raise FileNotFoundError(f"{tokenizer_path}: no tokenizer; pass --tokenizer PATH to FLAN-UL2's spiece.model")
    config, weights = load_pipeline_weights(args.weights, overrides=_model_overrides(args))
    tokenizer = T5Tokenizer(tokenizer_path, config.tokens_length)
  size = 64 if random else 512
  steps = args.steps or ((4, 4, 2) if random else None)
  options = GenerationOptions(
      width=args.width or size, height=args.height or size, fps=args.fps, motion=args.motion,
      key_frame_guidance_scale=args.key_frame_guidance, guidance_weight_prompt=args.text_guidance,
      guidance_weight_image=args.image_guidance, interpolation_guidance_scale=args.interpolation_guidance,
      noise_augmentation=args.noise_augmentation, sampler=args.sampler, seed=args.seed,
      **({} if steps is None else dict(key_frame_steps=steps[0], base_frame_steps=steps[1],
                                       interpolation_steps=steps[2])))
  options.check_size(config)
  pipeline = TextToVideo(config, weights, tokenizer, jnp.bfloat16 if args.bf16 else jnp.float32)
  start = time.perf_counter()
  def bar(stage, done, total):
    filled = 30 * done // total
    print(f"\r  {stage:<18} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}", end="", file=sys.stderr,
          flush=True)

  report = lambda stage, seconds: print(f"\r  {stage:<18} {'done':<32} {seconds:7.1f} s", file=sys.stderr)
  videos = pipeline(args.prompts, options, images, progress=report, step_progress=bar)
  for video, out in zip(videos, outputs):
    write_frames(video, out, overwrite=args.overwrite)
    print(f"wrote {out}: {video.shape[0]} frames of {video.shape[2]}x{video.shape[1]}")
  print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
  return 0


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    return run(args)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
