"""python -m train.init_weights: a from-scratch pipeline folder (random weights, a tokenizer of the captions)
that the trainers and the sampler load; `python -m train` keeps old runs' settings readable."""

import dataclasses
import json

import numpy as np
import pytest

from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS
from kvjax.pipeline.pipeline_weights import load_pipeline_weights
from kvjax.text.tokenizer import T5Tokenizer
from train.init_weights import main


def _captions(path, lines):
  path.write_text("".join(lines))
  return str(path)


def test_writes_a_loadable_pipeline_with_a_caption_tokenizer(tmp_path):
  captions = _captions(tmp_path / "c.jsonl", [json.dumps({"caption": c}) + "\n" for c in
                                             ("a red circle moving right", "a blue square moving up slowly")])
  assert main([str(tmp_path / "w"), "--pipeline", "demo", "--captions", captions]) == 0
  config, weights = load_pipeline_weights(str(tmp_path / "w"), tokens_length=16)
  assert config == PIPELINE_PRESETS["demo"]
  assert np.asarray(weights.keyframe_null).shape == (config.keyframe.context_dim,)
  tokenizer = T5Tokenizer(tmp_path / "w" / "spiece.model", 16)
  assert 2 not in tokenizer.encode("a blue circle moving up")  # every caption word is known
  assert main([str(tmp_path / "w"), "--pipeline", "demo", "--captions", captions]) == 2  # exists


@pytest.mark.parametrize("content,message", [("", "no captions"), ("not json\n", "not JSON"),
                                             ('{"text": "x"}\n', 'no "caption" string')])
def test_bad_captions_are_named_and_nothing_is_written(tmp_path, capsys, content, message):
  captions = _captions(tmp_path / "c.jsonl", [content])
  assert main([str(tmp_path / "w"), "--pipeline", "demo", "--captions", captions]) == 2
  err = capsys.readouterr().err
  assert message in err and "c.jsonl" in err and sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]


def test_a_run_saved_before_a_setting_existed_resumes(tmp_path):
  # config.json of an older kvjax lacks newer fields: they read as their defaults, not as a change.
  from kvjax.training.overrides import apply_overrides
  from kvjax.training.run import RunRefused, check_same_run
  from kvjax.training.train_config import TRAIN_PRESETS
  config = TRAIN_PRESETS["keyframe-tiny"]
  saved = dataclasses.asdict(config)
  del saved["keyframe"]["motion_scale"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  check_same_run(str(tmp_path), apply_overrides(config, ["total_steps=99", "optimizer.nonfinite=skip"]))
  with pytest.raises(RunRefused, match="other settings \\(seed\\)"):
    check_same_run(str(tmp_path), dataclasses.replace(config, seed=3))
  # nested settings are named by their dotted names, as --set takes them
  changed = apply_overrides(config, ["optimizer.learning_rate=3e-4", "keyframe.high_noise_fraction=0.5"])
  with pytest.raises(RunRefused, match="other settings \\(keyframe.high_noise_fraction, optimizer.learning_rate\\)"):
    check_same_run(str(tmp_path), changed)
  (tmp_path / "config.json").write_text(json.dumps({**saved, "colour": "red"}))
  with pytest.raises(RunRefused, match="not the settings of a run"):
    check_same_run(str(tmp_path), config)
