"""Training runs as frozen dataclasses, with named presets (production and tiny)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from kvjax import model_configs
from kvjax.data.dataset import WINDOW_STARTS
from kvjax.models.lora import LoraConfig
from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS, PipelineConfig
from kvjax.training.interpolation_loss import InterpolationTrainingConfig, clip_frames
from kvjax.training.keyframe_loss import KeyframeTrainingConfig
from kvjax.training.movq_gan import MoVQTrainingConfig
from kvjax.training.optimizer import OptimizerConfig

UNET_MODELS = ("keyframe", "interpolation")
MOVQ_MODELS = ("image_movq", "video_movq")
MODELS = UNET_MODELS + MOVQ_MODELS
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REMAT_POLICIES = ("none", "levels", "levels_save_dots")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One training run. `pipeline` names the models (`PIPELINE_PRESETS`): the one that trains (a UNet or a
  MoVQ) and, for the UNets, the frozen encoders (MoVQ, T5, projections) that turn videos and captions into
  its inputs."""

  model: str = "keyframe"  # which model trains: keyframe | interpolation (UNets) | image_movq | video_movq
  pipeline: str = "tiny"
  global_batch_size: int = 8  # clips per step over all hosts
  num_frames: int = 12  # keyframe and MoVQ clips: frames per clip (image_movq decodes each frame alone)
  num_groups: int = 2  # interpolation clips: groups per clip (4G + 1 frames)
  # Keyframe clips: source frames from one key frame to the next (the dataset is at 24 fps). Interpolation
  # clips take every (s + 1)-th frame for the skip value s drawn per clip.
  frame_stride: int = 1
  # Where a clip's window starts in a prepared clip: "random", or "first" (its first frame: a key-frame
  # model then learns the frame a prompt's video starts from, not any frame of it).
  clip_start: str = "random"
  resolution: tuple[int, int] = (64, 64)  # (height, width) of the frames in pixels
  compute_dtype: str = "float32"  # bfloat16: bf16 activations and matmuls over float32 master weights
  remat: str = "none"  # none | levels (recompute each UNet level in the backward pass) | levels_save_dots
  keyframe: KeyframeTrainingConfig = KeyframeTrainingConfig()
  interpolation: InterpolationTrainingConfig = InterpolationTrainingConfig()
  movq: MoVQTrainingConfig = MoVQTrainingConfig()
  optimizer: OptimizerConfig = OptimizerConfig()
  # LoRA adapters (UNet runs; rank 0: none): only they train, over the frozen UNet (kvjax.models.lora).
  lora: LoraConfig = LoraConfig()
  total_steps: int = 100_000
  seed: int = 0
  log_every: int = 10
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3

  def __post_init__(self):
    checks = {"model": (self.model, MODELS), "pipeline": (self.pipeline, tuple(PIPELINE_PRESETS)),
              "compute_dtype": (self.compute_dtype, tuple(COMPUTE_DTYPES)), "remat": (self.remat, REMAT_POLICIES),
              "clip_start": (self.clip_start, WINDOW_STARTS)}
    for name, (value, allowed) in checks.items():
      if value not in allowed:
        raise ValueError(f"TrainConfig.{name} must be one of {', '.join(allowed)}, got {value!r}")
    multiple = self.model_config.downsampling_factor if self.is_movq else self.pipeline_config.size_multiple
    if any(side % multiple for side in self.resolution):
      raise ValueError(f"TrainConfig.resolution {self.resolution} must be multiples of {multiple}")
    if self.is_movq:
      disc = model_configs.PRESETS.get(self.movq.discriminator)
      if not isinstance(disc, model_configs.DiscriminatorConfig):
        names = sorted(k for k, v in model_configs.PRESETS.items() if isinstance(v, model_configs.DiscriminatorConfig))
        raise ValueError(f"TrainConfig.movq.discriminator {self.movq.discriminator!r} is not one of {', '.join(names)}")
      if not isinstance(model_configs.PRESETS.get(self.movq.lpips), model_configs.LPIPSConfig):
        raise ValueError(f"TrainConfig.movq.lpips {self.movq.lpips!r} is not an LPIPS preset")
      if min(self.resolution) < disc.min_spatial_size:
        raise ValueError(f"TrainConfig.resolution {self.resolution}: the {self.movq.discriminator} needs at least "
                         f"{disc.min_spatial_size} pixels a side")
    if self.lora.enabled and self.is_movq:
      raise ValueError(f"TrainConfig.lora: LoRA adapters apply to the UNets (keyframe, interpolation), not to "
                       f"{self.model.replace('_', ' ')} runs")
    if self.global_batch_size < 1 or self.num_frames < 1 or self.num_groups < 1:
      raise ValueError("TrainConfig: global_batch_size, num_frames and num_groups must be positive")
    if self.total_steps < 0 or min(self.log_every, self.checkpoint_every, self.keep_checkpoints) < 1:
      raise ValueError("TrainConfig: total_steps must be >= 0, and log_every, checkpoint_every and "
                       "keep_checkpoints positive")

  @property
  def pipeline_config(self) -> PipelineConfig:
    return PIPELINE_PRESETS[self.pipeline]

  @property
  def is_movq(self) -> bool:
    return self.model in MOVQ_MODELS

  @property
  def model_config(self):
    """The configuration of the model that trains."""
    return getattr(self.pipeline_config, self.model)

  @property
  def clip_frames(self) -> int:
    """Latent (= video) frames per training clip."""
    return clip_frames(self.num_groups) if self.model == "interpolation" else self.num_frames

  @property
  def loader_frames(self) -> int:
    """Frames the loader reads per clip: the clip, or enough source frames for the widest interpolation skip."""
    if self.model != "interpolation":
      return self.num_frames
    return (self.clip_frames - 1) * max(self.interpolation.spacings) + 1

  @property
  def latent_size(self) -> tuple[int, int]:
    factor = self.pipeline_config.image_movq.downsampling_factor
    return self.resolution[0] // factor, self.resolution[1] // factor


def _production_movq(model: str, batch: int, frames: int, discriminator: str, discriminator_start: int,
                     decay_steps: int) -> TrainConfig:
  return TrainConfig(model=model, pipeline="kandinsky-video-1.1", global_batch_size=batch, num_frames=frames,
                     resolution=(256, 256), compute_dtype="bfloat16", remat="levels",
                     optimizer=OptimizerConfig(learning_rate=1e-4, warmup_steps=1000, decay_steps=decay_steps),
                     movq=MoVQTrainingConfig(discriminator=discriminator, discriminator_start=discriminator_start,
                                             discriminator_optimizer=OptimizerConfig(learning_rate=1e-4,
                                                                                     ema_decay=0.0)))


def _tiny_movq(model: str, batch: int, frames: int, discriminator: str) -> TrainConfig:
  tiny_adam = lambda ema: OptimizerConfig(learning_rate=1e-3, warmup_steps=2, decay_steps=100, ema_decay=ema)
  return TrainConfig(model=model, global_batch_size=batch, num_frames=frames, resolution=(32, 32),
                     optimizer=tiny_adam(0.99), total_steps=20, log_every=1, checkpoint_every=5,
                     movq=MoVQTrainingConfig(discriminator=discriminator, lpips="lpips-tiny",
                                             discriminator_optimizer=tiny_adam(0.0)))


TRAIN_PRESETS = {
    # The paper's setting: 12 key frames at 512 px, bf16 compute, each UNet level recomputed backwards.
    "keyframe-1.1": TrainConfig(model="keyframe", pipeline="kandinsky-video-1.1", global_batch_size=64,
                                num_frames=12, resolution=(512, 512), compute_dtype="bfloat16", remat="levels"),
    "interpolation-1.1": TrainConfig(model="interpolation", pipeline="kandinsky-video-1.1", global_batch_size=64,
                                     num_groups=2, resolution=(512, 512), compute_dtype="bfloat16", remat="levels"),
    # Seconds per step on a CPU.
    "keyframe-tiny": TrainConfig(model="keyframe", global_batch_size=8, num_frames=4, resolution=(64, 64),
                                 optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=2, decay_steps=100),
                                 total_steps=20, log_every=1, checkpoint_every=5),
    "interpolation-tiny": TrainConfig(model="interpolation", global_batch_size=8, num_groups=1, resolution=(64, 64),
                                      optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=2, decay_steps=100),
                                      total_steps=20, log_every=1, checkpoint_every=5),
    # MoVQ-GAN at 256 px as MoVQGAN trains: the image autoencoder on frames, the temporal decoder on clips of
    # the medium-fps decode chunk (45 frames -> 5 chunks of 9), its temporal layers alone by default.
    "image-movq-1.1": _production_movq("image_movq", batch=64, frames=1, discriminator="patch-discriminator",
                                       discriminator_start=20_000, decay_steps=200_000),
    "video-movq-1.1": _production_movq("video_movq", batch=16, frames=9, discriminator="video-discriminator",
                                       discriminator_start=5_000, decay_steps=100_000),
    # Seconds per step on a CPU: the tiny MoVQ, discriminators and LPIPS network (random LPIPS weights
    # unless given), the GAN terms on from the first step.
    "image-movq-tiny": _tiny_movq("image_movq", batch=8, frames=1, discriminator="patch-discriminator-tiny"),
    "video-movq-tiny": _tiny_movq("video_movq", batch=4, frames=4, discriminator="video-discriminator-tiny"),
}
# keyframe-tiny on the two-level UNet (kvjax.pipeline.pipeline_config): what the CLI's kill-and-resume test trains.
TRAIN_PRESETS["keyframe-tiny-two-level"] = dataclasses.replace(TRAIN_PRESETS["keyframe-tiny"], pipeline="tiny-two-level")


def config_from_dict(cls, values: dict[str, Any]):
  """A (nested) frozen config dataclass from its `dataclasses.asdict` JSON; unknown fields are an error."""
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
  kwargs = {}
  for name, value in values.items():
    default = fields[name].default
    if dataclasses.is_dataclass(default):
      value = config_from_dict(type(default), value)
    elif isinstance(default, tuple):
      value = tuple(value)
    kwargs[name] = value
  return cls(**kwargs)
