import os

import jax
import numpy as np
import pytest

from testing_utils import FIXTURES
from kvjax import model_configs
from kvjax.conversion.unet import convert_unet
from kvjax.models.interpolation_unet import InterpolationUNet
from kvjax.params import abstract_params, count_params
from kvjax.parity import verify_fixture

FIXTURE = os.path.join(FIXTURES, "interpolation_unet")
CFG = model_configs.INTERPOLATION_TINY


def test_matches_the_reference():
  results = verify_fixture(os.path.join(FIXTURE, "manifest.json"))
  assert [r.name for r in results] == ["interpolation_unet/cond_uncond_groups", "interpolation_unet/mixed_inputs"]
  for result in results:
    assert result.ok, result.line()


def test_parameter_counts():
  assert count_params(abstract_params(CFG)) == 260_306  # the reference's count at this config
  assert count_params(abstract_params(model_configs.INTERPOLATION_1_1)) == 3_979_941_530


def test_unsupported_reference_variants_are_refused():
  with pytest.raises(ValueError, match="time_downsample"):
    model_configs.InterpolationUNetConfig(model_channels=8, time_embed_dim=8, context_dim=8,
                                    time_downsample=(True, False, False, False))


def test_temporal_mask_zero_isolates_groups():
  """With mask 0 every temporal layer is an identity, so a sample's output ignores its neighbours."""
  params = convert_unet(os.path.join(FIXTURE, "interpolation.pt"), CFG).params
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 8, 8, 20)).astype(np.float32)
  time = np.full((4,), 500, np.int32)
  context = rng.normal(size=(4, 3, CFG.context_dim)).astype(np.float32)
  mask = np.ones((4, 3), bool)
  run = jax.jit(lambda x, m: InterpolationUNet(CFG).apply({"params": params}, x, time, context, mask,
                                                         num_groups=4, perturbation_time=np.zeros(4),
                                                         skip_frames=np.full(4, 3), temporal_mask=m))
  changed = x.copy()
  changed[0] += 1.0
  off = np.zeros(4, np.float32)
  np.testing.assert_allclose(run(changed, off)[1:], run(x, off)[1:], atol=1e-6)
  on = np.ones(4, np.float32)
  assert np.abs(np.asarray(run(changed, on))[1:] - np.asarray(run(x, on))[1:]).max() > 1e-4
