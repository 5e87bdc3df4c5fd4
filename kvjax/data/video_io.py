"""Probing and decoding video files through the ffmpeg binary that imageio-ffmpeg ships (no system ffmpeg,
no PyAV): frames come out as uint8 RGB arrays, one at a time, so hour-long sources never sit in memory."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import warnings
from typing import Iterator

import numpy as np

# Sidecar caption files that datasets such as WebVid ship beside each video.
SIDECAR_CAPTION_SUFFIX = ".txt"
MAX_SIDECAR_BYTES = 1 << 16  # a caption, not a document
# Container tags that hold a human-written description, most specific first.
CAPTION_TAGS = ("description", "comment", "title")


class VideoReadError(RuntimeError):
  """A video that ffmpeg cannot open or decode; the message names the file and ffmpeg's reason."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  width: int
  height: int
  fps: float
  duration: float  # seconds, from the container (may be approximate; decoding counts frames exactly)
  source_caption: str = ""


def ffmpeg_exe() -> str:
  import imageio_ffmpeg
  return imageio_ffmpeg.get_ffmpeg_exe()


def _ffmpeg_header(path: str) -> str:
  """ffmpeg's description of the input (it exits non-zero because no output is named; that is expected)."""
  result = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", path], capture_output=True, text=True,
                          errors="replace", timeout=120)
  return result.stderr


def _last_error_line(text: str) -> str:
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else "ffmpeg gave no reason"


def _container_caption(header: str) -> str:
  tags = {}
  for match in re.finditer(r"^\s{4}(\w+)\s*:\s?(.*)$", header, flags=re.MULTILINE):
    tags.setdefault(match.group(1).lower(), match.group(2).strip())
  return next((tags[name] for name in CAPTION_TAGS if tags.get(name)), "")


def source_caption(path: str, header: str = "") -> str:
  """The source's own caption: a sidecar `<name>.txt`, else the container's description/comment/title."""
  sidecar = os.path.splitext(path)[0] + SIDECAR_CAPTION_SUFFIX
  if os.path.isfile(sidecar):
    with open(sidecar, "rb") as f:
      text = f.read(MAX_SIDECAR_BYTES + 1)
    if len(text) > MAX_SIDECAR_BYTES:
      raise VideoReadError(f"{sidecar}: a caption file of more than {MAX_SIDECAR_BYTES} bytes")
    return " ".join(text.decode("utf-8", errors="replace").split())
  return _container_caption(header)


def probe(path: str) -> VideoInfo:
  """Size, frame rate and duration of the first video stream, or VideoReadError."""
  header = _ffmpeg_header(path)
  stream = re.search(r"Stream #\S+.*?: Video: .*", header)
  if stream is None:
    raise VideoReadError(f"{path}: no readable video stream ({_last_error_line(header)})")
  line = stream.group(0)
  size = re.search(r", (\d{2,5})x(\d{2,5})", line)
  fps = re.search(r", ([\d.]+)(k?) fps", line) or re.search(r", ([\d.]+)(k?) tbr", line)
  if size is None or fps is None:
    raise VideoReadError(f"{path}: cannot read the frame size or rate from {line.strip()!r}")
  duration = re.search(r"Duration: (\d+):(\d+):([\d.]+)", header)
  seconds = 0.0 if duration is None else (
      int(duration.group(1)) * 3600 + int(duration.group(2)) * 60 + float(duration.group(3)))
  width, height = int(size.group(1)), int(size.group(2))
  rotation = re.search(r"rotate\s*:\s*(-?\d+)|rotation of (-?[\d.]+)", header)
  if rotation and round(abs(float(rotation.group(1) or rotation.group(2)))) % 180 == 90:
    width, height = height, width  # ffmpeg auto-rotates when decoding
  rate = float(fps.group(1)) * (1000 if fps.group(2) else 1)
  return VideoInfo(width=width, height=height, fps=rate, duration=seconds,
                   source_caption=source_caption(path, header))


def read_frames(path: str, *, start_seconds: float | None = None, duration_seconds: float | None = None,
                video_filter: str | None = None) -> Iterator[np.ndarray]:
  """Yields uint8 (H, W, 3) RGB frames (after `video_filter`, an ffmpeg -vf chain), or raises
  VideoReadError naming the file."""
  import imageio_ffmpeg
  warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)  # ffmpeg runs as a child
  input_params = [] if start_seconds is None else ["-ss", f"{start_seconds:.6f}"]
  output_params = ["-an", "-sn"]
  if duration_seconds is not None:
    output_params += ["-t", f"{duration_seconds:.6f}"]
  if video_filter:
    output_params += ["-vf", video_filter]
  try:
    reader = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24", input_params=input_params,
                                        output_params=output_params)
    width, height = next(reader)["size"]  # of the frames after the filters
    frame_bytes = width * height * 3
    for chunk in reader:
      if len(chunk) != frame_bytes:
        raise VideoReadError(f"{path}: a decoded frame has {len(chunk)} bytes, expected {width}x{height}x3")
      yield np.frombuffer(chunk, np.uint8).reshape(height, width, 3)
  except VideoReadError:
    raise
  except (OSError, RuntimeError, StopIteration) as e:
    raise VideoReadError(f"{path}: {' '.join(str(e).split())[-300:]}") from e
