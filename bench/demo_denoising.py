"""Does a shapes-world weights folder denoise, and does the key-frame sampler keep what the UNet knows?
  python bench/demo_denoising.py --weights /tmp/demo/weights
Table 1: the keyframe UNet's epsilon error (image mode, the prompt's context) on a drawn red circle encoded by
the folder's MoVQ, at several timesteps; and the latents' RMS and largest value.
Table 2: the key frames of three prompts sampled with the pipeline's scheduler (x0 clamped every step: to
[-1, 1] as the reference, or to the box of the folder's latent normalization) and without the clamp: the
mean pixel and the fraction of pixels of the named colour. Latents reaching past the clamp are clipped by it
(issue 12's first demo, without a normalization: RMS 1.19, max 3.3).
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from kvjax.data.shapes import colour_mask
from kvjax.diffusion.ddpm import add_noise
from kvjax.diffusion.schedule import KEYFRAME_SCHEDULER, make_schedule
from kvjax.models.latent_normalization import denormalize
from kvjax.pipeline import samplers
from kvjax.pipeline.pipeline_config import GenerationOptions
from kvjax.pipeline.text_to_video import TextToVideo
from kvjax.pipeline.pipeline_weights import load_pipeline_weights
from kvjax.pipeline.stages import KEY_FRAME
from kvjax.text.tokenizer import T5Tokenizer

PROMPTS = {"a red circle moving right": "red", "a blue square moving left": "blue",
           "a green triangle moving up": "green"}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--weights", default="kvjax/demo/weights")
  p.add_argument("--tokens", type=int, default=16)
  p.add_argument("--steps", type=int, default=25)
  args = p.parse_args(argv)
  config, weights = load_pipeline_weights(args.weights, tokens_length=args.tokens)
  pipe = TextToVideo(config, weights, T5Tokenizer(f"{args.weights}/spiece.model", args.tokens))
  w, programs = pipe._weights(KEY_FRAME), pipe.programs
  f = config.image_movq.downsampling_factor
  size = 2 * 64

  image = Image.new("RGB", (size, size), (20, 20, 25))
  ImageDraw.Draw(image).ellipse((30, 40, 70, 80), fill=(230, 30, 30))
  z = programs.encode()(w.image_movq, pipe._latents, np.asarray(image, np.float32)[None] / 127.5 - 1)
  (context, mask), null, _, length = pipe.encode_text(list(PROMPTS)[:1])
  schedule = make_schedule(KEYFRAME_SCHEDULER)
  rng = np.random.default_rng(0)
  print(f"latents (the UNet's: normalized where the folder has latents.json): RMS {float(jnp.sqrt(jnp.mean(z ** 2))):.3f}, max |z| {float(jnp.abs(z).max()):.3f}")
  print(f"{'t':>5} {'eps MSE':>9}")
  for t in (100, 300, 500, 700, 900):
    eps = jnp.asarray(rng.normal(size=z.shape), jnp.float32)
    noisy = add_noise(schedule, z, eps, t)
    x = jnp.concatenate([noisy, jnp.zeros(z.shape[:-1] + (z.shape[-1] + 1,))], -1)
    pred = programs.keyframe_unet.apply({"params": w.keyframe}, x, jnp.array([float(t)]), context, mask,
                                        input_layer="image", context_length=length)
    print(f"{t:>5} {float(jnp.mean((pred - eps) ** 2)):>9.4f}")

  text, null, _, length = pipe.encode_text(list(PROMPTS))
  options = GenerationOptions(width=64, height=64, sampler="ddim")
  print(f"\n{'x0 clamp':<9} {'prompt':<28} {'mean pixel':>11} {'named colour':>13}")
  for clamp in (True, False):
    sampler = programs.sampler(KEY_FRAME, args.steps, options, normalization=pipe._latents)
    if not clamp:
      sampler = dataclasses.replace(sampler, scheduler=dataclasses.replace(
          sampler.scheduler, thresholding=False, clip_sample=False))
    latents = jax.jit(lambda: samplers.first_frame(programs.keyframe_unet, w.keyframe, text, null, 3.0,
                                                   jax.random.key(0), (size // f, size // f), sampler,
                                                   context_length=length))()
    pixels = programs.image_movq.apply({"params": w.image_movq}, denormalize(pipe._latents, latents), 1,
                                       method="decode")
    frames = np.asarray(jnp.clip((pixels + 1) * 127.5, 0, 255)).astype(np.uint8)
    for frame, (prompt, colour) in zip(frames, PROMPTS.items()):
      print(f"{str(clamp):<9} {prompt:<28} {frame.mean():>11.1f} {colour_mask(frame[None], colour).mean():>13.4f}")


if __name__ == "__main__":
  main()
