"""Small synthetic videos with known properties (size, rate, length, borders, cuts, motion) for the data
preparation tests, written with the ffmpeg binary that imageio-ffmpeg ships."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def texture(height: int, width: int, seed: int, cells: int = 8) -> np.ndarray:
  """A smooth random colour field (bilinear-upsampled noise): rich enough for optical flow and cuts."""
  rng = np.random.default_rng(seed)
  small = rng.integers(40, 255, (cells, cells, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def moving_frames(height: int, width: int, num_frames: int, *, seed: int = 0,
                  pixels_per_frame: float = 0.0) -> np.ndarray:
  """A texture panned horizontally by `pixels_per_frame` (0: a still picture)."""
  big = texture(height, width * 3, seed, cells=32)
  frames = []
  for t in range(num_frames):
    x = int(round(t * pixels_per_frame)) % (width * 2)
    frames.append(big[:, x:x + width])
  return np.stack(frames)


def with_borders(frames: np.ndarray, *, top: int = 0, bottom: int = 0, left: int = 0,
                 right: int = 0) -> np.ndarray:
  """Frames padded with black bars (letterbox: top/bottom, pillarbox: left/right)."""
  return np.pad(frames, ((0, 0), (top, bottom), (left, right), (0, 0)))


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float,
                metadata_title: str | None = None) -> str:
  import imageio_ffmpeg
  path = os.fspath(path)
  height, width = frames.shape[1:3]
  output_params = ["-metadata", f"title={metadata_title}"] if metadata_title else None
  writer = imageio_ffmpeg.write_frames(path, (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                       quality=8, macro_block_size=1, output_params=output_params)
  writer.send(None)
  for frame in frames:
    writer.send(np.ascontiguousarray(frame))
  writer.close()
  return path


# The test folder: one video per rule. 320x240 passes the paper's size rule (area >= 256*256, sides >= 128).
WIDTH, HEIGHT = 320, 240


def make_source_folder(folder: str | os.PathLike) -> dict[str, str]:
  """Writes the rule videos into `folder`; returns {name: what it tests}."""
  folder = os.fspath(folder)
  os.makedirs(folder, exist_ok=True)
  scene_a = moving_frames(HEIGHT, WIDTH, 60, seed=1, pixels_per_frame=1)
  scene_b = moving_frames(HEIGHT, WIDTH, 60, seed=2, pixels_per_frame=1)[:, :, ::-1]
  write_video(f"{folder}/cut.mp4", np.concatenate([scene_a, scene_b]), 24, metadata_title="two scenes")
  write_video(f"{folder}/long.mp4", moving_frames(HEIGHT, WIDTH, 168, seed=3, pixels_per_frame=1), 24)
  # Content of 384x216 and 288x288 (both pass the size rule after the crop) inside black bars.
  write_video(f"{folder}/letterbox.mp4", with_borders(moving_frames(216, 384, 60, seed=4), top=42, bottom=42), 24)
  write_video(f"{folder}/pillarbox.mp4", with_borders(moving_frames(288, 288, 60, seed=5), left=48, right=48), 24)
  write_video(f"{folder}/lowfps.mp4", moving_frames(HEIGHT, WIDTH, 60, seed=6), 20)
  write_video(f"{folder}/short.mp4", moving_frames(HEIGHT, WIDTH, 24, seed=7), 24)
  write_video(f"{folder}/small.mp4", moving_frames(90, 120, 72, seed=8), 24)
  write_video(f"{folder}/thin.mp4", moving_frames(120, 600, 60, seed=9), 24)
  os.makedirs(f"{folder}/motion", exist_ok=True)
  write_video(f"{folder}/motion/static.mp4", moving_frames(HEIGHT, WIDTH, 75, seed=10), 30)
  with open(f"{folder}/motion/static.txt", "w") as f:
    f.write("a still picture\n")
  write_video(f"{folder}/motion/fast.mp4", moving_frames(HEIGHT, WIDTH, 60, seed=10, pixels_per_frame=4), 24)
  with open(f"{folder}/corrupt.mp4", "wb") as f:
    f.write(np.random.default_rng(0).bytes(20000))
  with open(f"{folder}/cut.mp4", "rb") as f:
    data = f.read()
  with open(f"{folder}/truncated.mp4", "wb") as f:
    f.write(data[:len(data) // 2])
  return {
      "cut.mp4": "two scenes with a hard cut, longer than the maximum clip: two clips",
      "long.mp4": "one 7 s scene over a 3 s maximum: three equal clips",
      "letterbox.mp4": "black bars top and bottom: cropped", "pillarbox.mp4": "black bars left and right: cropped",
      "lowfps.mp4": "20 fps: dropped (fps)", "short.mp4": "1 s: dropped (duration)",
      "small.mp4": "120x90: dropped (size)", "thin.mp4": "600x120: dropped (size, a side under 128)",
      "motion/static.mp4": "30 fps still picture: 24 fps, motion ~0, sidecar caption",
      "motion/fast.mp4": "4 px per frame pan: large motion", "corrupt.mp4": "random bytes: error",
      "truncated.mp4": "first half of an mp4: error",
  }
