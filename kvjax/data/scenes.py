"""Scene splitting with PySceneDetect's ContentDetector, fed the frames we already decode (one pass over the
source), and the rule that turns cuts into clip spans: a video shorter than the maximum clip length passes
whole; a longer one is cut at its scene changes, and a scene still over the maximum is cut into equal parts."""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class SceneConfig:
  max_clip_seconds: float = 60.0
  threshold: float = 27.0  # ContentDetector's default
  min_scene_seconds: float = 0.6
  # Detection runs on frames scaled to this width: cuts are global changes, and HSV + edges at full HD
  # would dominate the pass.
  detect_width: int = 256


class SceneCutter:
  """Feeds frames (uint8 RGB, in order) to a ContentDetector and collects the frame numbers of cuts."""

  def __init__(self, fps: float, config: SceneConfig):
    from scenedetect import ContentDetector
    self.fps = fps
    self.detector = ContentDetector(threshold=config.threshold,
                                    min_scene_len=max(1, int(round(config.min_scene_seconds * fps))))
    self.detect_width = config.detect_width
    self.cuts: list[int] = []
    self.num_frames = 0

  def update(self, frame: np.ndarray) -> None:
    import cv2
    from scenedetect import FrameTimecode
    height, width = frame.shape[:2]
    if width > self.detect_width:
      frame = cv2.resize(frame, (self.detect_width, max(1, round(height * self.detect_width / width))),
                         interpolation=cv2.INTER_AREA)
    bgr = np.ascontiguousarray(frame[..., ::-1])  # the detector converts from OpenCV's BGR
    found = self.detector.process_frame(FrameTimecode(self.num_frames, self.fps), bgr)
    self.cuts += [cut.frame_num for cut in found]
    self.num_frames += 1

  def finish(self) -> list[int]:
    from scenedetect import FrameTimecode
    if self.num_frames:
      found = self.detector.post_process(FrameTimecode(self.num_frames - 1, self.fps))
      self.cuts += [cut.frame_num for cut in found]
    return sorted({cut for cut in self.cuts if 0 < cut < self.num_frames})


def clip_spans(num_frames: int, fps: float, cuts: list[int], max_clip_seconds: float) -> list[tuple[int, int]]:
  """[start, end) frame spans of the clips of a source with `num_frames` frames and scene `cuts`."""
  if num_frames == 0:
    return []
  max_frames = max_clip_seconds * fps
  if num_frames < max_frames:
    return [(0, num_frames)]
  bounds = [0, *cuts, num_frames]
  spans = []
  for start, end in zip(bounds[:-1], bounds[1:]):
    parts = math.ceil((end - start) / max_frames)
    edges = [start + round(i * (end - start) / parts) for i in range(parts + 1)]
    spans += list(zip(edges[:-1], edges[1:]))
  return spans
