"""How well the embedded demo (or any shapes-world weights folder) does what its prompts say, by the judges of
kvjax.demo.judge, over every colour x direction and several seeds; prints tables.

  python bench/demo_quality.py [--weights kvjax/demo/weights] [--seeds 3] [--steps 25] [--sampler ddpm]

Rows: direction pass rate (centroid along the named way >= a quarter of the frame, more than across) per
colour and per direction; mean travel at motion low / medium / high; image-to-video first-frame IoU and
pass rate; 45-frame step evenness (largest centroid step / median step).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvjax import demo  # noqa: E402
from kvjax.data import shapes  # noqa: E402
from kvjax.demo import judge  # noqa: E402
from kvjax.diffusion.loop import SAMPLERS  # noqa: E402


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--weights", default=demo.DEMO_WEIGHTS)
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--steps", type=int, help="denoising steps of the key and base frames (default: the demo's)")
  p.add_argument("--sampler", choices=SAMPLERS, help="(default: the demo's)")
  args = p.parse_args(argv)

  from PIL import Image
  from kvjax.pipeline.pipeline_config import GenerationOptions
  from kvjax.pipeline.text_to_video import TextToVideo
  from kvjax.pipeline.pipeline_weights import load_pipeline_weights
  from kvjax.text.tokenizer import T5Tokenizer

  config, weights = load_pipeline_weights(args.weights, tokens_length=16)
  pipeline = TextToVideo(config, weights, T5Tokenizer(os.path.join(args.weights, "spiece.model"), 16))
  base = dict(demo.DEMO_OPTIONS)
  if args.steps:
    base.update(key_frame_steps=args.steps, base_frame_steps=args.steps)
  if args.sampler:
    base.update(sampler=args.sampler)
  cases = judge.prompt_grid()
  prompts = [judge.prompt(*case) for case in cases]
  generate = lambda seed, images=None, **kw: pipeline(prompts, GenerationOptions(**{**base, "seed": seed, **kw}), images)

  start = time.perf_counter()
  verdicts, travel = [], {}
  for seed in range(args.seeds):
    videos = generate(seed)
    verdicts += [judge.judge_motion(v, c, d) for v, (c, _, d) in zip(videos, cases)]
  for motion in ("low", "medium", "high"):
    videos = generate(0, motion=motion)
    travel[motion] = np.nanmean([judge.judge_motion(v, c, d).along for v, (c, _, d) in zip(videos, cases)])
  rng = np.random.default_rng(5)
  pictures = [shapes.render_clip(shapes.sample_spec(rng, 45, colour=c, shape=s, direction=d, speed_class="fast"),
                                 1, base["height"], base["width"])[0] for c, s, d in cases]
  videos = generate(0, images=[Image.fromarray(p) for p in pictures])
  iou = [judge.first_frame_match(v[0], p, c) for v, p, (c, _, _) in zip(videos, pictures, cases)]
  i2v = [judge.judge_motion(v, c, d).passed for v, (c, _, d) in zip(videos, cases)]
  videos = generate(0, fps="medium")
  evenness = [judge.step_evenness(v, c) for v, (c, _, _) in zip(videos, cases)]

  print(f"direction pass rate over {len(verdicts)} videos ({args.seeds} seeds x {len(cases)} prompts, motion "
        f"{base['motion']}, {base['sampler']} {base['key_frame_steps']}/{base['base_frame_steps']} steps): "
        f"{np.mean([v.passed for v in verdicts]):.2f}")
  print(f"{'':10}" + "".join(f"{d:>8}" for d in shapes.DIRECTIONS) + f"{'all':>8}")
  for colour in shapes.COLOURS:
    row = [np.mean([v.passed for v in verdicts if v.colour == colour and v.direction == d]) for d in shapes.DIRECTIONS]
    print(f"{colour:10}" + "".join(f"{r:8.2f}" for r in row) +
          f"{np.mean([v.passed for v in verdicts if v.colour == colour]):8.2f}")
  print("\nmean travel along the named direction (fraction of the frame), seed 0:")
  for motion, value in travel.items():
    print(f"  motion {motion:<7} {value:6.3f}")
  print(f"\nimage-to-video: first-frame IoU median {np.median(iou):.2f}, IoU > 0.5 in {np.mean(np.array(iou) > 0.5):.2f}, "
        f"direction passes {np.mean(i2v):.2f}")
  finite = np.array(evenness)[np.isfinite(evenness)]
  print(f"45 frames: step evenness (max / median step) median {np.median(finite) if len(finite) else float('nan'):.2f}, "
        f"< 4 in {np.mean(np.array(evenness) < 4):.2f}")
  print(f"\n{time.perf_counter() - start:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
