"""Text-to-video and image-to-video generation (spec §8): text -> key frame -> 12 base frames ->
interpolation -> temporal MoVQ decode -> uint8 frames.

Each stage is one jit-compiled function per shape and static option; guidance weights, motion score,
noise level, seeds and the prompts' length are traced (the context is padded to the tokenizer length and
carries the reference's length L), so new prompts and settings reuse the compiled stages. A batch of prompts
runs as one batch through every stage.

Weights cross to the devices once, when the pipeline is made: on one device, or on a mesh, sharded by the
rule table of kvjax.sharding (FSDP and tensor parallelism), with every UNet and decoder batch (guidance
branches x prompts x frames) split over the data-parallel axes. `offload=True` keeps the weights in host
memory and places only the running stage's models (T5 leaves once the text is encoded), for devices too
small for all of them; the frames are the same.
"""

from __future__ import annotations

import dataclasses
import time
import types
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from PIL import Image

from kvjax.models.lora import RuntimeAdapters, abstract_adapters
from kvjax.models.movq import reference_chunk_sizes
from kvjax.models.t5_encoder import SCANNED_BLOCKS, scan_layout
from kvjax.params import abstract_params
from kvjax.quantization import boxed_like
from kvjax.pipeline.pipeline_config import FPS_PASSES, GenerationOptions, PipelineConfig
from kvjax.pipeline.images import fit_and_crop, to_uint8
from kvjax.pipeline.programs import StagePrograms
from kvjax.pipeline.samplers import NUM_BASE_FRAMES
from kvjax.pipeline.pipeline_weights import PipelineWeights
from kvjax.pipeline.stages import BASE_FRAMES, DECODE, ENCODE, INTERPOLATION, KEY_FRAME, STAGES, TEXT, Stage
from kvjax.sharding import param_shardings, replicated
from kvjax.text.conditioning import context_length, unconditional_context


Progress = Callable[[str, float], None]  # (stage, seconds) when a stage ends
StepProgress = Callable[[str, int, int], None]  # (stage, steps done, total) after each denoising step

@dataclasses.dataclass(frozen=True)
class _StageSteps:
  """The host callback of one stage's denoising loop. Hashable by value: a stage compiled with a progress
  function is reused whenever the same function is passed again."""

  stage: str
  report: StepProgress

  def __call__(self, done: int, total: int) -> None:
    self.report(self.stage, done, total)


def model_shardings(config: PipelineConfig, field: str, mesh: Mesh, like=None):
  """One model's parameters (a PipelineWeights field) sharded by the rule table. `like` (arrays or shapes, T5
  in the per-block layout): where it holds int8 kernels, their values and scales are sharded as the float
  kernel (kvjax.quantization.boxed_like); a UNet's RuntimeAdapters: its base so, each adapter by its kernel's
  logical axes (kvjax.models.lora.abstract_adapters), the scales replicated; None: the float model."""
  boxed = abstract_params(getattr(config, field))
  if like is None:
    return param_shardings(boxed, mesh)
  if isinstance(like, RuntimeAdapters):
    scalars = tuple(replicated(mesh) for _ in like.strengths)
    return like.replace(base=model_shardings(config, field, mesh, like.base), factors=scalars, strengths=scalars,
                        adapters=tuple(param_shardings(abstract_adapters(getattr(config, field), c), mesh)
                                       for c in like.configs))
  if field == "text_encoder" and SCANNED_BLOCKS in like["encoder"]:  # read scanned: each block is like the stack
    encoder = dict(like["encoder"])
    stacked = encoder.pop(SCANNED_BLOCKS)
    blocks = {f"block_{i}": stacked for i in range(1, config.text_encoder.num_layers)}
    like = {**like, "encoder": {**encoder, **blocks}}
  return param_shardings(boxed_like(boxed, like), mesh)


def weight_shardings(config: PipelineConfig, mesh: Mesh, weights: PipelineWeights | None = None) -> PipelineWeights:
  """Every model's parameters sharded by the rule table (kvjax.sharding, `model_shardings`); null embeddings
  replicated; T5 in its scanned layout (the stacked blocks' leading axis whole). `weights` (arrays or shapes,
  T5 in the per-block layout): int8 kernels and run-time adapters are placed as `model_shardings` says; None:
  float models."""
  model = lambda field: model_shardings(config, field, mesh, None if weights is None else getattr(weights, field))
  stacked = lambda first, *rest: NamedSharding(mesh, PartitionSpec(None, *first.spec))
  return PipelineWeights(
      keyframe=model("keyframe"), keyframe_null=replicated(mesh), interpolation=model("interpolation"),
      interpolation_null=replicated(mesh), image_movq=model("image_movq"), video_movq=model("video_movq"),
      text_encoder=scan_layout(model("text_encoder"), config.text_encoder.num_layers, stacked),
      projections=model("projections"), latent_normalization=replicated(mesh))


def window_stage(name: str, window: int, windows: int) -> str:
  """A stage's name in progress reports: "base frames", or "base frames [2/3]" in window 2 of a long video."""
  return name if windows == 1 else f"{name} [{window + 1}/{windows}]"


class TextToVideo:
  """`pipeline(prompts, options, images=None) -> uint8 frames (P, T, H, W, 3)`.

  `dtype`: the computation type of every model (float32, the reference, or bfloat16; softmaxes and norms
  stay in float32; int8 kernels, kvjax.quantization, are dequantized to it where each layer reads them).
  `attention`: "xla" (ours, the reference's arithmetic), "jax" or "cudnn"
  (jax.nn.dot_product_attention; cuDNN on NVIDIA GPUs). `mesh`: a mesh of kvjax.sharding.make_mesh (axes data, fsdp, tensor) to shard weights and batches over;
  None runs on the default device. `offload`: keep weights in host memory, placing each stage's own.
  """

  def __init__(self, config: PipelineConfig, weights: PipelineWeights, tokenizer, dtype=jnp.float32,
               mesh: Mesh | None = None, offload: bool = False, attention: str = "xla"):
    self.config, self.tokenizer, self.mesh, self.offload = config, tokenizer, mesh, offload
    self.programs = StagePrograms(config, dtype, attention, mesh)
    self._shardings = None if mesh is None else weight_shardings(config, mesh, weights)
    weights = weights.replace(text_encoder=scan_layout(weights.text_encoder, config.text_encoder.num_layers))
    self._compiled: dict[Any, Callable] = {}
    if offload:  # the models stay in host memory: `_weights` places a stage's own, freeing the others
      self._host, self._placed = jax.device_get(weights), {}
      # Small: always on the devices.
      small = (weights.keyframe_null, weights.interpolation_null, weights.latent_normalization)
      *self._nulls, self._latents = jax.device_put(small, None if mesh is None else replicated(mesh))
    else:
      self._host, self._placed = None, self._place(weights)
      self._nulls = (self._placed.keyframe_null, self._placed.interpolation_null)
      self._latents = self._placed.latent_normalization

  def _place(self, tree, field: str | None = None):
    """`tree` on the devices: the default one, or sharded on the mesh as the rule table says for `field`
    (None: the whole PipelineWeights)."""
    if self._shardings is None:
      return jax.device_put(tree)
    return jax.device_put(tree, self._shardings if field is None else getattr(self._shardings, field))

  def _weights(self, stage: Stage):
    """The models of `stage` on the devices (all of them, placed at construction, without offload)."""
    if not self.offload:
      return self._placed
    wanted = set(stage.models)
    for field in set(self._placed) - wanted:
      jax.tree.map(lambda a: a.delete(), self._placed.pop(field))
    for field in wanted - set(self._placed):
      self._placed[field] = self._place(getattr(self._host, field), field)
    return types.SimpleNamespace(**self._placed)

  def replace_weights(self, **models) -> None:
    """Replaces the UNets' weights (`keyframe=`, `interpolation=`: parameter trees, or RuntimeAdapters),
    keeping every compiled stage (the weights are the stages' arguments): a training run's validation samples
    its current UNet without compiling the pipeline again (a tree of another structure, e.g. adapters where
    there were none, compiles its stages once)."""
    unknown = sorted(set(models) - {"keyframe", "interpolation"})
    if unknown:
      raise ValueError(f"replace_weights takes keyframe= and interpolation=, not {', '.join(unknown)}")
    if self._shardings is not None:
      self._shardings = self._shardings.replace(**{field: model_shardings(self.config, field, self.mesh, tree)
                                                   for field, tree in models.items()})
    if self.offload:
      self._host = self._host.replace(**jax.device_get(models))
      for field in set(models) & set(self._placed):
        jax.tree.map(lambda a: a.delete(), self._placed.pop(field))
    else:
      self._placed = self._placed.replace(**{field: self._place(tree, field) for field, tree in models.items()})

  def set_lora_scales(self, **scales: Sequence[float]) -> None:
    """New strengths of the run-time LoRA adapters (`keyframe=`, `interpolation=`: one per adapter of that
    UNet, in the order they were given): only the scalars are placed again, and the compiled stages are reused
    (the strengths are traced)."""
    for field, values in scales.items():
      if field not in ("keyframe", "interpolation"):
        raise ValueError(f"set_lora_scales takes keyframe= and interpolation=, not {field}")
      adapted = getattr(self._host if self.offload else self._placed, field)
      if not isinstance(adapted, RuntimeAdapters) or len(adapted.strengths) != len(values):
        have = len(adapted.strengths) if isinstance(adapted, RuntimeAdapters) else 0
        raise ValueError(f"set_lora_scales({field}=...): {len(values)} scales for the {have} adapters applied at "
                         f"run time to the {field} UNet (with_adapters(..., mode='runtime'))")
      host = tuple(np.float32(v) for v in values)
      where = None if self.mesh is None else replicated(self.mesh)
      if self.offload:
        self._host = self._host.replace(**{field: adapted.replace(strengths=host)})
        if field in self._placed:
          self._placed[field] = self._placed[field].replace(strengths=jax.device_put(host, where))
      else:
        self._placed = self._placed.replace(**{field: adapted.replace(strengths=jax.device_put(host, where))})

  def placed_models(self) -> list[str]:
    """The models whose weights are on the devices now."""
    if not self.offload:
      return [f.name for f in dataclasses.fields(PipelineWeights) if any(f.name in s.models for s in STAGES)]
    return sorted(self._placed)

  def _sampler(self, stage: Stage, options: GenerationOptions, step_progress: StepProgress | None,
               name: str | None = None):
    """The sampling choices of a denoising stage, with its step count from `options`; its steps are reported
    under `name` (default: the stage's)."""
    on_step = None if step_progress is None else _StageSteps(name or stage.name, step_progress)
    return self.programs.sampler(stage, getattr(options, stage.steps), options, on_step, self._latents)

  def _jit(self, stage: Stage, static: tuple, make: Callable[[], Callable]) -> Callable:
    """The program `make()` of `stage`, compiled once per value of its static choices `static`."""
    key = (stage.name, *static)
    if key not in self._compiled:
      self._compiled[key] = jax.jit(make())
    return self._compiled[key]

  # --- stages -----------------------------------------------------------------------------------------

  def encode_text(self, prompts: Sequence[str]):
    """(text, keyframe null, interpolation null, L): (context, mask) pairs padded to the tokenizer length
    (zeros, masked), and the reference's context length L (the longest prompt + 1, spec §6.4) as a traced
    int32 that the UNets use where L matters (the text pooling's mean)."""
    w = self._weights(TEXT)
    tokens = self.tokenizer(list(prompts))
    encode = self._jit(TEXT, (), self.programs.text)
    context = encode(w.text_encoder, w.projections, tokens.input_ids, tokens.attention_mask)
    mask = jnp.asarray(tokens.attention_mask).astype(bool)
    p, padded = mask.shape
    keyframe_null, interpolation_null = (unconditional_context(null, p, padded) for null in self._nulls)
    return (context, mask), keyframe_null, interpolation_null, jnp.int32(context_length(tokens.attention_mask))

  def key_frames(self, text, null, length, options: GenerationOptions, rng, step_progress=None) -> np.ndarray:
    """Stage 1: the first frames at twice the video size, decoded to uint8 (P, 2H, 2W, 3)."""
    w = self._weights(KEY_FRAME)
    f = self.config.image_movq.downsampling_factor
    size = (2 * options.height // f, 2 * options.width // f)
    sampler = self._sampler(KEY_FRAME, options, step_progress)
    run = self._jit(KEY_FRAME, (size, sampler), lambda: self.programs.key_frame(size, sampler))
    return to_uint8(run(w.keyframe, w.image_movq, self._latents, text, null, options.key_frame_guidance_scale, rng,
                        length))

  def encode_images(self, images: Sequence[Image.Image], options: GenerationOptions) -> jax.Array:
    """Resize and crop as the reference, then encode with the image MoVQ: (P, H/8, W/8, 4)."""
    w = self._weights(ENCODE)
    pixels = np.stack([fit_and_crop(image, options.width, options.height) for image in images])
    encode = self._jit(ENCODE, (), self.programs.encode)
    return encode(w.image_movq, self._latents, pixels)

  def base_frames(self, key_latents, text, null, length, options: GenerationOptions, rng,
                  step_progress=None, keep_key_frame: bool = False, held=None) -> jax.Array:
    """`keep_key_frame`: frame 0 is the key frame itself (samplers.base_frames). `held` (P, K, h, w, 4): the
    first K frames are these latents (a long video's overlap; `key_latents` is the first). Both traced: no
    recompile."""
    w = self._weights(BASE_FRAMES)
    sampler = self._sampler(BASE_FRAMES, options, step_progress)
    run = self._jit(BASE_FRAMES, (sampler,), lambda: self.programs.base_frames(sampler))
    p = key_latents.shape[0]
    if held is None:
      count, held = int(keep_key_frame), jnp.broadcast_to(key_latents[:, None], (p, NUM_BASE_FRAMES, *key_latents.shape[1:]))
    else:
      count = held.shape[1]
      held = jnp.concatenate([held, jnp.zeros((p, NUM_BASE_FRAMES - count, *held.shape[2:]), held.dtype)], axis=1)
    held = jax.device_put(held.astype(jnp.float32), key_latents.sharding)
    return run(w.keyframe, key_latents, text, null, options.guidance_weight_prompt, options.guidance_weight_image,
               options.motion_score, options.noise_augmentation, rng, length, jnp.int32(count), held)

  def interpolate(self, frames, text, null, length, options: GenerationOptions, skip_frames: int, rng,
                  step_progress=None, name: str = INTERPOLATION.name) -> jax.Array:
    """`name`: the pass's, which its steps are reported under."""
    w = self._weights(INTERPOLATION)
    sampler = self._sampler(INTERPOLATION, options, step_progress, name)
    run = self._jit(INTERPOLATION, (sampler, skip_frames), lambda: self.programs.interpolation(sampler, skip_frames))
    return run(w.interpolation, frames, text, null, options.interpolation_guidance_scale, rng, length)

  def decode_video(self, latents) -> np.ndarray:
    """Stage 4: (P, T, h, w, 4) -> uint8 (P, T, H, W, 3), in the reference's independent chunks (§8.6),
    each chunk's frames split over the data-parallel axes on a mesh."""
    w = self._weights(DECODE)
    p, t = latents.shape[:2]
    chunks, start = [], 0
    for size in reference_chunk_sizes(t):
      decode = self._jit(DECODE, (size,), lambda size=size: self.programs.decode(size))
      z = latents[:, start:start + size].reshape(p * size, *latents.shape[2:])
      decoded = to_uint8(decode(w.video_movq, self._latents, z))
      chunks.append(decoded.reshape(p, size, *decoded.shape[1:]))
      start += size
    return np.concatenate(chunks, axis=1)

  # --- the whole pipeline -----------------------------------------------------------------------------

  def __call__(self, prompts: str | Sequence[str | Sequence[str]], options: GenerationOptions = GenerationOptions(),
               images: Sequence[Image.Image] | None = None, progress: Progress | None = None,
               step_progress: StepProgress | None = None,
               next_condition: Callable[[jax.Array, np.ndarray], jax.Array] | None = None) -> np.ndarray:
    """uint8 (videos, options.num_frames, H, W, 3). `prompts`: one per video; with `options.windows` > 1 a
    video's prompt may be a list, one per window (see window_prompts).

    Long videos (`options.windows`): window 1 is the video of one window; window k+1 holds window k's last
    K = `options.window_overlap` base-frame latents as its first K frames (the first is also its condition,
    noise-augmented as usual; all are held as `keep_image` holds a picture) and denoises 12 - K new base
    frames around them. Each window's 12 base frames are interpolated as one clip, so the seam pair (the last
    held frame and the first new one) is interpolated like any other, and decoded in the reference's chunks
    without the held frames and the frames between them, which the window before already has. Every window
    runs the programs of the first (the same shapes: nothing compiles again after window 2, whose decode
    chunks are new), one window's latents on the devices at a time, the frames gathered on the host.
    `next_condition(last latents (P, h, w, 4), window frames (P, T, H, W, 3))` replaces the carried latent
    (K = 1 only; bench/long_videos.py measures decoding and re-encoding the last frame with it); window 1
    equals the one-window video of the same seed.
    """
    videos = window_prompts(prompts, options.windows)
    overlap = options.window_overlap
    if next_condition is not None and overlap > 1:
      raise ValueError(f"next_condition replaces one carried latent: window_overlap {overlap} carries {overlap} "
                       "(give window_overlap=1)")
    if images is not None and len(images) != len(videos):
      raise ValueError(f"{len(images)} images for {len(videos)} prompts")
    options.check_size(self.config)
    report = progress or (lambda stage, seconds: None)
    windows, passes = options.windows, FPS_PASSES[options.fps]
    rng = jax.random.key(options.seed)
    key_rng, base_rng, *pass_rngs = jax.random.split(rng, 2 + len(passes))
    tag = lambda name, k: window_stage(name, k, windows)

    def stage(label, fn, *args, **kwargs):
      start = time.perf_counter()
      out = jax.block_until_ready(fn(*args, **kwargs))
      report(label, time.perf_counter() - start)
      return out

    steps = dict(step_progress=step_progress)
    # Every window's text first: with offload, T5 is placed once.
    texts, batches = {}, [tuple(video[k] for video in videos) for k in range(windows)]
    for k, batch in enumerate(batches):
      if batch not in texts:
        texts[batch] = stage(TEXT.name if k == 0 else tag(TEXT.name, k), self.encode_text, list(batch))
    text, keyframe_null, interpolation_null, length = texts[batches[0]]
    keep_key_frame = images is not None and options.keep_image  # a given picture, not a generated key frame
    if images is None:
      key_images = stage(KEY_FRAME.name, self.key_frames, text, keyframe_null, length, options, key_rng, **steps)
      images = [Image.fromarray(image) for image in key_images]
    condition = stage(ENCODE.name, self.encode_images, images, options)
    # Every window's inputs committed to window 1's placement: a stage's output is uncommitted on one device
    # and a carried or concatenated latent may not be, and jit keys its dispatch on that too.
    condition_sharding, frames_sharding, carried, out = condition.sharding, None, None, []
    for k in range(windows):
      text, keyframe_null, interpolation_null, length = texts[batches[k]]
      if k:  # from the second window on: its own draws, and its first frames held at the carried latents
        base_rng, *pass_rngs = jax.random.split(jax.random.fold_in(rng, k), 1 + len(passes))
        condition = carried[:, 0]
      condition = jax.device_put(condition, condition_sharding)
      frames = stage(tag(BASE_FRAMES.name, k), self.base_frames, condition, text, keyframe_null, length, options,
                     base_rng, keep_key_frame=keep_key_frame, held=carried, **steps)
      if k:  # the held frames exactly the carried latents (they come back within rounding)
        frames = jnp.concatenate([carried.astype(frames.dtype), frames[:, overlap:]], axis=1)
      frames_sharding = frames_sharding or frames.sharding
      frames = jax.device_put(frames, frames_sharding)
      carried = frames[:, NUM_BASE_FRAMES - overlap:]
      for i, skip in enumerate(passes):
        name = f"{INTERPOLATION.name} {i + 1}"  # the steps' name, the same in every window (no recompile)
        frames = stage(tag(name, k), self.interpolate, frames, text, interpolation_null, length, options, skip,
                       pass_rngs[i], name=name, **steps)
      # A window after the first starts after its held frames and the frames interpolated between them.
      stride = (frames.shape[1] - 1) // (NUM_BASE_FRAMES - 1)
      out.append(stage(tag(DECODE.name, k), self.decode_video, frames[:, (overlap - 1) * stride + 1:] if k else frames))
      if k + 1 < windows and next_condition is not None:
        carried = next_condition(carried[:, -1], out[-1])[:, None]
    return out[0] if windows == 1 else np.concatenate(out, axis=1)


def window_prompts(prompts: str | Sequence[str | Sequence[str]], windows: int) -> list[tuple[str, ...]]:
  """Each video's prompt in every window: `prompts` is one video's prompt or one entry per video, each a
  string (for every window) or a list, one per window in order, whose last holds for the windows after it."""
  videos = [prompts] if isinstance(prompts, str) else list(prompts)
  out = []
  for i, video in enumerate(videos):
    given = [video] if isinstance(video, str) else list(video)
    if not all(isinstance(prompt, str) for prompt in given):
      raise ValueError(f"video {i + 1}: a prompt is a string or a list of strings, one per window, got {video!r}")
    if not 1 <= len(given) <= windows:
      raise ValueError(f"video {i + 1}: {len(given)} prompts for {windows} window{'s' * (windows > 1)} "
                       "(windows, --windows): give one per window at most")
    out.append(tuple(given + given[-1:] * (windows - len(given))))
  return out
