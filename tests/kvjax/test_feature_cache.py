"""Feature caching: the schedules, the UNets' cached steps (only their shallowest levels run), the FLOPs count
of a cached loop, and the measures a cached video is compared by. Nothing here compiles: the UNets are traced
abstractly. The pipeline's cached runs are in test_text_to_video.py (its compiled tiny pipeline)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax.demo import judge
from kvjax.diffusion.feature_cache import full_steps
from kvjax.flops import dense_flops
from kvjax.model_configs import INTERPOLATION_TINY, KEYFRAME_TINY
from kvjax.models.interpolation_unet import InterpolationUNet
from kvjax.models.keyframe_unet import KeyframeUNet
from kvjax.pipeline.pipeline_config import GenerationOptions


def test_schedules_say_which_steps_run_whole():
  F, c = True, False
  assert full_steps(10, 1) is None and full_steps(10, 1, "ends") is None  # interval 1: no caching
  assert full_steps(7, 3) == (F, c, c, F, c, c, F)
  assert full_steps(7, 3, full_ends=2) == (F, F, c, F, c, F, F)
  assert full_steps(4, 4) == (F, c, c, c)
  ends = np.array(full_steps(50, 3, "ends"))
  assert ends.sum() == sum(full_steps(50, 3)) and ends[0] and ends[-1]  # as many full steps as uniform
  gaps = np.diff(np.flatnonzero(ends))
  assert gaps[:3].mean() < gaps[len(gaps) // 2 - 1:len(gaps) // 2 + 2].mean()  # denser at the ends
  for args, message in (((10, 0), r"cache interval must be in \[1, 10\]"), ((10, 11), "got 11"),
                        ((10, 2, "middle"), "cache schedule must be one of uniform, ends")):
    with pytest.raises(ValueError, match=message):
      full_steps(*args)


def test_generation_options_name_the_option_of_a_bad_schedule():
  with pytest.raises(ValueError, match=r"cache intervals \(--cache-interval\) must be in \[1, the stage's step "
                     r"count\], got base_frame_cache_interval 0 \(of 50 steps\), interpolation_cache_interval 11"):
    GenerationOptions(base_frame_cache_interval=0, interpolation_cache_interval=11)
  with pytest.raises(ValueError, match=r"cache_schedule \(--cache-schedule\) must be one of uniform, ends"):
    GenerationOptions(cache_schedule="middle")
  with pytest.raises(ValueError, match=r"cache_full_ends \(--cache-full-ends\) must be at least 0"):
    GenerationOptions(cache_full_ends=-1)
  options = GenerationOptions(key_frame_cache_interval=25, cache_schedule="ends")
  assert options.full_steps("key_frame_cache_interval", 50) == full_steps(50, 25, "ends")
  assert options.full_steps("base_frame_cache_interval", 50) is None


def _keyframe_call(x, kw):
  n = x.shape[0]
  return dict(time=jnp.full((n,), 500.0), context=jnp.ones((n, 5, KEYFRAME_TINY.context_dim)),
              context_mask=jnp.ones((n, 5), bool), frame_index=jnp.arange(n, dtype=jnp.float32) % 2, num_frames=2,
              noise_aug_time=jnp.zeros(n), motion_score=jnp.zeros(n), input_layer="video", **kw)


def _interpolation_call(x, kw):
  n = x.shape[0]
  return dict(time=jnp.full((n,), 500), context=jnp.ones((n, 5, INTERPOLATION_TINY.context_dim)),
              context_mask=jnp.ones((n, 5), bool), num_groups=2, temporal_mask=jnp.ones(n), **kw)


@pytest.mark.parametrize("unet,call", [(KeyframeUNet(KEYFRAME_TINY), _keyframe_call),
                                       (InterpolationUNet(INTERPOLATION_TINY), _interpolation_call)],
                         ids=["keyframe", "interpolation"])
def test_a_cached_step_runs_only_the_shallowest_levels(unet, call):
  config = unet.config
  levels = config.num_levels
  x = jnp.ones((4, 16, 16, config.num_channels))
  apply = lambda params, x, **kw: unet.apply({"params": params}, x, **call(x, kw))
  params = jax.eval_shape(lambda: unet.init(jax.random.key(0), x, **call(x, {}))["params"])
  full = jax.make_jaxpr(lambda p: apply(p, x, keep_deep_features=True), return_shape=True)
  full, (out, deep) = full(params)
  # The features entering the shallowest up level: level 1's resolution, the width its up level gives.
  assert out.shape == (4, 16, 16, config.out_channels) and deep.shape == (4, 8, 8, config.hidden_dims[1])
  # Without any deep level's weights a cached step still runs; a full step does not.
  deep_levels = {f"down_samples_{i}" for i in range(1, levels)} | {f"up_samples_{i}" for i in range(levels - 1)}
  assert deep_levels <= set(params)
  shallow = {name: value for name, value in params.items() if name not in deep_levels}
  cached, (cached_out, kept) = jax.make_jaxpr(lambda p, d: apply(p, x, deep_features=d), return_shape=True)(
      shallow, deep)
  assert cached_out.shape == out.shape and kept.shape == deep.shape
  with pytest.raises(Exception, match="down_samples_1"):
    jax.eval_shape(lambda p: apply(p, x), shallow)
  # Its dense FLOPs: a fraction of the full step's.
  assert 0.05 < dense_flops(cached) / dense_flops(full) < 0.5


def test_a_cached_loop_counts_each_step_at_its_branch():
  def loop(x, schedule):
    def body(i, x):
      full = lambda x: x @ jnp.ones((8, 8))  # 2 * 8 * 8 * 8 FLOPs
      cached = lambda x: x @ jnp.ones((8, 1)) @ jnp.ones((1, 8))  # 2 * 8 * 8 + 2 * 8 * 8
      return jax.lax.cond(jnp.asarray(schedule)[i], full, cached, x)
    return jax.lax.fori_loop(0, len(schedule), body, x)
  schedule = full_steps(6, 3)
  jaxpr = jax.make_jaxpr(lambda x: loop(x, schedule))(jnp.ones((8, 8)))
  assert dense_flops(jaxpr) == 6 * 1024  # without the schedule: the costliest branch at every step
  assert dense_flops(jaxpr, schedule) == 2 * 1024 + 4 * 256


def test_flops_of_one_scope_count_the_operations_under_its_name():
  def program(x):
    with jax.named_scope("pre"):
      x = x @ x  # 1024 FLOPs
    with jax.named_scope("loop"):
      return jax.lax.fori_loop(0, 3, lambda i, y: y @ x, x)  # 3 x 1024, under "loop" in the scan's body
  jaxpr = jax.make_jaxpr(program)(jnp.ones((8, 8)))
  assert dense_flops(jaxpr) == 4 * 1024
  assert dense_flops(jaxpr, scope="^/pre") == 1024 and dense_flops(jaxpr, scope="loop") == 3 * 1024
  assert dense_flops(jaxpr, scope="elsewhere") == 0


def test_psnr_and_ssim_of_a_video_against_the_exact_one():
  rng = np.random.default_rng(0)
  video = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
  assert judge.psnr(video, video) == float("inf") and judge.ssim(video, video) == pytest.approx(1.0)
  off_by_one = np.where(video < 255, video + 1, video - 1).astype(np.uint8)
  assert judge.psnr(off_by_one, video) == pytest.approx(10 * np.log10(255 ** 2), abs=1e-9)
  noisy = np.clip(video + rng.normal(0, 40, video.shape), 0, 255).astype(np.uint8)
  assert 0.3 < judge.ssim(noisy, video) < judge.ssim(off_by_one, video) < 1.0
