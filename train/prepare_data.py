"""Prepares a folder of videos into the tfds training dataset (kvjax.data.prepare):

  python -m train.prepare_data SRC_DIR OUT_DIR [--captions captions.jsonl] [--workers N]
  python -m train.prepare_data SRC_DIR OUT_DIR --engine beam -- BEAM_PIPELINE_OPTIONS

Re-running with the same OUT_DIR skips finished work; the summary table is printed at the end. SRC_DIR may
be a URL Apache Beam reads (gs://...). With --engine beam the per-source work runs as an Apache Beam
pipeline (kvjax.data.beam_engine), its options (--runner=... and the runner's own) after `--`."""

from __future__ import annotations

import argparse
import math
import sys

from kvjax.cli import program_name
from kvjax.data import filters, motion, prepare, scenes, transforms
from kvjax.data.captions import CaptionsError


def parse_args(argv=None) -> argparse.Namespace:
  """The options; those after a `--` are Beam's (args.pipeline_args)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  pipeline_args = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  f, s, t, m = filters.FilterConfig(), scenes.SceneConfig(), transforms.TransformConfig(), motion.MotionConfig()
  parser = argparse.ArgumentParser(prog=program_name("train.prepare_data", __package__),
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("src_dir", help="folder of source videos (searched recursively)")
  parser.add_argument("out_dir", help="output folder: work/ (clip store, ledger) and dataset/ (tfds)")
  parser.add_argument("--captions", help="JSON lines: {\"clip_id\" or \"source\": ..., \"caption\": ...}")
  parser.add_argument("--workers", type=int, default=1, help="processes decoding videos in parallel (the local "
                      "engine; Beam's runner has its own options)")
  parser.add_argument("--engine", choices=prepare.ENGINES, default="local", help="local: this machine's processes; "
                      "beam: an Apache Beam pipeline, its options after `--`")
  parser.add_argument("--seed", type=int, default=0, help="seed of the dataset's shuffled order")
  parser.add_argument("--min-seconds", type=float, default=f.min_seconds)
  parser.add_argument("--min-area", type=int, default=f.min_area, help="minimum width*height in pixels")
  parser.add_argument("--min-side", type=int, default=f.min_side)
  parser.add_argument("--min-fps", type=float, default=f.min_fps)
  parser.add_argument("--max-clip-seconds", type=float, default=s.max_clip_seconds,
                      help="longer videos are split at scene cuts (and long scenes into equal parts)")
  parser.add_argument("--scene-threshold", type=float, default=s.threshold, help="PySceneDetect ContentDetector")
  parser.add_argument("--short-side", type=int, default=t.target_short_side, help="frames larger are scaled down")
  parser.add_argument("--fps", type=float, default=t.target_fps, help="output frame rate")
  parser.add_argument("--motion", choices=("farneback", "raft"), default=m.method)
  parser.add_argument("--raft-weights", help="torchvision RAFT state dict (a local file) for --motion raft")
  parser.add_argument("--raft-variant", choices=("raft_large", "raft_small"), default=m.raft_variant)
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  args.pipeline_args = tuple(pipeline_args)
  return args


def config_from_args(args: argparse.Namespace) -> prepare.PrepareConfig:
  return prepare.PrepareConfig(
      filters=filters.FilterConfig(min_seconds=args.min_seconds, min_area=args.min_area, min_side=args.min_side,
                                   min_fps=args.min_fps),
      scenes=scenes.SceneConfig(max_clip_seconds=args.max_clip_seconds, threshold=args.scene_threshold),
      transform=transforms.TransformConfig(target_short_side=args.short_side, target_fps=args.fps),
      motion=motion.MotionConfig(method=args.motion, raft_weights=args.raft_weights, raft_variant=args.raft_variant))


def check_args(args: argparse.Namespace) -> None:
  """Refuses option values no video can be prepared with, before any work."""
  positive = {"--workers": args.workers, "--max-clip-seconds": args.max_clip_seconds,
              "--scene-threshold": args.scene_threshold, "--short-side": args.short_side, "--fps": args.fps}
  non_negative = {"--seed": args.seed, "--min-seconds": args.min_seconds, "--min-area": args.min_area,
                  "--min-side": args.min_side, "--min-fps": args.min_fps}
  for flag, value in positive.items():
    if not (math.isfinite(value) and value > 0):
      raise ValueError(f"{flag} must be positive, got {value}")
  for flag, value in non_negative.items():
    if not (math.isfinite(value) and value >= 0):
      raise ValueError(f"{flag} must be zero or more, got {value}")
  if args.engine == "beam" and args.workers != 1:
    raise ValueError("--workers is the local engine's; with --engine beam give the runner's own options after "
                     "`--` (the DirectRunner's --direct_num_workers=N)")


def main(argv=None) -> int:
  from kvjax.atomic import sigterm_unwinds
  args = parse_args(argv)
  if args.no_progress:
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()  # the dataset writer's bars
  try:
    check_args(args)
    with sigterm_unwinds():  # a `kill` keeps the finished clips and leaves no staging behind
      summary = prepare.prepare(args.src_dir, args.out_dir, captions_path=args.captions,
                                config=config_from_args(args), workers=args.workers, seed=args.seed,
                                progress=not args.no_progress, engine=args.engine,
                                pipeline_args=args.pipeline_args)
  except (FileNotFoundError, CaptionsError, ValueError, ImportError) as e:  # OutputError (unwritable) too
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(summary.table())
  return 0


if __name__ == "__main__":
  sys.exit(main())
