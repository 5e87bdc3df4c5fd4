"""`key=value` overrides of a frozen config dataclass (`python -m train --set optimizer.learning_rate=3e-4`).

Every field of the config and of its nested configs is reachable by its dotted name; the value is parsed by
the field's declared type (int, float, str, bool, tuples, `X | None`), and the config's own checks run once
on the result of all the overrides (so fields that must agree, such as interpolation.skip_frames and
interpolation.source_spacing, can change together). An unknown name is refused with the closest valid one,
so an experiment is a list of overrides of a preset, never a new preset in the library.

`add_config_arguments` and `config_from_args` give the training programs (`python -m train`,
`train.precompute`, `train.calibrate_latents`) the same `--config PRESET --set NAME=VALUE ...` options.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import math
import types
import typing
from typing import Any, Iterable, Mapping, TypeVar

Config = TypeVar("Config")

_TRUE, _FALSE, _NONE = ("true", "yes", "on", "1"), ("false", "no", "off", "0"), ("none", "null")


class OverrideError(ValueError):
  """An override that names no field, or whose value the field's type or the config's checks refuse."""


@functools.cache
def _hints(cls) -> dict[str, Any]:
  return typing.get_type_hints(cls)


def field_names(cls) -> list[str]:
  """Every settable dotted name of a config class (nested configs' fields, not the nested configs)."""
  names = []
  for field in dataclasses.fields(cls):
    kind = _hints(cls)[field.name]
    if dataclasses.is_dataclass(kind):
      names += [f"{field.name}.{name}" for name in field_names(kind)]
    else:
      names.append(field.name)
  return names


class _BadValue(ValueError):
  """A text that is not a value of the type (what was expected)."""


def _parse(text: str, kind):
  """`text` as a value of the type `kind` (a type hint). Raises _BadValue saying what was expected, or
  OverrideError for a type the command line cannot give."""
  origin, args = typing.get_origin(kind), typing.get_args(kind)
  stripped = text.strip()
  if origin in (typing.Union, types.UnionType):
    if type(None) in args and stripped.lower() in _NONE:
      return None
    options = [a for a in args if a is not type(None)]
    errors = []
    for option in options:
      try:
        return _parse(text, option)
      except _BadValue as e:
        errors.append(str(e))
    raise _BadValue(errors[0] if len(errors) == 1 else f"not a value of {kind}")
  if origin is tuple:
    if stripped[:1] in "[(" and stripped[-1:] in "])":
      stripped = stripped[1:-1]
    items = [item.strip() for item in stripped.split(",")] if stripped.strip() else []
    if len(items) > 1 and not items[-1]:  # a trailing comma, as in Python's (3,)
      items.pop()
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_parse(item, args[0]) for item in items)
    if len(items) != len(args):
      raise _BadValue(f"expected {len(args)} comma-separated values")
    return tuple(_parse(item, arg) for item, arg in zip(items, args))
  if origin is typing.Literal:
    for option in args:
      if str(option) == stripped:
        return option
    raise _BadValue(f"expected one of {', '.join(map(str, args))}")
  if kind is bool:
    if stripped.lower() in _TRUE:
      return True
    if stripped.lower() in _FALSE:
      return False
    raise _BadValue("expected true or false")
  if kind is int:
    try:
      return int(stripped)
    except ValueError:
      raise _BadValue("expected an integer") from None
  if kind is float:
    try:
      value = float(stripped)
    except ValueError:
      value = math.nan
    if math.isnan(value):
      raise _BadValue("expected a number")
    return value
  if kind is str:
    return stripped
  raise OverrideError(f"a field of type {kind} cannot be set from the command line")


def _closest(name: str, valid: list[str]) -> list[str]:
  """The valid names a mistyped `name` most likely meant: those ending in its last part (a nested field named
  without its config), else the closest spelling."""
  same_field = [n for n in valid if n.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1]]
  same_field.sort(key=lambda n: -difflib.SequenceMatcher(None, name, n).ratio())
  return same_field[:3] or difflib.get_close_matches(name, valid, n=1, cutoff=0.5)


def _split(assignment: str, cls) -> tuple[str, str]:
  name, sep, value = assignment.partition("=")
  name = name.strip()
  if not sep or not name:
    raise OverrideError(f"--set {assignment!r}: expected NAME=VALUE, such as optimizer.learning_rate=3e-4")
  valid = field_names(cls)
  if name not in valid:
    nested = [n for n in valid if n.startswith(name + ".")]
    close = _closest(name, valid)
    hint = (f"; set its fields, such as {nested[0]}" if nested else
            f"; did you mean {' or '.join(close)}?" if close else "")
    raise OverrideError(f"--set {name}: {cls.__name__} has no such field{hint}")
  return name, value


def replace_fields(config: Config, values: Mapping[str, Any]) -> Config:
  """`config` with the fields named by dotted names (`field_names`) set to `values`; each config that changes
  is built once, so its checks (ValueError) see all of its new values together."""
  changes, nested = {}, {}
  for name, value in values.items():
    head, _, rest = name.partition(".")
    if rest:
      nested.setdefault(head, {})[rest] = value
    else:
      changes[head] = value
  changes |= {head: replace_fields(getattr(config, head), inner) for head, inner in nested.items()}
  return dataclasses.replace(config, **changes) if changes else config


def apply_overrides(config: Config, assignments: Iterable[str]) -> Config:
  """`config` with each `NAME=VALUE` applied (a later one wins over an earlier one of the same name).
  Raises OverrideError (a ValueError) naming the override for an unknown name or a value of the wrong type,
  and naming the overrides for a result the config's own checks refuse."""
  assignments = list(assignments)
  values = {}
  for assignment in assignments:
    name, text = _split(assignment, type(config))
    owner = config
    for part in name.split(".")[:-1]:
      owner = getattr(owner, part)
    try:
      values[name] = _parse(text, _hints(type(owner))[name.rsplit(".", 1)[-1]])
    except _BadValue as e:
      raise OverrideError(f"--set {name}={text!r}: {e}") from None
    except OverrideError as e:
      raise OverrideError(f"--set {name}: {e}") from None
  try:
    return replace_fields(config, values)
  except (TypeError, ValueError) as e:
    raise OverrideError(f"{' '.join(f'--set {a}' for a in assignments)}: {e}") from None


def set_fields(config, defaults=None) -> dict[str, Any]:
  """The dotted names and values where `config` differs from `defaults` (another instance of its class),
  as `apply_overrides` takes them: `apply_overrides(defaults, [f"{k}={format_value(v)}" ...])` gives
  `config` back."""
  defaults = type(config)() if defaults is None else defaults
  out = {}
  for field in dataclasses.fields(config):
    value, default = getattr(config, field.name), getattr(defaults, field.name)
    if dataclasses.is_dataclass(value) and type(value) is type(default):
      out |= {f"{field.name}.{k}": v for k, v in set_fields(value, default).items()}
    elif value != default:
      out[field.name] = value
  return out


def format_value(value) -> str:
  """A value as `apply_overrides` reads it back."""
  if isinstance(value, tuple):
    return ",".join(format_value(v) for v in value)
  if isinstance(value, bool):
    return "true" if value else "false"
  return "none" if value is None else str(value)


def add_config_arguments(parser: argparse.ArgumentParser, help: str = "training preset") -> None:
  """`--config PRESET` (required) and `--set NAME=VALUE` (repeatable) on a training program's parser."""
  from kvjax.training.train_config import TRAIN_PRESETS
  parser.add_argument("--config", required=True, choices=sorted(TRAIN_PRESETS), help=help)
  parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="NAME=VALUE",
                      help="set any field of the preset's TrainConfig (kvjax.training.train_config) by its dotted "
                      "name, e.g. optimizer.learning_rate=3e-4 or keyframe.high_noise_fraction=0.5; repeatable, "
                      "applied after the other options")


def config_from_args(args: argparse.Namespace, fields: Mapping[str, Any] | None = None):
  """The TrainConfig of a command line: the --config preset, then `fields` (dotted names -> the values of a
  program's own options; None: not given), then each --set. A value of `fields` the config refuses raises
  its ValueError; a --set, OverrideError naming it."""
  from kvjax.training.train_config import TRAIN_PRESETS
  config = replace_fields(TRAIN_PRESETS[args.config], {k: v for k, v in (fields or {}).items() if v is not None})
  return apply_overrides(config, args.overrides)
