"""Does a LoRA adapter teach the embedded demo its new word, and does the demo keep its old world? Judged by
pixels (kvjax.demo.judge) over the demo's prompt grid (every colour x direction) and several seeds, the
same prompts and seeds with and without the adapter:

  python bench/lora_demo.py --lora huge.safetensors [--weights kvjax/demo/weights] [--seeds 2] [--prompts 20]
      [--rows without,with] [--strip strip.png] [--curve runs/huge/metrics.jsonl curve.png]

The adapter's first trigger word must be a size word of kvjax.data.shapes.SIZE_WORDS ("huge", the walkthrough
of docs/fine_tuning.md). Rows: the new word's prompts ("a huge red circle moving right") and the old world's
("a red circle moving right"), each without and with the adapter: the share of videos whose named colour
covers at least judge.HUGE_AREA of the median frame (huge), whose direction passes (the demo's judge:
the colour's centroid goes the named way by a quarter of the frame, more than across), and both.
Without the adapter the demo's tokenizer reads the new word as <unk>. --prompts N judges N of the grid's 20
prompts (each colour with two opposite-axis directions in turn); --rows without or with runs half the table.

--strip writes, for the first prompts, the frames of a video without and with the adapter (PNG); --curve
draws a run's loss (metrics.jsonl) as a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvjax import demo  # noqa: E402
from kvjax.data import shapes  # noqa: E402
from kvjax.demo import judge  # noqa: E402


def cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def loss_curve(metrics: str, out: str, width: int = 480, height: int = 200) -> None:
  """The loss of a run's metrics.jsonl (each logged step) as a PNG line chart, the log scale of the loss."""
  from PIL import Image, ImageDraw
  points = []
  with open(metrics, encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      if "loss" in record and "step" in record:
        points.append((record["step"], record["loss"]))
  if len(points) < 2:
    raise ValueError(f"{metrics}: fewer than two logged losses")
  steps, losses = np.array(points, np.float64).T
  log = np.log10(losses)
  left, right, top, bottom = 56, 12, 12, 28
  image = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(image)
  x = left + (steps - steps.min()) / max(np.ptp(steps), 1) * (width - left - right)
  lo, hi = np.floor(log.min() * 4) / 4, np.ceil(log.max() * 4) / 4
  y = top + (hi - log) / max(hi - lo, 1e-6) * (height - top - bottom)
  draw.rectangle([left, top, width - right, height - bottom], outline=(160, 160, 160))
  for value in np.arange(lo, hi + 1e-9, 0.25):
    row = top + (hi - value) / max(hi - lo, 1e-6) * (height - top - bottom)
    draw.text((4, row - 6), f"{10 ** value:.3g}", fill="black")
  draw.line(list(zip(x, y)), fill=(40, 70, 200), width=2)
  draw.text((left, height - bottom + 6), f"step {int(steps.min())}", fill="black")
  draw.text((width - right - 70, height - bottom + 6), f"step {int(steps.max())}", fill="black")
  draw.text((width - right - 160, top + 4), "training loss (log scale)", fill="black")
  image.save(out, optimize=True)


def frame_strip(rows: list[np.ndarray], out: str, frames: int = 8) -> None:
  """Rows of videos (T, H, W, 3), `frames` evenly spaced frames each, side by side, one video a row."""
  from PIL import Image
  picks = [video[np.linspace(0, len(video) - 1, frames).round().astype(int)] for video in rows]
  strip = np.concatenate([np.concatenate(list(p), axis=1) for p in picks], axis=0)
  Image.fromarray(strip).save(out, optimize=True)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--lora", required=True, help="the adapter file (python -m train.export on a LoRA run)")
  p.add_argument("--weights", default=demo.DEMO_WEIGHTS)
  p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 for every prompt")
  p.add_argument("--prompts", type=int, default=20, help="how many of the grid's 20 prompts (even: every colour "
                 "with a horizontal and a vertical direction)")
  p.add_argument("--rows", default="without,with", help="without, with or both (comma-separated)")
  p.add_argument("--strip", help="write a PNG of frames without (top) and with (bottom) the adapter")
  p.add_argument("--curve", nargs=2, metavar=("METRICS", "PNG"), help="draw a run's loss curve")
  args = p.parse_args(argv)
  rows = tuple(r.strip() for r in args.rows.split(","))
  grid = judge.prompt_grid()
  if args.seeds < 1 or not 2 <= args.prompts <= len(grid) or args.prompts % 2:
    print(f"error: --seeds {args.seeds} and --prompts {args.prompts}: give at least 1 seed and an even number of "
          f"prompts from 2 to {len(grid)}", file=sys.stderr)
    return 2
  if not rows or any(r not in ("without", "with") for r in rows):
    print(f"error: --rows {args.rows}: give without, with or without,with", file=sys.stderr)
    return 2

  from kvjax.conversion.adapters import AdapterError, adapter_words, check_base, read_adapter
  from kvjax.models.lora import merge
  from kvjax.pipeline.pipeline_config import GenerationOptions
  from kvjax.pipeline.pipeline_weights import load_pipeline_weights
  from kvjax.pipeline.text_to_video import TextToVideo
  from kvjax.text.tokenizer import T5Tokenizer

  try:
    adapter = read_adapter(args.lora, "--lora")
  except AdapterError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  word = adapter.trigger_words[0] if adapter.trigger_words else ""
  if word not in shapes.SIZE_WORDS or adapter.kind != "keyframe_unet":
    print(f"error: --lora {args.lora}: a keyframe UNet adapter whose first trigger word is one of "
          f"{', '.join(shapes.SIZE_WORDS)} (it has {word or 'none'}, {adapter.kind})", file=sys.stderr)
    return 2
  if args.curve:
    loss_curve(*args.curve)

  start, cpu = time.perf_counter(), cpu_seconds()
  config, weights = load_pipeline_weights(args.weights, tokens_length=16)
  check_base(adapter, config.keyframe)
  spiece = os.path.join(args.weights, "spiece.model")
  base_tokenizer = T5Tokenizer(spiece, config.tokens_length)
  tokenizers = {"without": base_tokenizer,
                "with": T5Tokenizer(spiece, config.tokens_length, words=adapter_words([adapter]))}
  keyframes = {"without": weights.keyframe, "with": merge(weights.keyframe, adapter.adapters, adapter.scale)}
  pipeline = TextToVideo(config, weights, base_tokenizer)
  options = dict(demo.DEMO_OPTIONS)
  # Colour i's directions in the order i, i + 2, i + 1, i + 3 (of left, right, up, down): the first half of
  # the grid's prompts has every colour with a horizontal and a vertical direction.
  order = sorted(range(len(grid)), key=lambda k: ([0, 2, 1, 3].index((k % 4 - k // 4) % 4), k))
  cases = [grid[k] for k in order[:args.prompts]]
  prompts = {"new": [f"a {word} {judge.prompt(*case)[2:]}" for case in cases],
             "old": [judge.prompt(*case) for case in cases]}
  print(f"'{prompts['new'][0]}': without the adapter {base_tokenizer.encode(prompts['new'][0])}, with it "
        f"{tokenizers['with'].encode(prompts['new'][0])}", file=sys.stderr)

  results, strips = {}, []
  for adapted in rows:
    pipeline.replace_weights(keyframe=keyframes[adapted])
    pipeline.tokenizer = tokenizers[adapted]
    for world in ("new", "old"):
      verdicts = []
      for seed in range(args.seeds):
        videos = pipeline(prompts[world], GenerationOptions(**{**options, "seed": seed}))
        for video, (colour, _, direction) in zip(videos, cases):
          huge = judge.colour_area(video, colour) >= judge.HUGE_AREA
          verdicts.append((huge, judge.judge_motion(video, colour, direction).passed))
        if world == "new" and seed == 0:
          strips.append(videos[:3])
      r = results[world, adapted] = np.array(verdicts, bool)
      print(f"{world} world {adapted} the adapter: {word} {r[:, 0].mean():.2f}, direction {r[:, 1].mean():.2f}, "
            f"both {(r[:, 0] & r[:, 1]).mean():.2f} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)

  videos = len(cases) * args.seeds
  print(f"\n{os.path.basename(args.lora)}: rank {adapter.rank} on {','.join(adapter.targets)}, step {adapter.step}, "
        f"trigger word {word!r} read as {adapter.trigger_tokens.get(word, '?')}; {len(cases)} prompts x "
        f"{args.seeds} seeds = {videos} videos a row; demo sampling {options['sampler']} "
        f"{options['key_frame_steps']}/{options['base_frame_steps']} steps, motion {options['motion']}")
  print(f"{'prompts':<34}{'adapter':>9}{word:>8}{'direction':>11}{'both':>7}")
  for world in ("new", "old"):
    for adapted in rows:
      r = results[world, adapted]
      print(f"{prompts[world][0] + ' ...':<34}{adapted:>9}{r[:, 0].mean():8.2f}{r[:, 1].mean():11.2f}"
            f"{(r[:, 0] & r[:, 1]).mean():7.2f}")
  if len(rows) == 2:
    base, kept = results["old", "without"][:, 1].mean(), results["old", "with"][:, 1].mean()
    print(f"old world's direction pass rate with the adapter / without: {kept:.2f} / {base:.2f} = "
          f"{kept / base if base else float('nan'):.2f}")
  print(f"{time.perf_counter() - start:.0f} s wall, {cpu_seconds() - cpu:.0f} s CPU (user+sys)")
  if args.strip and len(strips) == 2:
    frame_strip([v for pair in zip(*strips) for v in pair], args.strip)
  return 0


if __name__ == "__main__":
  sys.exit(main())
