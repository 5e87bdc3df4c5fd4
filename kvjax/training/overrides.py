"""`key=value` overrides of a frozen config dataclass (`python -m train --set optimizer.learning_rate=3e-4`).

Every field of the config and of its nested configs is reachable by its dotted name; the value is parsed by
the field's declared type (int, float, str, bool, tuples, `X | None`), and the config's own checks run on the
result. An unknown name is refused with the closest valid one, so an experiment is a list of overrides of a
preset, never a new preset in the library.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import types
import typing
from typing import Any, Iterable, TypeVar

Config = TypeVar("Config")

_TRUE, _FALSE, _NONE = ("true", "yes", "on", "1"), ("false", "no", "off", "0"), ("none", "null")


class OverrideError(ValueError):
  """An override that names no field, or whose value the field's type cannot take."""


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


def _parse(text: str, kind, name: str):
  """`text` as a value of the type `kind` (a type hint)."""
  origin, args = typing.get_origin(kind), typing.get_args(kind)
  if origin in (typing.Union, types.UnionType):
    if type(None) in args and text.strip().lower() in _NONE:
      return None
    options = [a for a in args if a is not type(None)]
    errors = []
    for option in options:
      try:
        return _parse(text, option, name)
      except OverrideError as e:
        errors.append(str(e))
    raise OverrideError(errors[0] if len(errors) == 1 else f"{name}={text!r}: not a value of {kind}")
  if origin is tuple:
    stripped = text.strip()
    if stripped[:1] in "[(" and stripped[-1:] in "])":
      stripped = stripped[1:-1]
    items = [item.strip() for item in stripped.split(",") if item.strip()] if stripped else []
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_parse(item, args[0], name) for item in items)
    if len(items) != len(args):
      raise OverrideError(f"{name}={text!r}: expected {len(args)} comma-separated values")
    return tuple(_parse(item, arg, name) for item, arg in zip(items, args))
  if origin is typing.Literal:
    if text not in args:
      raise OverrideError(f"{name}={text!r}: expected one of {', '.join(map(str, args))}")
    return text
  if kind is bool:
    if text.strip().lower() in _TRUE:
      return True
    if text.strip().lower() in _FALSE:
      return False
    raise OverrideError(f"{name}={text!r}: expected true or false")
  if kind in (int, float):
    try:
      value = json.loads(text.strip()) if kind is int else float(text)
    except ValueError:
      value = None
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
      raise OverrideError(f"{name}={text!r}: expected an integer")
    if value is None:
      raise OverrideError(f"{name}={text!r}: expected a number")
    return value
  if kind is str:
    return text
  raise OverrideError(f"{name}: a field of type {kind} cannot be set from the command line")


def _split(assignment: str, cls) -> tuple[list[str], str]:
  name, sep, value = assignment.partition("=")
  name = name.strip()
  if not sep or not name:
    raise OverrideError(f"--set {assignment!r}: expected NAME=VALUE, such as optimizer.learning_rate=3e-4")
  valid = field_names(cls)
  if name not in valid:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    nested = [n for n in valid if n.startswith(name + ".")]
    hint = (f"; set its fields, such as {nested[0]}" if nested else
            f"; did you mean {close[0]}?" if close else "")
    raise OverrideError(f"--set {name}: {cls.__name__} has no such field{hint}")
  return name.split("."), value


def _replace(config, path: list[str], value):
  if len(path) == 1:
    return dataclasses.replace(config, **{path[0]: value})
  return dataclasses.replace(config, **{path[0]: _replace(getattr(config, path[0]), path[1:], value)})


def apply_overrides(config: Config, assignments: Iterable[str]) -> Config:
  """`config` with each `NAME=VALUE` applied in order. Raises OverrideError (a ValueError) naming the
  override for an unknown name or a value of the wrong type, and the config's own ValueError for a value
  its checks refuse."""
  for assignment in assignments:
    path, text = _split(assignment, type(config))
    owner = config
    for part in path[:-1]:
      owner = getattr(owner, part)
    try:
      value = _parse(text, _hints(type(owner))[path[-1]], ".".join(path))
    except OverrideError as e:
      raise OverrideError(f"--set {e}") from None
    try:
      config = _replace(config, path, value)
    except (TypeError, ValueError) as e:
      raise OverrideError(f"--set {assignment}: {e}") from None
  return config


def set_fields(config, defaults=None) -> dict[str, Any]:
  """The dotted names and values where `config` differs from `defaults` (another instance of its class),
  as `apply_overrides` takes them: `apply_overrides(defaults, [f"{k}={v}" ...])` gives `config` back for
  fields of the command-line types."""
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
