"""The embedded demo's training settings: each training stage of `python -m train.demo` as a library preset
(`--config`) and the `--set NAME=VALUE` overrides that make it the demo's (docs/demo.md tells why each is so).

Exactly the stages that made the shipped weights (kvjax/demo/weights), keyed by stage name.
"""

from __future__ import annotations

# Every stage: the demo's models, a 100-step warm-up, EMA weights (what ships), a log line every 25 steps.
_DEMO = ("pipeline=demo", "optimizer.warmup_steps=100", "optimizer.ema_decay=0.999", "log_every=25",
         "checkpoint_every=200", "keep_checkpoints=2")


def _steps(steps: int, learning_rate: float) -> tuple[str, ...]:
  """A stage's length and peak learning rate, decaying over the whole stage."""
  return f"total_steps={steps}", f"optimizer.decay_steps={steps}", f"optimizer.learning_rate={learning_rate}"


# The temporal decoder's whole decoder (the encoder frozen, so the UNets' latents stay valid), reconstruction
# alone on 4-frame clips (the discriminator, unused, at the library's default optimizer).
_DECODER = ("global_batch_size=4", "num_frames=4", "resolution=64,64", "movq.l2_weight=1.0",
            "movq.perceptual_weight=0.0", "movq.adversarial_weight=0.0", "movq.train_scope=decoder",
            "movq.init_from=video", "movq.discriminator_optimizer.learning_rate=0.0001",
            "movq.discriminator_optimizer.warmup_steps=1000", "movq.discriminator_optimizer.decay_steps=100000")
# Video mode on 12 base frames 4 source frames apart (every 4th frame of the 24 fps clips: the interpolation
# passes fill in 3 between each pair), the v loss, motion scores scaled to the sampler's range.
_VIDEO = ("global_batch_size=4", "num_frames=12", "frame_stride=4", "keyframe.motion_scale=300.0",
          "keyframe.loss_weighting=v")
# The temporal layers alone (the paper's scope), half of the clips at t >= 900.
_TEMPORAL = (*_VIDEO, "keyframe.high_noise_fraction=0.5")
# Image mode on each clip's first frame (where a prompt's video starts), at the key frames' 128 px, half at
# t >= 900 with the v loss capped higher there.
_FIRST_FRAMES = ("num_frames=1", "resolution=128,128", "clip_start=first", "keyframe.mode=image",
                 "keyframe.loss_weighting=v", "keyframe.max_loss_weight=5000.0", "keyframe.high_noise_fraction=0.5")
# The GAN term of the two first MoVQ stages: a small weight, its discriminator at a fifth of the rate.
_GAN = ("movq.l2_weight=1.0", "movq.perceptual_weight=0.0", "movq.adversarial_weight=0.05",
        "movq.discriminator_optimizer.learning_rate=0.0002", "movq.discriminator_optimizer.warmup_steps=1000",
        "movq.discriminator_optimizer.decay_steps=100000")

TRAINING: dict[str, tuple[str, tuple[str, ...]]] = {
    # The image MoVQ on 64 px frames; its latents get a unit-scale term.
    "image_movq": ("image-movq-tiny", (*_DEMO, *_steps(600, 0.001), "resolution=64,64", *_GAN,
                                       "movq.discriminator_start=400", "movq.latent_scale_weight=0.1")),
    # The temporal decoder from the image MoVQ, its temporal layers on 9-frame clips.
    "video_movq": ("video-movq-tiny", (*_DEMO, *_steps(200, 0.0005), "num_frames=9", "resolution=64,64", *_GAN,
                                       "movq.discriminator_start=100")),
    "video_movq_decoder": ("video-movq-tiny", (*_DEMO, *_steps(200, 0.0005), *_DECODER)),
    "video_movq_decoder_more": ("video-movq-tiny", (*_DEMO, *_steps(1000, 0.0003), *_DECODER)),
    "video_movq_decoder_long": ("video-movq-tiny", (*_DEMO, *_steps(3000, 0.0003), *_DECODER)),
    # The keyframe UNet in image mode at 128 px (key frames are sampled at twice the video size).
    "keyframe_image": ("keyframe-tiny", (*_DEMO, *_steps(6000, 0.001), "num_frames=1", "resolution=128,128",
                                         "keyframe.mode=image")),
    # Video mode, every weight, the video input made from the image model's (the paper's recipe).
    "keyframe": ("keyframe-tiny", (*_DEMO, *_steps(3000, 0.001), *_VIDEO, "keyframe.train_scope=all",
                                   "keyframe.video_input_from_image=true")),
    "keyframe_motion": ("keyframe-tiny", (*_DEMO, *_steps(2400, 0.0003), *_TEMPORAL, "keyframe.train_scope=all")),
    "keyframe_first": ("keyframe-tiny", (*_DEMO, *_steps(1000, 0.0002), *_FIRST_FRAMES)),
    "keyframe_temporal": ("keyframe-tiny", (*_DEMO, *_steps(3000, 0.0005), *_TEMPORAL)),
    "keyframe_temporal_more": ("keyframe-tiny", (*_DEMO, *_steps(2000, 0.0003), *_TEMPORAL)),
    "keyframe_place": ("keyframe-tiny", (*_DEMO, *_steps(2000, 0.0003), *_FIRST_FRAMES)),
    "keyframe_settle": ("keyframe-tiny", (*_DEMO, *_steps(3000, 0.0005), *_TEMPORAL)),
    # The interpolation UNet, every weight, on windows of consecutive source frames (the base frames are 4
    # apart), a quarter of each batch at t >= 900; trained from pre-computed latents.
    "interpolation": ("interpolation-tiny", (*_DEMO, *_steps(4000, 0.001), "global_batch_size=16", "num_groups=2",
                                             "checkpoint_every=500", "keep_checkpoints=3",
                                             "interpolation.train_scope=all", "interpolation.source_spacing=1,1",
                                             "interpolation.high_noise_fraction=0.25")),
}


def train_config(stage: str):
  """The TrainConfig a training stage runs with: its base preset with its overrides applied."""
  from kvjax.training.overrides import apply_overrides
  from kvjax.training.train_config import TRAIN_PRESETS
  base, overrides = TRAINING[stage]
  return apply_overrides(TRAIN_PRESETS[base], overrides)
