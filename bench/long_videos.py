"""Long videos on the embedded demo (or any shapes-world weights folder): windows chained in latent space
against the naive route (decode the last frame, re-encode it, image-to-video), by the judges of
kvjax.demo.judge, over every colour x direction and several seeds; prints one table.

  python bench/long_videos.py [--weights kvjax/demo/weights] [--seeds 2] [--prompts 20] [--windows 3] [--fps medium]
                              [--motion low] [--routes latent,naive,anchored,overlap] [--overlap 3]

Both routes run the same pipeline with the same seeds, so window 1 is the same video in both; from window 2 on,
the latent route's condition is window 1's last base-frame latent itself (`--window-overlap 1`, the default) and the naive
route's is the video's last frame, decoded by the video MoVQ and encoded again by the image MoVQ
(`next_condition`); the anchored route carries the latent with each channel's spatial mean and standard
deviation set to those of window 1's last base frame (an anchor against colour drift); the overlap route
chains in latent space with `--window-overlap` (`--overlap` base frames of each window held in the next, so
its new frames go on from the motion rather than from one still frame). Rows (per route; a "pair" is two
neighbouring base frames and the frames interpolated between them; the seam pair is the first of each window
after the first):

- colour in every frame: videos whose named colour shows (kvjax.demo.judge.MIN_PIXELS) in every frame;
- direction kept in every window: videos whose every window moves the named way (centroid along it, more
  than across), and the share of windows that do;
- seam max / median step: the largest centroid step within the seam pairs over the video's median step,
  next to the same ratio for the steps inside the windows (the issue's measure; the inside has ~15x more
  steps to take a maximum from);
- seam pair rank: where a seam pair's largest step ranks among the video's pairs (0 smallest, 1 largest; 0.5
  is a pair like any other);
- drift in window k: the named colour's mean RGB and the background's mean RGB (largest channel difference,
  in % of the 0-255 range), and the shape's size (pixels of its colour a frame) against window 1's.
Medians over the videos, with the 90th percentile in brackets where a tail matters.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvjax import demo  # noqa: E402
from kvjax.data import shapes  # noqa: E402
from kvjax.demo import judge  # noqa: E402
from kvjax.pipeline.pipeline_config import FPS_PASSES, MOTION_SCORES  # noqa: E402


def window_bounds(options) -> list[tuple[int, int]]:
  """(first, last) frame of each window, inclusive; a window after the first starts at the last frame it
  shares with the one before (the seam frame; the last held one with --window-overlap)."""
  one = dataclasses.replace(options, windows=1).num_frames
  more = dataclasses.replace(options, windows=2).num_frames - one  # the frames each next window adds
  return [(0, one - 1)] + [(one - 1 + more * (k - 1), one - 1 + more * k) for k in range(1, options.windows)]


def measure(video: np.ndarray, colour: str, direction: str, bounds, stride: int) -> dict:
  """The rows of the module docstring for one video (uint8 (T, H, W, 3))."""
  mask = shapes.colour_mask(video, colour)
  counts = mask.sum(axis=(1, 2))
  out = {"colour_everywhere": bool((counts >= judge.MIN_PIXELS).all())}
  keeps = []
  for first, last in bounds:
    verdict = judge.judge_motion(video[first:last + 1], colour, direction)
    keeps.append(verdict.found and verdict.along > 0 and abs(verdict.across) < verdict.along)
  out["direction_every_window"], out["direction_windows"] = all(keeps), float(np.mean(keeps))
  track = shapes.centroid_track(video, colour, min_pixels=judge.MIN_PIXELS)
  steps = np.linalg.norm(np.diff(track, axis=0), axis=1)  # step i: frame i -> i + 1 (NaN where missing)
  median = np.nanmedian(steps) if np.isfinite(steps).any() else np.nan
  seams = [first for first, _ in bounds[1:]]
  seam_steps = np.zeros(len(steps), bool)
  for s in seams:
    seam_steps[s:s + stride] = True
  pair_max = np.array([np.nanmax(steps[i:i + stride]) if np.isfinite(steps[i:i + stride]).any() else np.nan
                       for i in range(0, len(steps), stride)])
  if median > 0 and np.isfinite(pair_max).all():
    out["seam_ratio"] = float(steps[seam_steps].max() / median)
    out["inside_ratio"] = float(steps[~seam_steps].max() / median)
    ranks = pair_max.argsort().argsort() / (len(pair_max) - 1)
    out["seam_rank"] = float(np.mean([ranks[s // stride] for s in seams]))
  means = []
  for first, last in bounds:
    frames, shape = video[first:last + 1].astype(np.float64), mask[first:last + 1]
    shape_rgb = frames[shape].mean(axis=0) if shape.any() else np.full(3, np.nan)
    means.append((shape_rgb, frames[~shape].mean(axis=0), shape.sum(axis=(1, 2)).mean()))
  for k, (shape_rgb, background, size) in enumerate(means[1:], start=2):
    out[f"colour_drift_{k}"] = float(np.abs(shape_rgb - means[0][0]).max() / 255 * 100)
    out[f"background_drift_{k}"] = float(np.abs(background - means[0][1]).max() / 255 * 100)
    out[f"size_{k}"] = float(size / means[0][2]) if means[0][2] else np.nan
  return out


class Anchor:
  """A next_condition: the carried latent (P, h, w, 4) with each channel's spatial mean and standard deviation
  set to those of the first latent it carried (window 1's last base frame)."""

  def __init__(self):
    self.reference = None

  def __call__(self, last, pixels):
    import jax.numpy as jnp
    moments = lambda z: (z.mean(axis=(1, 2), keepdims=True), z.std(axis=(1, 2), keepdims=True))
    if self.reference is None:
      self.reference = moments(last)
      return last
    (mean, std), (ref_mean, ref_std) = moments(last), self.reference
    return (last - mean) / jnp.maximum(std, 1e-6) * ref_std + ref_mean


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--weights", default=demo.DEMO_WEIGHTS)
  p.add_argument("--seeds", type=int, default=2, help="this many seeds, every colour x direction each (20 videos)")
  p.add_argument("--first-seed", type=int, default=0)
  p.add_argument("--prompts", type=int, default=20, help="the grid's first N prompts (colour by colour, every "
                 "direction of each): fewer videos a seed, for a route measured on a busy machine")
  p.add_argument("--prompt", help="this one prompt instead of the grid (its colour and direction read from its "
                 "words), each video's measures printed too: e.g. the sampling docs' done command, "
                 "--prompt 'a red circle moving right slowly' --motion high --seeds 3")
  p.add_argument("--windows", type=int, default=3)
  p.add_argument("--fps", choices=sorted(FPS_PASSES), default="medium")
  p.add_argument("--motion", choices=list(MOTION_SCORES), default="low")
  p.add_argument("--routes", default="latent,naive", help="comma-separated, of latent, naive, anchored, overlap")
  p.add_argument("--overlap", type=int, default=3, help="the overlap route's --window-overlap (base frames)")
  p.add_argument("--save", help="also write every video's measures to this JSON file (after each seed)")
  p.add_argument("--no-compile-cache", action="store_true", help="as python -m sample's")
  p.add_argument("--load", nargs="+", metavar="JSON", help="print the table of measures saved by --save (runs of "
                 "other seeds, side by side), generating nothing")
  args = p.parse_args(argv)

  from PIL import Image
  from kvjax.pipeline.pipeline_config import GenerationOptions
  from kvjax.pipeline.text_to_video import TextToVideo
  from kvjax.pipeline.pipeline_weights import load_pipeline_weights
  from kvjax.text.tokenizer import T5Tokenizer

  if args.load:
    rows, settings = {}, set()
    for path in args.load:
      with open(path) as f:
        saved = json.load(f)
      # The run's settings (files saved before they were written hold only the routes: then the flags given).
      run = saved.pop("settings", {"windows": args.windows, "fps": args.fps, "motion": args.motion})
      settings.add((run["windows"], run["fps"], run["motion"]))
      for route, measures in saved.items():
        rows.setdefault(route, []).extend(measures)
    if len(settings) > 1:
      p.error(f"--load: the files were run with different --windows, --fps or --motion: {sorted(settings)}")
    args.windows, args.fps, args.motion = settings.pop()
    return print_table(rows, args)
  if not 1 <= args.prompts <= len(judge.prompt_grid()):
    p.error(f"--prompts: must be in [1, {len(judge.prompt_grid())}], got {args.prompts}")
  routes = tuple(args.routes.split(","))
  known = {"latent", "naive", "anchored", "overlap"}
  if set(routes) - known:
    p.error(f"--routes: unknown {', '.join(sorted(set(routes) - known))}")
  if not args.no_compile_cache:
    from kvjax import compile_cache
    compile_cache.enable()
  config, weights = load_pipeline_weights(args.weights, tokens_length=16)
  pipeline = TextToVideo(config, weights, T5Tokenizer(os.path.join(args.weights, "spiece.model"), 16))
  cases = judge.prompt_grid()[:args.prompts]
  prompts = [judge.prompt(*case) for case in cases]
  if args.prompt:
    words = args.prompt.split()
    named = [[w for w in words if w in kinds] for kinds in (shapes.COLOURS, shapes.SHAPES, shapes.DIRECTIONS)]
    if any(len(n) != 1 for n in named):
      p.error(f"--prompt {args.prompt!r}: name one colour of {', '.join(shapes.COLOURS)} and one direction of "
              f"{', '.join(shapes.DIRECTIONS)}")
    cases, prompts = [tuple(n[0] for n in named)], [args.prompt]
  stride = 4 ** len(FPS_PASSES[args.fps])
  start = time.perf_counter()
  rows = {route: [] for route in routes}
  for seed in range(args.first_seed, args.first_seed + args.seeds):
    options = GenerationOptions(**{**demo.DEMO_OPTIONS, "seed": seed, "windows": args.windows, "fps": args.fps,
                                   "motion": args.motion})
    reencode = lambda last, pixels, options=options: pipeline.encode_images(
        [Image.fromarray(video[-1]) for video in pixels], options)
    carries = {"latent": None, "naive": reencode, "anchored": Anchor(), "overlap": None}
    for route in routes:
      carry = carries[route]
      chosen = dataclasses.replace(options, window_overlap=args.overlap if route == "overlap" else 1)
      videos = pipeline(prompts, chosen, next_condition=carry)
      bounds = window_bounds(chosen)
      rows[route] += [measure(v, c, d, bounds, stride) for v, (c, _, d) in zip(videos, cases)]
      if args.prompt:
        (colour, _, direction), row = cases[0], rows[route][-1]
        whole = judge.judge_motion(videos[0], colour, direction)
        pixels = shapes.colour_mask(videos[0], colour).sum(axis=(1, 2)).min()
        print(f"seed {seed}, {route}: {len(videos[0])} frames, at least {pixels} pixels of the colour a frame, seam max / median step {row.get('seam_ratio', np.nan):.2f}, seam pair rank "
              f"{row.get('seam_rank', np.nan):.2f}; inside {row.get('inside_ratio', np.nan):.2f}; the whole "
              f"video {'passes' if whole.passed else 'fails'} the direction judge (along {whole.along:.2f}, "
              f"across {whole.across:.2f})")
      print(f"seed {seed}, {route}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if args.save:
      with open(args.save, "w") as f:
        json.dump({**rows, "settings": {"windows": args.windows, "fps": args.fps, "motion": args.motion}}, f)
  print_table(rows, args)
  print(f"\n{time.perf_counter() - start:.0f} s")
  return 0


def print_table(rows: dict, args) -> int:
  routes = list(rows)

  def stat(route, key, kind="median"):
    values = np.array([row.get(key, np.nan) for row in rows[route]], np.float64)
    if kind == "mean":
      return f"{np.nanmean(values):.2f}"
    finite = values[np.isfinite(values)]
    if not len(finite):
      return "n/a"
    tail = f" ({np.percentile(finite, 90):.2f})" if kind == "tail" else ""
    return f"{np.median(finite):.2f}{tail}"

  lines = [("colour in every frame (share of videos)", "colour_everywhere", "mean"),
           ("direction kept in every window (videos)", "direction_every_window", "mean"),
           ("direction kept (windows)", "direction_windows", "mean"),
           ("seam max / median step", "seam_ratio", "tail"),
           ("inside max / median step", "inside_ratio", "tail"),
           ("seam pair rank (0.5: like any pair)", "seam_rank", "mean")]
  for k in range(2, args.windows + 1):
    lines += [(f"window {k}: shape colour drift %", f"colour_drift_{k}", "tail"),
              (f"window {k}: shape size / window 1", f"size_{k}", "tail"),
              (f"window {k}: background drift %", f"background_drift_{k}", "tail")]
  print(f"{len(rows[routes[0]])} videos a route, {args.windows} windows, fps {args.fps}, motion {args.motion}; "
        "shares, means, or medians (90th percentile)")
  print("| measure | " + " | ".join(routes) + " |")
  print("|---" * (len(routes) + 1) + "|")
  for label, key, kind in lines:
    print(f"| {label} | " + " | ".join(stat(route, key, kind) for route in routes) + " |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
