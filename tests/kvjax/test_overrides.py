"""kvjax.training.overrides: `--set NAME=VALUE` reaches every field of a config by its dotted name, parsed by
the field's type; bad names and values are refused naming them. Pure Python: no model is built."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from kvjax.training.overrides import (OverrideError, add_config_arguments, apply_overrides, config_from_args,
                                      field_names, format_value, replace_fields, set_fields)
from kvjax.training.train_config import TRAIN_PRESETS


@dataclasses.dataclass(frozen=True)
class Inner:
  rate: float = 0.1
  steps: int = 10
  policy: str = "stop"

  def __post_init__(self):
    if self.rate < 0:
      raise ValueError(f"Inner.rate must be >= 0, got {self.rate}")


@dataclasses.dataclass(frozen=True)
class Outer:
  name: str = "a"
  on: bool = False
  size: tuple[int, int] = (64, 64)
  skips: tuple[int, ...] = (3, 1)
  limit: int | None = None
  scale: float | None = 1.0
  inner: Inner = Inner()
  extra: dict | None = None

  def __post_init__(self):
    if len(self.skips) != len(set(self.skips)):
      raise ValueError(f"Outer.skips {self.skips} must be distinct")


def _set(*assignments, config=Outer()):
  return apply_overrides(config, assignments)


def test_names_are_dotted_and_stop_at_plain_fields():
  assert field_names(Outer) == ["name", "on", "size", "skips", "limit", "scale", "inner.rate", "inner.steps",
                                "inner.policy", "extra"]


@pytest.mark.parametrize("assignment,field,value", [
    ("name=b c", "name", "b c"), ("name= b ", "name", "b"), ("name=", "name", ""),
    ("on=true", "on", True), ("on=Yes", "on", True), ("on=1", "on", True), ("on=off", "on", False),
    ("size=32,48", "size", (32, 48)), ("size=(32, 48)", "size", (32, 48)), ("size=[32,48]", "size", (32, 48)),
    ("skips=5", "skips", (5,)), ("skips=5,", "skips", (5,)), ("skips=", "skips", ()),
    ("skips=4,2,1", "skips", (4, 2, 1)),
    ("limit=none", "limit", None), ("limit=7", "limit", 7), ("scale=null", "scale", None), ("scale=2", "scale", 2.0),
    ("inner.rate=3e-4", "inner", Inner(rate=3e-4)), ("inner.steps= 12 ", "inner", Inner(steps=12)),
    ("inner.rate=inf", "inner", Inner(rate=float("inf"))),
])
def test_values_are_parsed_by_the_fields_type(assignment, field, value):
  result = _set(assignment)
  assert getattr(result, field) == value and type(getattr(result, field)) is type(value)
  assert set_fields(result).keys() <= {field, *(f"{field}.{k}" for k in ("rate", "steps", "policy"))}


@pytest.mark.parametrize("assignment,message", [
    ("on=maybe", "--set on='maybe': expected true or false"),
    ("size=32", "--set size='32': expected 2 comma-separated values"),
    ("skips=1,x", "--set skips='1,x': expected an integer"),
    ("skips=1,,2", "--set skips='1,,2': expected an integer"),
    ("inner.steps=1.5", "--set inner.steps='1.5': expected an integer"),
    ("inner.steps=true", "--set inner.steps='true': expected an integer"),
    ("inner.rate=fast", "--set inner.rate='fast': expected a number"),
    ("inner.rate=nan", "--set inner.rate='nan': expected a number"),
    ("limit=many", "--set limit='many': expected an integer"),
    ("extra={}", "--set extra: a field of type"),
    ("nosuch", "--set 'nosuch': expected NAME=VALUE"),
    ("=3", "--set '=3': expected NAME=VALUE"),
    ("inner=3", "--set inner: Outer has no such field; set its fields, such as inner.rate"),
    ("inner.rat=3", "--set inner.rat: Outer has no such field; did you mean inner.rate?"),
    ("steps=3", "--set steps: Outer has no such field; did you mean inner.steps?"),
    ("colour=red", "--set colour: Outer has no such field"),
    ("inner.rate=-1", "--set inner.rate=-1: Inner.rate must be >= 0, got -1.0"),
    ("skips=1,1", "--set skips=1,1: Outer.skips (1, 1) must be distinct"),
])
def test_bad_overrides_are_refused_naming_them(assignment, message):
  with pytest.raises(OverrideError) as e:
    _set(assignment)
  assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_later_overrides_win_and_the_checks_see_all_of_them():
  assert _set("inner.rate=1", "inner.rate=2", "inner.steps=3").inner == Inner(rate=2.0, steps=3)
  # each config is checked once, on the result: a pair that must agree can change together
  config = TRAIN_PRESETS["interpolation-tiny"]
  config = apply_overrides(config, ["interpolation.source_spacing=1,1"])
  changed = apply_overrides(config, ["interpolation.skip_frames=3,1,0", "interpolation.source_spacing=1,1,1"])
  assert changed.interpolation.skip_frames == (3, 1, 0) and changed.interpolation.source_spacing == (1, 1, 1)
  with pytest.raises(OverrideError, match=r"^--set interpolation.skip_frames=3,1,0: InterpolationTrainingConfig"):
    apply_overrides(config, ["interpolation.skip_frames=3,1,0"])
  with pytest.raises(OverrideError, match=r"^--set seed=1 --set resolution=60,60: TrainConfig.resolution"):
    apply_overrides(config, ["seed=1", "resolution=60,60"])


def test_a_nested_name_without_its_config_offers_each_that_has_it():
  with pytest.raises(OverrideError, match=r"did you mean optimizer.learning_rate or "
                                          r"movq.discriminator_optimizer.learning_rate\?$"):
    apply_overrides(TRAIN_PRESETS["keyframe-tiny"], ["learning_rate=3e-4"])
  with pytest.raises(OverrideError, match=r"did you mean optimizer.learning_rate\?$"):
    apply_overrides(TRAIN_PRESETS["keyframe-tiny"], ["optimizer.learnig_rate=3e-4"])


@pytest.mark.parametrize("preset", sorted(TRAIN_PRESETS))
def test_every_preset_is_its_defaults_and_overrides(preset):
  config = TRAIN_PRESETS[preset]
  assignments = [f"{name}={format_value(value)}" for name, value in set_fields(config).items()]
  assert apply_overrides(type(config)(), assignments) == config
  assert replace_fields(type(config)(), set_fields(config)) == config


def _parse(argv, help=None):
  parser = argparse.ArgumentParser()
  add_config_arguments(parser, **({"help": help} if help else {}))
  parser.add_argument("--steps", type=int)
  return parser.parse_args(argv)


def test_the_programs_config_is_the_preset_then_its_options_then_each_set():
  base = TRAIN_PRESETS["keyframe-tiny"]
  assert config_from_args(_parse(["--config", "keyframe-tiny"]), {"total_steps": None}) == base
  args = _parse(["--config", "keyframe-tiny", "--steps", "5", "--set", "optimizer.learning_rate=3e-4",
                 "--set", "keyframe.high_noise_fraction=0.5"])
  config = config_from_args(args, {"total_steps": args.steps})
  assert set_fields(config, base) == {"total_steps": 5, "optimizer.learning_rate": 3e-4,
                                      "keyframe.high_noise_fraction": 0.5}
  args = _parse(["--config", "keyframe-tiny", "--steps", "5", "--set", "total_steps=7"])
  assert config_from_args(args, {"total_steps": args.steps}).total_steps == 7
  with pytest.raises(ValueError, match="total_steps must be >= 0"):  # an option's value the config refuses
    config_from_args(args, {"total_steps": -1})


def test_the_training_programs_take_config_and_set():
  from train.__main__ import _parser as train_parser
  from train.calibrate_latents import _parser as calibrate_parser
  from train.precompute import _parser as precompute_parser
  sets = ["--config", "keyframe-tiny", "--set", "frame_stride=2", "--set", "clip_start=first"]
  for parser, argv in ((train_parser, ["--workdir", "w"]), (precompute_parser, ["--data", "d", "--out", "o"]),
                       (calibrate_parser, ["weights", "--data", "d"])):
    args = parser().parse_args([*argv, *sets])
    config = config_from_args(args)
    assert (config.frame_stride, config.clip_start) == (2, "first"), parser


def test_the_config_help_can_be_the_programs_own():
  parser = argparse.ArgumentParser()
  add_config_arguments(parser, help="the UNet preset")
  assert "the UNet preset" in parser.format_help() and "NAME=VALUE" in parser.format_help()
