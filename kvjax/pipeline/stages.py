"""The stages of generation, each described once (spec §8): its name, the models it runs and, for the three
denoising stages, the scheduler the reference samples with, the option that holds its step count and its
sampler. `STAGES` lists them in the order they run. The pipeline (kvjax.pipeline.text_to_video) reads these
descriptions for what to place on the devices under offloading, its compiled programs' cache keys and its
progress reports; its programs (kvjax.pipeline.programs) for the samplers' settings.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from kvjax.diffusion.schedule import INTERPOLATION_SCHEDULER, KEYFRAME_SCHEDULER, SchedulerConfig
from kvjax.pipeline import samplers


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str  # as progress reports name it
  models: tuple[str, ...]  # the PipelineWeights fields it runs: what offloading places for it
  # A denoising stage's: the reference's scheduler (its step count comes from the options), the
  # GenerationOptions field of its step count, and its function of kvjax.pipeline.samplers.
  scheduler: SchedulerConfig | None = None
  steps: str | None = None
  sampler: Callable | None = None
  cache_interval: str | None = None  # the GenerationOptions field of its feature-cache interval


TEXT = Stage("text", ("text_encoder", "projections"))
KEY_FRAME = Stage("key frame", ("keyframe", "image_movq"), KEYFRAME_SCHEDULER, "key_frame_steps", samplers.first_frame,
                  "key_frame_cache_interval")
ENCODE = Stage("encode key frame", ("image_movq",))
BASE_FRAMES = Stage("base frames", ("keyframe",), KEYFRAME_SCHEDULER, "base_frame_steps", samplers.base_frames,
                    "base_frame_cache_interval")
INTERPOLATION = Stage("interpolation", ("interpolation",), INTERPOLATION_SCHEDULER, "interpolation_steps",
                      samplers.interpolate, "interpolation_cache_interval")
DECODE = Stage("decode", ("video_movq",))

# In the order they run (the key frame only when no image is given; interpolation once per pass).
STAGES = (TEXT, KEY_FRAME, ENCODE, BASE_FRAMES, INTERPOLATION, DECODE)
