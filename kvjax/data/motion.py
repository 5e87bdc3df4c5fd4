"""Motion score of a clip: the mean optical-flow magnitude between consecutive frames, in pixels per frame
at a fixed analysis size (so scores from sources of any resolution compare). The flow model is pluggable:
OpenCV's Farneback is the built-in default; RaftFlow runs torchvision's RAFT with weights the user supplies
(nothing is downloaded); CallableFlow wraps any other function."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Protocol

import numpy as np


class FlowEstimator(Protocol):
  def flow(self, previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    """previous, current: uint8 RGB (H, W, 3) -> float (H, W, 2) displacement in pixels."""


@dataclasses.dataclass(frozen=True)
class MotionConfig:
  method: str = "farneback"  # or "raft" (needs raft_weights)
  raft_weights: str | None = None
  raft_variant: str = "raft_large"
  # Frames are scaled so the short side is this before the flow: cheaper, and scores independent of size.
  analysis_short_side: int = 128


@dataclasses.dataclass(frozen=True)
class FarnebackFlow:
  pyramid_scale: float = 0.5
  levels: int = 3
  window: int = 15
  iterations: int = 3

  def flow(self, previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    import cv2
    gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in (previous, current)]
    return cv2.calcOpticalFlowFarneback(gray[0], gray[1], None, self.pyramid_scale, self.levels, self.window,
                                        self.iterations, 5, 1.2, 0)


@dataclasses.dataclass(frozen=True)
class CallableFlow:
  """Any flow function with FlowEstimator.flow's signature."""
  function: Callable[[np.ndarray, np.ndarray], np.ndarray]

  def flow(self, previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    return np.asarray(self.function(previous, current))


class RaftFlow:
  """torchvision's RAFT (raft_large or raft_small) with a state dict from `weights` (a local file)."""

  def __init__(self, weights: str | None, variant: str = "raft_large", device: str = "cpu"):
    if not weights or not os.path.isfile(weights):
      raise FileNotFoundError(f"RAFT weights {weights!r} not found: pass the path of a torchvision "
                              f"{variant} state dict (e.g. Raft_Large_Weights), or use the farneback method")
    try:
      import torch
      from torchvision.models import optical_flow
    except (ImportError, RuntimeError) as e:  # RuntimeError: a torchvision built for another torch
      raise ImportError(f"RAFT motion scores need torch and a torchvision built for it ({e}); install them or "
                        "use the farneback method") from e
    if variant not in ("raft_large", "raft_small"):
      raise ValueError(f"unknown RAFT variant {variant!r}: use raft_large or raft_small")
    self.torch = torch
    self.device = device
    self.model = getattr(optical_flow, variant)(weights=None, progress=False)
    try:  # weights_only: tensors and plain containers, never arbitrary pickled objects
      self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (RuntimeError, ValueError, OSError, EOFError) as e:
      first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise ValueError(f"RAFT weights {weights}: not a torchvision {variant} state dict ({first_line})") from None
    self.model.eval().to(device)

  def flow(self, previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    torch = self.torch
    height, width = previous.shape[:2]
    pad_h, pad_w = -height % 8, -width % 8  # RAFT needs sizes divisible by 8

    def tensor(frame):
      x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float() / 127.5 - 1
      return torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate").to(self.device)

    with torch.no_grad():
      flows = self.model(tensor(previous), tensor(current))
    return flows[-1][0, :, :height, :width].permute(1, 2, 0).cpu().numpy()


def make_estimator(config: MotionConfig) -> FlowEstimator:
  if config.method == "farneback":
    return FarnebackFlow()
  if config.method == "raft":
    return RaftFlow(config.raft_weights, config.raft_variant)
  raise ValueError(f"unknown motion method {config.method!r}: use farneback or raft")


class MotionMeter:
  """Accumulates the mean flow magnitude over consecutive frame pairs, one frame at a time."""

  def __init__(self, estimator: FlowEstimator, analysis_short_side: int = 128):
    self.estimator = estimator
    self.analysis_short_side = analysis_short_side
    self.previous: np.ndarray | None = None
    self.total = 0.0
    self.pairs = 0

  def _analysis_frame(self, frame: np.ndarray) -> np.ndarray:
    import cv2
    height, width = frame.shape[:2]
    scale = self.analysis_short_side / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)

  def update(self, frame: np.ndarray) -> None:
    frame = self._analysis_frame(frame)
    if self.previous is not None:
      flow = self.estimator.flow(self.previous, frame)
      self.total += float(np.mean(np.hypot(flow[..., 0], flow[..., 1])))
      self.pairs += 1
    self.previous = frame

  @property
  def score(self) -> float:
    return self.total / self.pairs if self.pairs else 0.0
