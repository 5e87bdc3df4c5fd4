"""The paper's clip filters. Each check returns None (keep) or a Drop that names its rule and the measured
value, so the summary can count drops per reason and a user can see why a clip is missing."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class FilterConfig:
  min_seconds: float = 2.0
  min_area: int = 256 * 256
  min_side: int = 128
  min_fps: float = 23.0


@dataclasses.dataclass(frozen=True)
class Drop:
  reason: str  # one of REASONS
  detail: str


# reason -> what the rule drops, for the summary table.
REASONS = {
    "duration": "shorter than the minimum length",
    "size": "frame area or a side too small",
    "fps": "frame rate too low",
}


def check_duration(seconds: float, config: FilterConfig) -> Drop | None:
  if seconds < config.min_seconds:
    return Drop("duration", f"{seconds:.2f} s < {config.min_seconds:g} s")
  return None


def check_size(width: int, height: int, config: FilterConfig) -> Drop | None:
  if width * height < config.min_area:
    return Drop("size", f"{width}x{height} has area {width * height} < {config.min_area}")
  if min(width, height) < config.min_side:
    return Drop("size", f"{width}x{height} has a side under {config.min_side} px")
  return None


def check_fps(fps: float, config: FilterConfig) -> Drop | None:
  if fps < config.min_fps:
    return Drop("fps", f"{fps:.2f} fps < {config.min_fps:g} fps")
  return None
