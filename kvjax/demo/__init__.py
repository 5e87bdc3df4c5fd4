"""The embedded demo: a small Kandinsky Video that kvjax trained on a synthetic world of moving shapes
(`python -m train.demo` rebuilds it), the default of `python -m sample` when no --weights are given.

`weights/` is a complete weights folder (the layout of `python -m convert all`, with the tokenizer) and
its `sampling.json`, the generation options it was judged with (`python -m sample` reads that file from
any weights folder as its defaults).
"""

from __future__ import annotations

import os

SAMPLING_DEFAULTS = "sampling.json"
DEMO_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")

# How the demo samples (what it was judged with): its size; the reference's sampler (DDPM) and 50 steps for
# the key and base frames, its 10 interpolation steps (5 before, below); motion "high", the sampler's score
# closest to its training clips' typical motion (the demo's recipe scales measured motion so that slow /
# medium / fast shapes score about 10 / 30 / 45). Measured by bench/demo_quality.py against DDIM's 25 steps: direction 0.63 -> 0.72 of
# 60 videos, 45 frames moving evenly (largest step < 4x the median) 0.30 -> 0.55, image-to-video direction
# 0.85 -> 0.90, its first-frame IoU median 0.44 -> 0.37; 28 s for `python -m sample` without a compile cache.
# The first frame's guidance weight 5 (the reference's 2) keeps an image-to-video picture: first frames with
# IoU > 0.5 0.25 -> 0.45 of 20 videos (0.28 -> 0.50 of 40 in a probe), text-to-video direction 0.72 -> 0.75
# of 60, travel at motion high 0.28 -> 0.30; 45-frame evenness unchanged. With the sharper decoder of
# demo-video-movq-decoder-more, 12: image-to-video first frames with IoU > 0.5 0.62 -> 0.80 of 40 videos,
# text-to-video direction 0.78 either way (40 videos; a key-frame guidance of 3 or 8, or a text weight of
# 3, did worse: 0.72, 0.70, 0.75). After keyframe_settle, 8 (image-to-video first frames with IoU > 0.5 of 40:
# 0.78 at 6, 0.85 at 8, 0.82 at 10, 0.75 at 12, 0.55 at 20). keep_image (image-to-video starts with the
# picture itself; the UNet's own first frame sat about 2 pixels off it): IoU > 0.5 in 0.75 -> 0.95 of the
# bench's 20 pictures and 0.6 -> 0.8 of tests/sample/test_demo.py's 10, whose ceiling is the MoVQ's own
# round trip of the picture (0.49-0.51 for three of the 10); image-to-video direction unchanged (0.95, 0.9).
# With the 64-wide interpolation UNet (demo-interpolation), the reference's 10 interpolation steps: 45 frames
# stepping evenly in 0.80 of 40 videos (seeds 3 and 4, the same base frames) against 0.72 with 5.
DEMO_OPTIONS = {"width": 64, "height": 64, "key_frame_steps": 50, "base_frame_steps": 50,
                "interpolation_steps": 10, "sampler": "ddpm", "motion": "high", "guidance_weight_image": 8.0,
                "keep_image": True}


def installed() -> bool:
  return os.path.isfile(os.path.join(DEMO_WEIGHTS, "spiece.model"))
