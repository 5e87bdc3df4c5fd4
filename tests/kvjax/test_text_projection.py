import flax.linen as nn
import flax.traverse_util
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from text_testing_utils import PROJECTIONS_CFG, save_projections, torch_heads
from kvjax import model_configs
from kvjax.conversion.state_dict import ConversionError
from kvjax.conversion.t5 import convert_text_projections
from kvjax.models.text_projection import HEADS, TextProjections
from kvjax.params import abstract_params, count_params

CFG = PROJECTIONS_CFG


def test_converted_heads_match_torch(tmp_path):
  heads = torch_heads()
  save_projections(tmp_path / "t5_projections.pt", heads)
  converted = convert_text_projections(tmp_path / "t5_projections.pt", CFG)
  hidden = np.random.default_rng(0).normal(size=(2, 5, CFG.in_dim)).astype(np.float32) * 3
  model = TextProjections(CFG)
  both = jax.jit(lambda p, h: model.apply({"params": p}, h))(converted.params, hidden)
  for name in HEADS:
    with torch.no_grad():
      want = heads[name](torch.from_numpy(hidden)).numpy()
    np.testing.assert_allclose(both[name], want, rtol=1e-5, atol=1e-5)
    one = model.apply({"params": converted.params}, hidden, head=name)
    np.testing.assert_allclose(one, both[name], rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="unknown projection head"):
    model.apply({"params": converted.params}, hidden, head="projection_image")


def test_strict_conversion(tmp_path):
  heads = torch_heads()
  path = tmp_path / "t5_projections.pt"
  torch.save({"projection_base": heads["projection_base"].state_dict()}, path)
  with pytest.raises(ConversionError, match="exactly the heads"):
    convert_text_projections(path, CFG)
  state = {name: head.state_dict() for name, head in heads.items()}
  state["projection_base"]["0.bias"] = torch.zeros(CFG.context_dim)
  torch.save(state, path)
  with pytest.raises(ConversionError, match=r"unexpected keys:\n  projection_base.0.bias"):
    convert_text_projections(path, CFG)
  del state["projection_base"]["0.bias"]
  torch.save(state, path)
  with pytest.raises(ConversionError,
                     match=r"projection_interpolation.0.weight: checkpoint \(48, 32\), model expects \(40, 32\)"):
    convert_text_projections(path, model_configs.TextProjectionConfig(in_dim=32, context_dim=40))


def test_parameter_counts_and_logical_axes():
  assert count_params(abstract_params(model_configs.TEXT_PROJECTIONS_1_1)) == 33_570_816
  for path, leaf in flax.traverse_util.flatten_dict(abstract_params(CFG)).items():
    assert isinstance(leaf, nn.Partitioned) and len(leaf.names) == len(leaf.value.shape), path


def test_config_from_the_official_text_encoder_section():
  section = {"tokens_length": 128, "context_dim": 4096, "weights_path": "google/flan-ul2"}
  assert model_configs.TextProjectionConfig.from_text_encoder_section(section) == model_configs.TEXT_PROJECTIONS_1_1


def test_matches_the_reference_condition_encoder():
  import os
  from testing_utils import FIXTURES
  from kvjax.parity import verify_fixture
  results = verify_fixture(os.path.join(FIXTURES, "t5_projections", "manifest.json"))
  assert [r.name for r in results] == [f"t5_projections/{head}/{out}" for head in ("base", "interpolation")
                                       for out in ("context", "context_mask")]
  for result in results:
    assert result.ok, result.line()
