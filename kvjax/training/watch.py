"""Watching a training run: TensorBoard event files in the workdir (tensorboardX), the devices' memory, and
a progress bar with an ETA on a terminal.

Only the lead process writes events (as only it writes metrics.jsonl). Each run of a workdir opens a new
event file that starts with TensorBoard's purge marker at its first step (SessionLog.START at the resumed
step + 1): TensorBoard then drops the points that a killed run logged past its last checkpoint, as
metrics.jsonl is cut back to it, so each step shows once.
"""

from __future__ import annotations

import io
import math
import struct
import sys
import time

import numpy as np

GIB = 1 << 30


def _tensorboardx():
  """tensorboardX, imported with torch hidden when torch is installed but not loaded: tensorboardX.writer
  imports torch at import time (for torch.Tensor inputs, which kvjax never passes), seconds of every
  training process otherwise."""
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    import tensorboardX
    return tensorboardX
  sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects without torch
  try:
    import tensorboardX
  finally:
    del sys.modules["torch"]
  return tensorboardX


def device_memory(devices) -> dict[str, float]:
  """The largest use and peak over `devices` in GiB ({"memory/gib_in_use", "memory/peak_gib"}), from what
  the backend reports (GPUs and TPUs); {} where it reports nothing (the CPU)."""
  in_use = peak = None
  for device in devices:
    try:
      stats = device.memory_stats()
    except Exception:  # a backend without memory statistics raises instead of returning None
      stats = None
    if not stats:
      continue
    in_use = max(in_use or 0, stats.get("bytes_in_use", 0))
    peak = max(peak or 0, stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0)))
  if in_use is None:
    return {}
  return {"memory/gib_in_use": in_use / GIB, "memory/peak_gib": peak / GIB}


def gif_bytes(frames: np.ndarray, duration_ms: int) -> bytes:
  """An animated GIF of uint8 frames (T, H, W, 3), looping."""
  from PIL import Image
  images = [Image.fromarray(frame) for frame in frames]
  out = io.BytesIO()
  images[0].save(out, format="GIF", save_all=True, append_images=images[1:], loop=0, duration=duration_ms)
  return out.getvalue()


class EventLog:
  """TensorBoard event files in `logdir`: scalars and animated-GIF image summaries (TensorBoard's image
  tab plays them). `first_step`: the first step this process logs; the file starts with TensorBoard's purge
  marker there, which drops earlier files' points from that step on (those of a run killed past its last
  checkpoint)."""

  def __init__(self, logdir: str, first_step: int = 1):
    SummaryWriter = _tensorboardx().SummaryWriter
    # Points reach the file at each flush (every log step), so TensorBoard follows the run as it goes.
    self.writer = SummaryWriter(logdir=logdir, purge_step=first_step, flush_secs=30)

  def scalars(self, step: int, values: dict[str, float]) -> None:
    for tag, value in values.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        self.writer.add_scalar(tag, float(value), step)
    self.writer.flush()

  def video(self, step: int, tag: str, frames: np.ndarray, gif: bytes) -> None:
    """One video as an animated GIF image summary (what tensorboardX's add_video writes, without moviepy)."""
    _tensorboardx()
    from tensorboardX.proto.summary_pb2 import Summary
    height, width = frames.shape[1:3]
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif)
    self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

  def flush(self) -> None:
    self.writer.flush()

  def close(self) -> None:
    self.writer.close()


def read_events(path: str, max_bytes: int = 64 << 20):
  """The records of one event file as tensorboard.compat Event protos (a bounded reader of the TFRecord
  framing: length, its CRC, data, its CRC; CRCs not checked): for tests and scripts without TensorBoard."""
  _tensorboardx()
  from tensorboardX.proto.event_pb2 import Event
  with open(path, "rb") as f:
    data = f.read(max_bytes + 1)
  if len(data) > max_bytes:
    raise ValueError(f"{path}: larger than {max_bytes} bytes")
  events, at = [], 0
  while at + 12 <= len(data):
    (length,) = struct.unpack("<Q", data[at:at + 8])
    if at + 12 + length + 4 > len(data):
      break  # a record cut short (a killed writer)
    events.append(Event.FromString(data[at + 12:at + 12 + length]))
    at += 12 + length + 4
  return events


def _clock(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressBar:
  """One line on a terminal, redrawn after each step: steps done, a bar, steps per second and the ETA
  (measured from the first step after `start`, so the step's compile does not count). `say(line)` prints
  a log line above it."""

  def __init__(self, start: int, total: int, stream=sys.stderr, width: int = 24):
    self.start, self.total, self.stream, self.width = start, total, stream, width
    self._first = None  # (step, time) once the first step has returned
    self._last = ""

  def update(self, step: int) -> None:
    now = time.perf_counter()
    if self._first is None:
      self._first = (step, now)
    done = step - self._first[0]
    rate = done / (now - self._first[1]) if done and now > self._first[1] else None
    eta = _clock((self.total - step) / rate) if rate else "?"
    fraction = step / self.total if self.total else 1.0
    filled = min(self.width, int(self.width * fraction))
    speed = f"{rate:.3g} steps/s" if rate else "- steps/s"
    self._last = (f"step {step}/{self.total} [{'#' * filled}{'.' * (self.width - filled)}] "
                  f"{math.floor(100 * fraction)}% {speed} ETA {eta}")
    self.stream.write("\r\033[K" + self._last)
    self.stream.flush()

  def say(self, *parts) -> None:
    self.stream.write("\r\033[K" + " ".join(str(p) for p in parts) + "\n" + self._last)
    self.stream.flush()

  def close(self) -> None:
    if self._last:
      self.stream.write("\n")
      self.stream.flush()
    self._last = ""
