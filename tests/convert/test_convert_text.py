import json
import os
import shutil

import pytest

torch = pytest.importorskip("torch")

from testing_utils import FIXTURES
from text_testing_utils import PROJECTIONS_CFG, save_projections, torch_heads
from convert.__main__ import main
from kvjax import model_configs
from kvjax.conversion.registry import resolve_config
from kvjax.conversion.store import load_converted
from kvjax.params import count_params

T5_FOLDER = os.path.join(FIXTURES, "t5_encoder", "flan_t5_tiny")
OFFICIAL_TEXT_SECTION = {"text_encoder": {
    "tokens_length": 128, "context_dim": 48, "weights_path": "google/flan-ul2", "low_cpu_mem_usage": True,
    "load_in_8bit": False, "load_in_4bit": False}}


def test_t5_is_configured_by_its_hugging_face_folder(tmp_path):
  out = tmp_path / "t5"
  assert main(["t5", T5_FOLDER, str(out)]) == 0
  loaded = load_converted(out)
  assert loaded.kind == "t5_encoder" and loaded.config == model_configs.T5_ENCODER_TINY
  assert count_params(loaded.params) == 21_696
  config, origin = resolve_config("t5", T5_FOLDER)
  assert config == model_configs.T5_ENCODER_TINY and origin.endswith("config.json")
  assert resolve_config("t5", T5_FOLDER, "t5-encoder-tiny")[0] == model_configs.T5_ENCODER_TINY


def test_t5_config_errors(tmp_path):
  folder = tmp_path / "t5"
  shutil.copytree(T5_FOLDER, folder)
  os.remove(folder / "config.json")
  assert main(["t5", str(folder), str(tmp_path / "out")]) == 2  # no config.json and no --config
  official = tmp_path / "model_configs.json"
  official.write_text(json.dumps(OFFICIAL_TEXT_SECTION))
  with pytest.raises(ValueError, match="hub id"):
    resolve_config("t5", str(folder), str(official))
  assert main(["t5", str(folder), str(tmp_path / "out"), "--config", "t5-encoder-tiny"]) == 0


def test_projections_read_the_official_text_encoder_section(tmp_path):
  src = tmp_path / "t5_projections.pt"
  save_projections(src, torch_heads())
  assert resolve_config("projections", str(src))[0] == model_configs.TEXT_PROJECTIONS_1_1  # no model_configs.json
  (tmp_path / "model_configs.json").write_text(json.dumps(OFFICIAL_TEXT_SECTION))
  # context_dim from the section, the input width (T5's d_model, not in model_configs.json) from the weights.
  assert resolve_config("projections", str(src))[0] == PROJECTIONS_CFG
  out = tmp_path / "projections"
  assert main(["projections", str(src), str(out)]) == 0
  loaded = load_converted(out)
  assert loaded.kind == "t5_projections" and loaded.config == PROJECTIONS_CFG
  assert count_params(loaded.params) == 2 * (32 * 48 + 2 * 48)
