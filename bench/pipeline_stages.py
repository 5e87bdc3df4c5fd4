"""Time and memory of each generation stage: load, compile (first call minus second), sample, decode.

  python bench/pipeline_stages.py                                   # tiny preset, random weights, 64x64
  python bench/pipeline_stages.py --weights converted --width 512 --height 512 --fps medium

Prints one row per stage: the first call (compile + run), the second (run only), their difference (the
compile time), and peak memory so far: the device's peak bytes where the backend reports them, else the
process's peak resident set.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import jax
import jax.numpy as jnp

from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS, GenerationOptions
from kvjax.pipeline.text_to_video import TextToVideo
from kvjax.pipeline.pipeline_weights import random_weights


def peak_memory_gib() -> float:
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2 ** 30
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--weights", help="`convert all` output (default: the tiny preset with random weights)")
  p.add_argument("--tokenizer", help="spiece.model (with --weights)")
  p.add_argument("--width", type=int, default=64)
  p.add_argument("--height", type=int, default=64)
  p.add_argument("--fps", default="medium")
  p.add_argument("--prompts", type=int, default=1, help="batch of prompts")
  p.add_argument("--steps", type=int, nargs=3, default=(4, 4, 2), metavar=("KEY", "BASE", "INTERP"))
  p.add_argument("--sampler", default="ddpm")
  p.add_argument("--bf16", action="store_true")
  args = p.parse_args(argv)

  start = time.perf_counter()
  if args.weights:
    from kvjax.pipeline.pipeline_weights import load_pipeline_weights
    from kvjax.text.tokenizer import T5Tokenizer
    config, weights = load_pipeline_weights(args.weights)
    tokenizer = T5Tokenizer(args.tokenizer, config.tokens_length)
    what = args.weights
  else:
    from kvjax.text.hashed_tokenizer import HashedWordTokenizer
    config = PIPELINE_PRESETS["tiny"]
    weights = random_weights(config)
    tokenizer = HashedWordTokenizer(config.text_encoder.vocab_size, config.tokens_length)
    what = "tiny preset, random weights"
  weights = jax.device_put(weights)
  load_seconds = time.perf_counter() - start
  pipeline = TextToVideo(config, weights, tokenizer, jnp.bfloat16 if args.bf16 else jnp.float32)
  options = GenerationOptions(width=args.width, height=args.height, fps=args.fps, sampler=args.sampler,
                              key_frame_steps=args.steps[0], base_frame_steps=args.steps[1],
                              interpolation_steps=args.steps[2])
  prompts = [f"prompt number {i}" for i in range(args.prompts)]
  rows: dict[str, list[float]] = {}
  for run in range(2):
    def record(stage, seconds):
      rows.setdefault(stage, []).append(seconds)
      if run == 1:
        rows[stage].append(peak_memory_gib())
    frames = pipeline(prompts, options, progress=record)
  print(f"# {what}; {jax.devices()[0].device_kind}; {args.prompts} x {frames.shape[1]} frames of "
        f"{args.width}x{args.height}; steps {tuple(args.steps)}; sampler {args.sampler}; "
        f"{'bf16' if args.bf16 else 'fp32'}")
  print(f"{'stage':<18} {'first call s':>13} {'run s':>9} {'compile s':>10} {'peak GiB':>9}")
  print(f"{'load weights':<18} {load_seconds:>13.2f} {'':>9} {'':>10} {peak_memory_gib():>9.2f}")
  for stage, (first, second, peak) in rows.items():
    print(f"{stage:<18} {first:>13.2f} {second:>9.2f} {first - second:>10.2f} {peak:>9.2f}")
  total = sum(v[1] for v in rows.values())
  print(f"{'total (run)':<18} {'':>13} {total:>9.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
