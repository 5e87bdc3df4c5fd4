"""Writes a folder of synthetic moving-shape videos (kvjax.data.shapes) for `python -m train.prepare_data`:

  python -m train.make_shapes OUT --videos N [--seconds 3] [--fps 24] [--size 256] [--seed 0]
      [--size-word huge [--size-word-share 0.75]]
  python -m train.prepare_data OUT prepared/ --captions OUT/captions.jsonl

OUT gets shapes-00000.mp4, ... (H.264, 4:4:4 chroma, near-lossless, so colours survive) and captions.jsonl,
one {"source": "shapes-00000.mp4", "caption": "a red circle moving right", "spec": {...}} per video (the
caption is also the video's title tag). Videos come in triples: videos 3k, 3k+1 and 3k+2 show one scene
(shape, colour, direction, size, start side, background, drawn from (seed, k)) at the slow, medium and fast
speeds, so every run of 3 or more videos has all three and a model sees speed as the only difference.
--size-word draws a word outside the world (kvjax.data.shapes.SIZE_WORDS: "huge") into that share of the
scenes, spread evenly ("a huge red circle moving right"), to teach the demo a new word (docs/fine_tuning.md).
The folder appears only when complete; an existing OUT is refused unless --overwrite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

from kvjax.cli import program_name

# The writer's H.264 settings: constant quality 10 (near-lossless) and full-resolution chroma, so a shape's
# colour is not smeared into its neighbours; edges of 1 px stay sharp.
CRF = 10
PIX_FMT = "yuv444p"
MIN_SIZE, MAX_SIZE = 16, 4096
MAX_VIDEOS = 1_000_000
MAX_VIDEO_BYTES = 2 << 30  # one video's frames are drawn in memory before they are encoded


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=program_name("train.make_shapes", __package__),
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("out", help="new folder for the videos and captions.jsonl")
  p.add_argument("--videos", type=int, required=True, help="how many videos")
  p.add_argument("--seconds", type=float, default=3.0, help="length of each video (prepare_data keeps >= 2 s)")
  p.add_argument("--fps", type=float, default=24.0, help="frame rate (prepare_data keeps >= 23 fps)")
  p.add_argument("--size", type=int, default=256,
                 help="width and height in pixels (prepare_data keeps areas >= 256x256)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--size-word", default="", help="a size word outside the demo's world (huge) for "
                 "--size-word-share of the scenes")
  p.add_argument("--size-word-share", type=float, default=1.0, help="with --size-word: the share of scenes that "
                 "have it (default 1)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
  return p


def check_args(args: argparse.Namespace) -> str | None:
  """The first bad option as a one-line message, or None."""
  if not 1 <= args.videos <= MAX_VIDEOS:
    return f"--videos {args.videos}: give at least 1 and at most {MAX_VIDEOS}"
  if not args.seconds > 0 or not args.fps > 0:
    return f"--seconds {args.seconds} and --fps {args.fps} must be positive"
  if round(args.seconds * args.fps) < 2:
    return f"--seconds {args.seconds} at --fps {args.fps} gives under 2 frames: nothing can move"
  if not MIN_SIZE <= args.size <= MAX_SIZE or args.size % 2:
    return f"--size {args.size}: give an even number of pixels, at least {MIN_SIZE} and at most {MAX_SIZE}"
  video_bytes = round(args.seconds * args.fps) * args.size * args.size * 3
  if video_bytes > MAX_VIDEO_BYTES:
    return (f"--seconds {args.seconds} at --fps {args.fps} and --size {args.size} make videos of "
            f"{video_bytes / (1 << 30):.1f} GiB of frames each, more than the {MAX_VIDEO_BYTES >> 30} GiB drawn at once")
  if args.seed < 0:
    return f"--seed {args.seed}: give a non-negative seed"
  from kvjax.data.shapes import SIZE_WORDS
  if args.size_word and args.size_word not in SIZE_WORDS:
    return f"--size-word {args.size_word!r}: give one of {', '.join(SIZE_WORDS)}"
  if not 0 <= args.size_word_share <= 1:
    return f"--size-word-share {args.size_word_share}: give a share in [0, 1]"
  return None


def filter_warnings(args: argparse.Namespace) -> list[str]:
  """What prepare_data's default filters would drop these videos for."""
  from kvjax.data import filters
  config = filters.FilterConfig()
  drops = [filters.check_duration(args.seconds, config), filters.check_fps(args.fps, config),
           filters.check_size(args.size, args.size, config)]
  return [f"warning: prepare_data's default {drop.reason} filter drops these videos ({drop.detail})"
          for drop in drops if drop is not None]


def video_spec(seed: int, index: int, num_frames: int, size: int, size_word: str = "", share: float = 1.0):
  """The spec of video `index`: scene index // 3 of `seed` at speed class index % 3; with `size_word`, scene k
  has it when floor((k + 1) * share) > floor(k * share) (that share of scenes, spread evenly)."""
  from kvjax.data import shapes
  scene = index // 3
  rng = np.random.default_rng([seed, scene])
  word = size_word if size_word and math.floor((scene + 1) * share) > math.floor(scene * share) else ""
  return shapes.sample_spec(rng, num_frames, resolution=(size, size),
                            speed_class=shapes.SPEED_CLASSES[index % len(shapes.SPEED_CLASSES)], size_word=word)


def write_mp4(path: str, frames: np.ndarray, fps: float, title: str = "") -> None:
  """uint8 (T, H, W, 3) RGB frames -> an H.264 mp4 (CRF, PIX_FMT), with `title` as its title tag."""
  import imageio_ffmpeg
  height, width = frames.shape[1:3]
  output_params = ["-crf", str(CRF)] + (["-metadata", f"title={title}"] if title else [])
  writer = imageio_ffmpeg.write_frames(path, (width, height), fps=fps, codec="libx264", pix_fmt_out=PIX_FMT,
                                       quality=None, macro_block_size=1, output_params=output_params)
  writer.send(None)
  for frame in frames:
    writer.send(np.ascontiguousarray(frame))
  writer.close()


def make_shapes(out: str, *, videos: int, seconds: float, fps: float, size: int, seed: int,
                overwrite: bool = False, size_word: str = "", size_word_share: float = 1.0) -> list[dict]:
  """Writes the folder (see the module docstring); returns the captions.jsonl entries."""
  from kvjax.atomic import staged
  from kvjax.data import shapes
  num_frames = max(2, round(seconds * fps))
  frames_at_24 = 1 + (num_frames - 1) * shapes.FPS / fps  # the same span of time in 24 fps frames
  entries = []
  with staged(out, overwrite=overwrite) as staging:
    for index in range(videos):
      spec = video_spec(seed, index, frames_at_24, size, size_word, size_word_share)
      text = shapes.caption(spec)
      name = f"shapes-{index:05d}.mp4"
      write_mp4(os.path.join(staging, name), shapes.render_clip(spec, num_frames, size, size, fps=fps), fps, text)
      entries.append({"source": name, "caption": text, "spec": spec.to_json()})
    with open(os.path.join(staging, "captions.jsonl"), "w", encoding="utf-8") as f:
      f.writelines(json.dumps(entry) + "\n" for entry in entries)
  return entries


def main(argv=None) -> int:
  from kvjax.atomic import OutputError
  args = _parser().parse_args(argv)
  problem = check_args(args)
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    return 2
  for warning in filter_warnings(args):
    print(warning, file=sys.stderr)
  try:
    entries = make_shapes(args.out, videos=args.videos, seconds=args.seconds, fps=args.fps, size=args.size,
                          seed=args.seed, overwrite=args.overwrite, size_word=args.size_word,
                          size_word_share=args.size_word_share)
  except (FileExistsError, OutputError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{len(entries)} videos and captions.jsonl written to {os.path.abspath(args.out)}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
