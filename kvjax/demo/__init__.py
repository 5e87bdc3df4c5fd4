"""The embedded demo: a small Kandinsky Video that kvjax trained on a synthetic world of moving shapes
(`python -m train.demo` rebuilds it), the default of `python -m sample` when no --weights are given.

`weights/` is a complete weights folder (the layout of `python -m convert all`, with the tokenizer), its
`sampling.json`, the generation options it was judged with (`python -m sample` reads that file from any
weights folder as its defaults), and `recipe.json`, the recipe of every training stage that made it.
"""

from __future__ import annotations

import os

SAMPLING_DEFAULTS = "sampling.json"
DEMO_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")

# How the demo samples, the options it was judged with (docs/demo.md): the reference's DDPM sampler with 50
# key- and base-frame steps and 10 interpolation steps; motion "high", the score closest to its training
# clips' motion; a first-frame guidance of 8 and the picture itself as image-to-video's first frame.
DEMO_OPTIONS = {"width": 64, "height": 64, "key_frame_steps": 50, "base_frame_steps": 50,
                "interpolation_steps": 10, "sampler": "ddpm", "motion": "high", "guidance_weight_image": 8.0,
                "keep_image": True}


def installed() -> bool:
  return os.path.isfile(os.path.join(DEMO_WEIGHTS, "spiece.model"))
