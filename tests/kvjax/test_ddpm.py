"""The reference scheduler against diffusers' DDPMScheduler, step by step with identical noise."""

import functools

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from kvjax.diffusion import ddpm
from kvjax.diffusion.schedule import (INTERPOLATION_SCHEDULER, KEYFRAME_SCHEDULER, SchedulerConfig,
                                      alphas_cumprod, inference_timesteps, make_schedule)


def _diffusers(config: SchedulerConfig):
  scheduler = diffusers.DDPMScheduler(
      num_train_timesteps=config.num_train_timesteps, beta_schedule="squaredcos_cap_v2",
      rescale_betas_zero_snr=config.rescale_betas_zero_snr, variance_type="fixed_small_log",
      thresholding=config.thresholding, dynamic_thresholding_ratio=config.dynamic_thresholding_ratio,
      sample_max_value=config.sample_max_value, clip_sample=config.clip_sample,
      clip_sample_range=config.clip_sample_range, prediction_type=config.prediction_type,
      timestep_spacing=config.timestep_spacing, steps_offset=config.steps_offset)
  scheduler.set_timesteps(config.num_inference_steps)
  return scheduler


CONFIGS = [KEYFRAME_SCHEDULER, INTERPOLATION_SCHEDULER,
           SchedulerConfig("v_prediction", "linspace", 7),
           SchedulerConfig("epsilon", "leading", 5, sample_max_value=1.5),  # a real dynamic threshold
           SchedulerConfig("epsilon", "leading", 4, thresholding=False, rescale_betas_zero_snr=False,
                           steps_offset=1, clip_sample_range=1.2),
           SchedulerConfig("v_prediction", "trailing", 3, thresholding=False, clip_sample=False)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.prediction_type}-{c.timestep_spacing}-{c.num_inference_steps}")
def test_schedule_and_timesteps_match_diffusers(config):
  reference = _diffusers(config)
  np.testing.assert_array_equal(inference_timesteps(config), reference.timesteps.numpy())
  # Within a few float32 ulps: on some CPUs torch's sqrt/cumprod kernels differ from numpy's by an ulp,
  # which the zero-terminal-SNR rescale's divisions amplify to up to 7 ulps (4.2e-7, seen 2026-12).
  np.testing.assert_allclose(alphas_cumprod(config), reference.alphas_cumprod.numpy(), rtol=0, atol=5e-7)


def test_reference_schedule_facts():
  abar = alphas_cumprod(KEYFRAME_SCHEDULER)
  assert abar[999] == 0 and abs(abar[0] - 0.99995887) < 2e-7
  assert abs(abar[20] - 9.981142e-01) < 1e-6 and abs(abar[899] - 2.407882e-02) < 1e-7
  assert list(inference_timesteps(INTERPOLATION_SCHEDULER)) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
  assert list(inference_timesteps(KEYFRAME_SCHEDULER))[:3] == [980, 960, 940]


@functools.lru_cache(maxsize=None)
def _step(config):
  return jax.jit(functools.partial(ddpm.ddpm_step, config))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.prediction_type}-{c.timestep_spacing}-{c.num_inference_steps}")
def test_every_step_matches_diffusers(config):
  reference, schedule = _diffusers(config), make_schedule(config)
  shape = (2, 4, 6, 5)
  gen = torch.Generator().manual_seed(0)
  sample = torch.randn(shape, generator=gen)
  ours = sample.numpy()
  for index, t in enumerate(reference.timesteps):
    # A made-up model output that depends on the sample, large enough for thresholding to bite.
    output = torch.tanh(sample) * 1.5 + 0.3 * torch.randn(shape, generator=gen)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(100 + index))
    sample = reference.step(output, t, sample, generator=torch.Generator().manual_seed(100 + index)).prev_sample
    ours = np.asarray(_step(config)(schedule, index, ours, output.numpy(), noise.numpy()))
    # atol: the table's few-ulp differences (above) reach 3.3e-5 in a step's output near t = 0
    np.testing.assert_allclose(ours, sample.numpy(), rtol=1e-5, atol=5e-5, err_msg=f"step {index} (t={int(t)})")
    ours = sample.numpy()  # continue from the reference's sample so errors do not compound


def test_last_epsilon_step_is_the_clamped_prediction():
  config, schedule = KEYFRAME_SCHEDULER, make_schedule(KEYFRAME_SCHEDULER)
  rng = np.random.default_rng(0)
  x, eps, noise = (rng.normal(size=(1, 4, 3, 3)).astype(np.float32) * 3 for _ in range(3))
  out = ddpm.ddpm_step(config, schedule, schedule.num_steps - 1, x, eps, noise)
  abar = alphas_cumprod(config)[0]
  np.testing.assert_allclose(out, np.clip((x - np.sqrt(1 - abar) * eps) / np.sqrt(abar), -1, 1), rtol=1e-6)


def test_add_noise_matches_diffusers():
  reference, schedule = _diffusers(KEYFRAME_SCHEDULER), make_schedule(KEYFRAME_SCHEDULER)
  rng = np.random.default_rng(1)
  x0 = rng.normal(size=(3, 4, 5, 5)).astype(np.float32)
  noise = rng.uniform(size=x0.shape).astype(np.float32)  # the reference augments with uniform noise
  t = np.array([20, 20, 500])
  expected = reference.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
  np.testing.assert_allclose(ddpm.add_noise(schedule, x0, noise, t), expected, rtol=1e-6, atol=1e-6)


def test_bad_settings_are_named():
  with pytest.raises(ValueError, match="prediction_type"):
    SchedulerConfig("sample")
  with pytest.raises(ValueError, match="timestep_spacing"):
    SchedulerConfig("epsilon", "middle")
  with pytest.raises(ValueError, match="num_inference_steps"):
    SchedulerConfig("epsilon", "leading", 0)
