import dataclasses

import pytest

from kvjax import model_configs
from kvjax.params import MODELS, build_model, example_inputs


def test_every_model_kind_has_a_registry_entry():
  assert set(model_configs.CONFIG_TYPES.values()) == set(MODELS)


def test_a_config_type_without_an_entry_is_named():
  @dataclasses.dataclass(frozen=True)
  class Unknown:
    pass

  for make in (build_model, example_inputs):
    with pytest.raises(TypeError, match="no model for config type Unknown"):
      make(Unknown())
