"""Text-to-video and image-to-video generation (spec §8): text -> key frame -> 12 base frames ->
interpolation -> temporal MoVQ decode -> uint8 frames.

Each stage is one jit-compiled function per shape and static option; guidance weights, motion score,
noise level and seeds are traced. A batch of prompts runs as one batch through every stage.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from kvjax.diffusion.schedule import SchedulerConfig
from kvjax.models.movq import MoVQ, reference_chunk_sizes
from kvjax.params import build_model
from kvjax.pipeline import samplers
from kvjax.pipeline.config import FPS_PASSES, GenerationOptions, PipelineConfig
from kvjax.pipeline.images import fit_and_crop, to_uint8
from kvjax.pipeline.weights import PipelineWeights
from kvjax.text.conditioning import text_context, unconditional_context


Progress = Callable[[str, float], None]  # (stage, seconds) when a stage ends
StepProgress = Callable[[str, int, int], None]  # (stage, steps done, total) after each denoising step


class TextToVideo:
  """`pipeline(prompts, options, images=None) -> uint8 frames (P, T, H, W, 3)`."""

  def __init__(self, config: PipelineConfig, weights: PipelineWeights, tokenizer, dtype=jnp.float32):
    self.config, self.weights, self.tokenizer = config, weights, tokenizer
    self.keyframe_unet = build_model(config.keyframe, dtype)
    self.interpolation_unet = build_model(config.interpolation, dtype)
    self.image_movq, self.video_movq = MoVQ(config.image_movq), MoVQ(config.video_movq)
    self.text_encoder = build_model(config.text_encoder)
    self._compiled: dict[Any, Callable] = {}
    self._stage, self._step_progress = "", None

  def _on_step(self, done: int, total: int) -> None:
    if self._step_progress is not None:
      self._step_progress(self._stage, done, total)

  def _sampler(self, prediction: str, spacing: str, steps: int, options: GenerationOptions):
    return samplers.SamplerOptions(SchedulerConfig(prediction, spacing, steps), options.sampler, self._on_step)

  def _jit(self, key, make: Callable[[], Callable]) -> Callable:
    if key not in self._compiled:
      self._compiled[key] = jax.jit(make())
    return self._compiled[key]

  # --- stages -----------------------------------------------------------------------------------------

  def encode_text(self, prompts: Sequence[str]):
    """(context, mask) of the prompts, and the unconditional pairs of the two UNets (same length L)."""
    tokens = self.tokenizer(list(prompts))
    encode = self._jit("t5", lambda: lambda p, ids, mask: self.text_encoder.apply({"params": p}, ids, mask))
    hidden = encode(self.weights.text_encoder, tokens.input_ids, tokens.attention_mask)
    text = text_context(self.weights.projections, hidden, tokens.attention_mask, self.config.projections)
    p, length = text[1].shape
    return (text, unconditional_context(self.weights.keyframe_null, p, length),
            unconditional_context(self.weights.interpolation_null, p, length))

  def key_frames(self, text, null, options: GenerationOptions, rng) -> np.ndarray:
    """Stage 1: the first frames at twice the video size, decoded to uint8 (P, 2H, 2W, 3)."""
    f = self.config.image_movq.downsampling_factor
    size = (2 * options.height // f, 2 * options.width // f)
    sampler = self._sampler("epsilon", "leading", options.key_frame_steps, options)
    run = self._jit(("key_frame", size, sampler), lambda: lambda p, movq, text, null, w, rng: self.image_movq.apply(
        {"params": movq}, samplers.first_frame(self.keyframe_unet, p, text, null, w, rng, size, sampler), 1,
        method="decode"))  # one image per decode call, as the reference
    return to_uint8(run(self.weights.keyframe, self.weights.image_movq, text, null,
                        options.key_frame_guidance_scale, rng))

  def encode_images(self, images: Sequence[Image.Image], options: GenerationOptions) -> jax.Array:
    """Resize and crop as the reference, then encode with the image MoVQ: (P, H/8, W/8, 4)."""
    pixels = np.stack([fit_and_crop(image, options.width, options.height) for image in images])
    encode = self._jit("encode", lambda: lambda p, x: self.image_movq.apply({"params": p}, x, method="encode"))
    return encode(self.weights.image_movq, pixels)

  def base_frames(self, key_latents, text, null, options: GenerationOptions, rng) -> jax.Array:
    sampler = self._sampler("epsilon", "leading", options.base_frame_steps, options)
    run = self._jit(("base", sampler), lambda: lambda p, *args: samplers.base_frames(
        self.keyframe_unet, p, *args, sampler))
    return run(self.weights.keyframe, key_latents, text, null, options.guidance_weight_prompt,
               options.guidance_weight_image, options.motion_score, options.noise_augmentation, rng)

  def interpolate(self, frames, text, null, options: GenerationOptions, skip_frames: int, rng) -> jax.Array:
    sampler = self._sampler("v_prediction", "trailing", options.interpolation_steps, options)
    run = self._jit(("interpolate", sampler, skip_frames), lambda: lambda p, frames, text, null, w, rng:
                    samplers.interpolate(self.interpolation_unet, p, frames, text, null, w, skip_frames, rng, sampler))
    return run(self.weights.interpolation, frames, text, null, options.interpolation_guidance_scale, rng)

  def decode_video(self, latents) -> np.ndarray:
    """Stage 4: (P, T, h, w, 4) -> uint8 (P, T, H, W, 3), in the reference's independent chunks (§8.6)."""
    p, t = latents.shape[:2]
    chunks, start = [], 0
    for size in reference_chunk_sizes(t):
      decode = self._jit(("decode_video", size), lambda size=size: lambda params, z: self.video_movq.apply(
          {"params": params}, z, size, method="decode"))
      z = latents[:, start:start + size].reshape(p * size, *latents.shape[2:])
      decoded = to_uint8(decode(self.weights.video_movq, z))
      chunks.append(decoded.reshape(p, size, *decoded.shape[1:]))
      start += size
    return np.concatenate(chunks, axis=1)

  # --- the whole pipeline -----------------------------------------------------------------------------

  def __call__(self, prompts: str | Sequence[str], options: GenerationOptions = GenerationOptions(),
               images: Sequence[Image.Image] | None = None, progress: Progress | None = None,
               step_progress: StepProgress | None = None) -> np.ndarray:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if images is not None and len(images) != len(prompts):
      raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    options.check_size(self.config)
    report = progress or (lambda stage, seconds: None)
    rng = jax.random.key(options.seed)
    key_rng, base_rng, *pass_rngs = jax.random.split(rng, 2 + len(FPS_PASSES[options.fps]))

    self._step_progress = step_progress

    def stage(name, fn, *args):
      self._stage = name
      start = time.perf_counter()
      out = jax.block_until_ready(fn(*args))
      report(name, time.perf_counter() - start)
      return out

    text, keyframe_null, interpolation_null = stage("text", self.encode_text, prompts)
    if images is None:
      key_images = stage("key frame", self.key_frames, text, keyframe_null, options, key_rng)
      images = [Image.fromarray(image) for image in key_images]
    key_latents = stage("encode key frame", self.encode_images, images, options)
    frames = stage("base frames", self.base_frames, key_latents, text, keyframe_null, options, base_rng)
    for i, skip in enumerate(FPS_PASSES[options.fps]):
      frames = stage(f"interpolation {i + 1}", self.interpolate, frames, text, interpolation_null, options, skip,
                     pass_rngs[i])
    return stage("decode", self.decode_video, frames)
