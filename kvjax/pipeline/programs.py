"""The pure programs of the generation stages: functions of (weights, inputs) that `TextToVideo` jit-compiles
and calls with placed weights, and that a benchmark lowers with abstract ones (shapes and shardings only, no
weights) to read a production stage's memory and FLOPs from XLA.

Nothing here holds weights or state: a `StagePrograms` is the models (flax modules, built for a dtype and an
attention implementation) and, on a mesh, the batch sharding every UNet and decoder batch is split by.

A UNet's weights may be `kvjax.models.lora.RuntimeAdapters` (LoRA applied at run time): its stage merges them
first, once per call, outside the denoising loop.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from kvjax.models.latent_normalization import LatentNormalization, denormalize, normalize
from kvjax.models.lora import params_of
from kvjax.params import build_model
from kvjax.pipeline import samplers
from kvjax.pipeline.pipeline_config import GenerationOptions, PipelineConfig
from kvjax.pipeline.stages import BASE_FRAMES, INTERPOLATION, KEY_FRAME, Stage
from kvjax.sharding import batch_sharding, constrain_batch
from kvjax.text.conditioning import project_context


class StagePrograms:
  """`text()`, `key_frame(size, sampler)`, `encode()`, `base_frames(sampler)`, `interpolation(sampler, skip)`,
  `decode(frames)`: each returns the stage's function, whose arguments are documented on it."""

  def __init__(self, config: PipelineConfig, dtype=jnp.float32, attention: str = "xla",
               mesh: jax.sharding.Mesh | None = None):
    self.config = config
    model = lambda c: build_model(c, dtype, attention=attention)
    self.keyframe_unet, self.interpolation_unet = model(config.keyframe), model(config.interpolation)
    self.image_movq, self.video_movq = model(config.image_movq), model(config.video_movq)
    # T5 runs its blocks as one scan (compile time independent of depth): weights in the scanned layout.
    self.text_encoder = model(config.text_encoder).clone(scan_layers=True)
    self.batch = None if mesh is None else batch_sharding(mesh)

  def sampler(self, stage: Stage, steps: int, options: GenerationOptions,
              on_step: Callable[[int, int], None] | None = None,
              normalization: LatentNormalization | None = None) -> samplers.SamplerOptions:
    """The static sampling choices of a denoising stage (KEY_FRAME, BASE_FRAMES or INTERPOLATION of
    kvjax.pipeline.stages). Under a latent normalization the predicted x0 is clamped to its sample range, the
    box its latents occupy, instead of the reference's [-1, 1]. The stage's feature-cache schedule comes from
    the options (`GenerationOptions.full_steps`)."""
    scheduler = dataclasses.replace(stage.scheduler, num_inference_steps=steps)
    if normalization is not None:
      scheduler = dataclasses.replace(scheduler, thresholding=False, clip_sample=True,
                                      clip_sample_range=normalization.sample_range)
    return samplers.SamplerOptions(scheduler, options.sampler, on_step, self.batch,
                                   options.full_steps(stage.cache_interval, steps))

  def text(self) -> Callable:
    """(t5 params, projections, token ids (P, N), mask (P, N)) -> projected context (P, N, D)."""
    return lambda t5, projections, ids, mask: project_context(
        projections, self.text_encoder.apply({"params": t5}, ids, mask), mask, config=self.config.projections)

  def key_frame(self, latent_size: tuple[int, int], sampler: samplers.SamplerOptions) -> Callable:
    """(keyframe params, image MoVQ params, latent normalization, text, null, guidance scale, rng, context
    length) -> key frames decoded to pixels in [-1, 1] (P, 8h, 8w, 3), one image per decode call as the
    reference."""
    def key_frame(unet, movq, normalization, text, null, scale, rng, length):
      latents = KEY_FRAME.sampler(self.keyframe_unet, params_of(unet), text, null, scale, rng, latent_size, sampler,
                                  context_length=length)
      return self.image_movq.apply({"params": movq}, denormalize(normalization, latents), 1, method="decode")
    return key_frame

  def encode(self) -> Callable:
    """(image MoVQ params, latent normalization, pixels (P, H, W, 3) uint8) -> the UNets' latents
    (P, H/8, W/8, 4)."""
    return lambda movq, normalization, pixels: normalize(
        normalization, self.image_movq.apply({"params": movq}, pixels, method="encode"))

  def base_frames(self, sampler: samplers.SamplerOptions) -> Callable:
    """(keyframe params, key latents, text, null, text weight, image weight, motion score, noise level, rng,
    context length, held frames (int32: how many leading frames are held), held latents (P, 12, h, w, 4)) ->
    base-frame latents (P, 12, h, w, 4)."""
    return lambda unet, *inputs: BASE_FRAMES.sampler(self.keyframe_unet, params_of(unet), *inputs[:-3], sampler,
                                                      context_length=inputs[-3], keep_key_frame=inputs[-2],
                                                      held_latents=inputs[-1])

  def interpolation(self, sampler: samplers.SamplerOptions, skip_frames: int) -> Callable:
    """(interpolation params, frames (P, T, h, w, 4), text, null, guidance scale, rng, context length) ->
    the frames with 3 predicted between each pair."""
    return lambda unet, frames, text, null, scale, rng, length: INTERPOLATION.sampler(
        self.interpolation_unet, params_of(unet), frames, text, null, scale, skip_frames, rng, sampler, context_length=length)

  def decode(self, frames: int) -> Callable:
    """(video MoVQ params, latent normalization, the UNets' latents (P * frames, h, w, 4)) -> pixels in
    [-1, 1]: one chunk of `frames` frames, split over the data-parallel axes on a mesh."""
    return lambda movq, normalization, z: self.video_movq.apply(
        {"params": movq}, denormalize(normalization, constrain_batch(z, self.batch)), frames, method="decode")

