"""Validation videos during a UNet run (`python -m train --validation-prompts FILE`): every N steps, each
prompt of the file is sampled through the real pipeline (TextToVideo) with the run's current UNet (its
EMA weights where the run keeps them, as `train.export` writes) and the other models the run loaded, with
a fixed seed per prompt (the same noise at every validation, so the videos compare across steps). Videos
go to WORKDIR/validation/step_N/ (the folder appears whole: kvjax.atomic) and to TensorBoard.

The training trajectory is untouched: a step's randomness is fold_in(seed, step) inside the compiled step,
the data position is the loader's, and validation only reads the state.
"""

from __future__ import annotations

import os
import re
import time

MAX_PROMPTS = 16  # validation samples one video per prompt, at every validation
MAX_PROMPTS_BYTES = 64 << 10
MAX_PROMPT_CHARS = 1000


def read_prompts(path: str) -> list[str]:
  """The prompts of a validation file: one a line; blank lines and lines starting with # are skipped.
  ValueError naming the file: missing, not text, empty, over MAX_PROMPTS prompts or a prompt over
  MAX_PROMPT_CHARS characters."""
  where = f"--validation-prompts {path}"
  if not os.path.isfile(path):
    raise ValueError(f"{where}: no such file")
  if os.path.getsize(path) > MAX_PROMPTS_BYTES:
    raise ValueError(f"{where}: larger than {MAX_PROMPTS_BYTES // 1024} KiB; give at most {MAX_PROMPTS} prompts, "
                     "one a line")
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except UnicodeDecodeError:
    raise ValueError(f"{where}: not UTF-8 text (one prompt a line)") from None
  prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
  if not prompts:
    raise ValueError(f"{where}: no prompts (one a line; # starts a comment)")
  if len(prompts) > MAX_PROMPTS:
    raise ValueError(f"{where}: {len(prompts)} prompts; at most {MAX_PROMPTS} (each is sampled at every validation)")
  long = [i + 1 for i, prompt in enumerate(prompts) if len(prompt) > MAX_PROMPT_CHARS]
  if long:
    raise ValueError(f"{where}: prompt {long[0]} is longer than {MAX_PROMPT_CHARS} characters")
  return prompts


def validation_options(config, weights_dir: str | None):
  """The GenerationOptions of a run's validation: the run's frame size; the 12 base frames for keyframe runs,
  and one interpolation pass (fps medium) for interpolation runs; the weights folder's sampling.json where it
  has one, else the reference's steps (4 4 2 with random weights)."""
  from kvjax.pipeline.pipeline_config import (RANDOM_WEIGHTS_OPTIONS, SAMPLING_DEFAULTS, GenerationOptions,
                                               read_sampling_defaults)
  # Without --weights (random models) sampling is a smoke test, as `python -m sample --weights random`.
  values = dict(RANDOM_WEIGHTS_OPTIONS) if weights_dir is None else read_sampling_defaults(weights_dir)
  path = None if weights_dir is None else os.path.join(weights_dir, SAMPLING_DEFAULTS)
  height, width = config.resolution
  values = {**values, "width": width, "height": height, "fps": "medium" if config.model == "interpolation" else "low"}
  try:
    return GenerationOptions(**values)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{path or 'validation'}: {e}") from None


def _slug(prompt: str) -> str:
  return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "prompt"


class Validator:
  """`validator(step, state)` samples the prompts with the state's UNet and writes them; compiled once (the
  pipeline's stages keep their programs, the UNet's weights are replaced at each call)."""

  def __init__(self, config, prompts: list[str], pipeline_weights, tokenizer, options, workdir: str, *, mesh=None,
               events=None, say=lambda *a: None, unet_weights=lambda params: params):
    import jax.numpy as jnp
    from kvjax.pipeline.text_to_video import TextToVideo
    from kvjax.training.train_config import COMPUTE_DTYPES
    self.config, self.prompts, self.options, self.events, self.say = config, prompts, options, events, say
    self.unet_weights = unet_weights  # a state's parameters -> the UNet's weights (a LoRA run merges its adapters)
    self.folder = os.path.join(workdir, "validation")
    # Offloaded: only the running stage's models are on the devices beside the training state.
    self.pipeline = TextToVideo(config.pipeline_config, pipeline_weights, tokenizer,
                                COMPUTE_DTYPES.get(config.compute_dtype, jnp.float32), mesh=mesh, offload=True)

  def __call__(self, step: int, state) -> str:
    import dataclasses
    from kvjax.atomic import staged
    from kvjax.training.watch import gif_bytes
    start = time.perf_counter()
    params = state.ema_params if state.ema_params is not None else state.params
    self.pipeline.replace_weights(**{self.config.model: self.unet_weights(params)})
    videos = [self.pipeline([prompt], dataclasses.replace(self.options, seed=seed))[0]
              for seed, prompt in enumerate(self.prompts)]
    duration = int(self.options.seconds * 1000 / videos[0].shape[0])  # as `python -m sample` writes GIFs
    path = os.path.join(self.folder, f"step_{step}")
    with staged(path, overwrite=True, folder=True) as staging:
      with open(os.path.join(staging, "prompts.txt"), "w") as f:
        f.writelines(f"{i:02d} seed {i}: {prompt}\n" for i, prompt in enumerate(self.prompts))
      for i, (prompt, video) in enumerate(zip(self.prompts, videos)):
        gif = gif_bytes(video, duration)
        with open(os.path.join(staging, f"{i:02d}-{_slug(prompt)}.gif"), "wb") as f:
          f.write(gif)
        if self.events is not None:
          self.events.video(step, f"validation/{i:02d}-{_slug(prompt)}", video, gif)
    if self.events is not None:
      self.events.flush()
    self.say(f"validation: {len(videos)} video{'s' * (len(videos) != 1)} in {path} "
             f"({time.perf_counter() - start:.1f} s)")
    return path
