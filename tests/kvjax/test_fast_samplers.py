"""DDIM and DPM-Solver++ (the faster, non-reference options) against diffusers, on the reference schedule."""

import functools

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from kvjax.diffusion import fast_samplers
from kvjax.diffusion.schedule import SchedulerConfig, make_schedule

CONFIGS = [SchedulerConfig("epsilon", "leading", 10), SchedulerConfig("v_prediction", "trailing", 5),  # diffusers DDIM steps to t - 1000 // n
           SchedulerConfig("epsilon", "leading", 8, sample_max_value=1.5)]


def _common(config):
  return dict(num_train_timesteps=config.num_train_timesteps, beta_schedule="squaredcos_cap_v2",
              rescale_betas_zero_snr=config.rescale_betas_zero_snr, thresholding=config.thresholding,
              dynamic_thresholding_ratio=config.dynamic_thresholding_ratio,
              sample_max_value=config.sample_max_value, prediction_type=config.prediction_type,
              timestep_spacing=config.timestep_spacing)


def _run(reference, step, config, seed=0):
  schedule = make_schedule(config)
  # DPM-Solver spaces its steps its own way in diffusers: step through the same timesteps.
  timesteps = reference.timesteps.numpy().astype(np.int32)
  schedule = schedule.replace(timesteps=timesteps, prev_timesteps=np.append(timesteps[1:], -1).astype(np.int32))
  shape = (2, 4, 5, 6)
  gen = torch.Generator().manual_seed(seed)
  sample = torch.randn(shape, generator=gen)
  state = None
  for index, t in enumerate(reference.timesteps):
    output = torch.tanh(sample) * 1.5 + 0.3 * torch.randn(shape, generator=gen)
    ours, state = step(schedule, index, sample.numpy(), output.numpy(), state)
    sample = reference.step(output, t, sample).prev_sample
    np.testing.assert_allclose(np.asarray(ours), sample.numpy(), rtol=2e-4, atol=5e-5, err_msg=f"step {index}")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.prediction_type}-{c.timestep_spacing}-{c.num_inference_steps}")
def test_ddim_matches_diffusers(config):
  reference = diffusers.DDIMScheduler(**_common(config), clip_sample=config.clip_sample, set_alpha_to_one=True)
  reference.set_timesteps(config.num_inference_steps)
  step = jax.jit(functools.partial(fast_samplers.ddim_step, config))
  _run(reference, lambda s, i, x, m, state: (step(s, i, x, m), None), config)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.prediction_type}-{c.timestep_spacing}-{c.num_inference_steps}")
def test_dpm_solver_pp_matches_diffusers(config):
  reference = diffusers.DPMSolverMultistepScheduler(**_common(config), algorithm_type="dpmsolver++",
                                                    solver_order=2, final_sigmas_type="zero")
  reference.set_timesteps(config.num_inference_steps)
  step = jax.jit(functools.partial(fast_samplers.dpm_solver_pp_step, config))

  def run(schedule, index, x, m, previous):
    x, x0 = step(schedule, index, x, m, np.zeros_like(x) if previous is None else previous)
    return x, x0
  _run(reference, run, config)
