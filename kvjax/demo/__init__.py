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

# How the demo samples (what it was judged with): its size, fewer steps than the reference's 50 / 50 / 10,
# and motion "high", the sampler's score closest to its training clips' typical motion (the demo's recipe
# scales measured motion so that slow / medium / fast shapes score about 10 / 30 / 45).
DEMO_OPTIONS = {"width": 64, "height": 64, "key_frame_steps": 25, "base_frame_steps": 25,
                "interpolation_steps": 5, "sampler": "ddim", "motion": "high"}


def installed() -> bool:
  return os.path.isfile(os.path.join(DEMO_WEIGHTS, "spiece.model"))
