"""The sources of data preparation and the work on one of them: finding the video files below a folder or a
URL, and `process_source`, which makes one source's clips (probe -> filters -> one decode pass for scene cuts
and the black-border profile -> clip spans -> per clip: filters, crop, 24 fps, resize, JPEG frames and motion
score -> the clip store). Every engine runs `process_source` once per source: the local one
(kvjax.data.prepare) and the Beam one (kvjax.data.beam_engine).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
from typing import Iterator

from kvjax.data import filters, motion, scenes, transforms, video_io
from kvjax.data.dataset import ClipMeta, encode_jpeg, load_clip_meta, save_clip

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
  filters: filters.FilterConfig = filters.FilterConfig()
  scenes: scenes.SceneConfig = scenes.SceneConfig()
  transform: transforms.TransformConfig = transforms.TransformConfig()
  motion: motion.MotionConfig = motion.MotionConfig()


@dataclasses.dataclass(frozen=True)
class SourceResult:
  """What became of one source file (its ledger entry)."""
  source: str  # relative to the source folder
  fingerprint: str
  kept: tuple[str, ...] = ()  # clip ids
  drops: tuple[dict, ...] = ()  # {"reason", "detail", "start_seconds", "end_seconds"}
  reused: int = 0  # kept clips found already made (a run cut short inside this source)
  error: str | None = None
  outside: bool = False  # its real path is outside the source folder's (reached through a symlink)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self))

  @classmethod
  def from_json(cls, text: str) -> "SourceResult":
    fields = json.loads(text)
    return cls(**{**fields, "kept": tuple(fields["kept"]), "drops": tuple(fields["drops"])})


def _source_problem(path: str) -> str | None:
  """Why the file at `path` cannot be a source (a dangling symlink, a symlink loop, not a regular file), if so."""
  try:
    mode = os.stat(path).st_mode
  except FileNotFoundError:
    if os.path.islink(path):
      return f"{path}: a dangling symlink (to {os.readlink(path)}, which does not exist)"
    return f"{path}: no longer exists"
  except OSError as e:
    if e.errno == errno.ELOOP:
      return f"{path}: a symlink loop (its links never reach a file)"
    return f"{path}: cannot read it ({e.strerror or e})"
  if not stat.S_ISREG(mode):
    return f"{path}: not a regular file (a folder, pipe, device or socket)"
  return None


def _holds(folder: str, path: str) -> bool:
  """Whether the real path `folder` is `path` or one of its ancestors."""
  return os.path.commonpath([folder, path]) == folder


def is_outside(src_dir: str, source: str) -> bool:
  """Whether a source's real path is outside the source folder's (a symlink to elsewhere); never for a URL."""
  if is_url(src_dir):
    return False
  return not _holds(os.path.realpath(src_dir), os.path.realpath(os.path.join(src_dir, source)))


def find_sources(src_dir: str, errors: list[SourceResult] | None = None) -> list[str]:
  """Video files below src_dir (by suffix, following symlinked folders), as sorted relative paths. Entries
  that cannot be sources (dangling symlinks, symlink loops, special files, unreadable folders, a folder
  reached twice through symlinks) are left out, each as an error result appended to `errors`. A symlink to a
  folder that holds src_dir or the folder the link is in is a loop, as `find -L` sees it: following it would
  take in the videos beside src_dir before coming back."""
  errors = [] if errors is None else errors
  src_dir = os.path.normpath(src_dir)
  src_real = os.path.realpath(src_dir)
  found = []

  def error(path: str, message: str) -> None:
    errors.append(SourceResult(source=os.path.relpath(path, src_dir), fingerprint="", error=message))

  def unreadable(e: OSError) -> None:
    error(e.filename, f"{e.filename}: cannot read the folder ({e.strerror or e}); its videos are skipped")

  first_seen = {}  # (device, inode) of each folder searched -> its path
  try:
    root = os.stat(src_dir)
    first_seen[(root.st_dev, root.st_ino)] = src_dir
  except OSError:
    pass
  for folder, subfolders, names in os.walk(src_dir, onerror=unreadable, followlinks=True):
    subfolders.sort()
    for sub in list(subfolders):
      path = os.path.join(folder, sub)
      try:
        info = os.stat(path)
      except OSError as e:
        subfolders.remove(sub)
        error(path, f"{path}: cannot read the folder ({e.strerror or e}); its videos are skipped")
        continue
      earlier = first_seen.get((info.st_dev, info.st_ino))
      if earlier is not None:
        subfolders.remove(sub)
        inside = path.startswith(earlier + os.sep)
        error(path, f"{path}: a symlink loop (leads back to {earlier}); skipped" if inside else
              f"{path}: the same folder as {earlier} (a symlink); searched once, as {earlier}")
        continue
      real = os.path.realpath(path) if os.path.islink(path) else None  # a real subfolder holds nothing above it
      if real and (_holds(real, src_real) or _holds(real, os.path.realpath(folder))):
        subfolders.remove(sub)
        holder = src_dir if _holds(real, src_real) else folder
        error(path, f"{path}: a symlink loop (leads up to {real}, which holds {holder}); skipped")
        continue
      first_seen[(info.st_dev, info.st_ino)] = path
    for name in names:
      if not name.lower().endswith(VIDEO_SUFFIXES) or name.startswith("."):
        continue
      path = os.path.join(folder, name)
      problem = _source_problem(path)
      if problem:
        error(path, problem)
      else:
        found.append(os.path.relpath(path, src_dir))
  errors.sort(key=lambda result: result.source)
  return sorted(found)


def is_url(path: str) -> bool:
  """A path of a filesystem Apache Beam reads (gs://, s3://, ... where installed), not one of this machine's."""
  return "://" in path


def _beam_filesystems():
  try:
    from apache_beam.io.filesystems import FileSystems
  except ImportError:
    raise ImportError("sources at a URL are read through Apache Beam's filesystems: pip install -e '.[data]'") from None
  return FileSystems


def source_path(src_dir: str, source: str) -> str:
  return f"{src_dir.rstrip('/')}/{source}" if is_url(src_dir) else os.path.join(src_dir, source)


def _url_stamp(metadata) -> str:
  return f"{metadata.size_in_bytes}-{metadata.last_updated_in_seconds}"


def find_url_sources(src_dir: str) -> dict[str, str]:
  """Video files below a URL (Beam's `**` match: every depth): relative path -> fingerprint, from the one
  listing (no request per file)."""
  root = src_dir.rstrip("/")
  filesystems = _beam_filesystems()
  try:
    matched = filesystems.match([root + "/**"])[0].metadata_list
  except Exception as e:  # Beam's BeamIOError: no such bucket, no credentials, an unknown scheme
    raise FileNotFoundError(f"source folder {src_dir}: cannot list it ({e})") from None
  found = {}
  for metadata in matched:
    relative = metadata.path[len(root) + 1:]
    name = relative.rsplit("/", 1)[-1]
    if metadata.path.startswith(root + "/") and name.lower().endswith(VIDEO_SUFFIXES) and not name.startswith("."):
      found[relative] = _url_stamp(metadata)
  return found


def fingerprint(src_dir: str, source: str) -> str:
  """Size and modification time: a source that changed is prepared again."""
  if is_url(src_dir):
    matched = _beam_filesystems().match([source_path(src_dir, source)])[0].metadata_list
    if len(matched) != 1:
      raise FileNotFoundError(f"{source_path(src_dir, source)}: no longer exists")
    return _url_stamp(matched[0])
  stat = os.stat(os.path.join(src_dir, source))
  return f"{stat.st_size}-{stat.st_mtime_ns}"


@contextlib.contextmanager
def _local_copy(src_dir: str, source: str, size: int) -> Iterator[str]:
  """The source as a file of this machine (ffmpeg reads files): itself, or a temporary copy of a URL's
  `size` bytes (no more are read: a file that grew since it was listed is refused), with its sidecar
  caption if it has one."""
  if not is_url(src_dir):
    yield os.path.join(src_dir, source)
    return
  filesystems = _beam_filesystems()

  def copy(url: str, local: str, limit: int, too_large: str) -> None:
    with filesystems.open(url) as remote, open(local, "wb") as f:
      copied = 0
      while data := remote.read(min(1 << 22, limit + 1 - copied)):
        copied += len(data)
        if copied > limit:
          raise video_io.VideoReadError(f"{url}: {too_large}")
        f.write(data)

  with tempfile.TemporaryDirectory(prefix="kvjax-source-") as folder:
    local = os.path.join(folder, "source" + os.path.splitext(source)[1])
    copy(source_path(src_dir, source), local, size,
         f"more than the {size} bytes it was listed with (it changed while being read)")
    sidecar = source_path(src_dir, os.path.splitext(source)[0] + video_io.SIDECAR_CAPTION_SUFFIX)
    if filesystems.exists(sidecar):
      copy(sidecar, os.path.splitext(local)[0] + video_io.SIDECAR_CAPTION_SUFFIX, video_io.MAX_SIDECAR_BYTES,
           f"a caption file of more than {video_io.MAX_SIDECAR_BYTES} bytes")
    yield local


def digest(text: str) -> str:
  return hashlib.sha1(text.encode("utf-8")).hexdigest()


def clip_id_for(source: str, index: int) -> str:
  """Readable and unique: the file's stem, a hash of its relative path, the clip's place in the source."""
  stem = re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.splitext(os.path.basename(source))[0])[:40]
  return f"{stem}-{digest(source)[:8]}-{index:03d}"


@functools.lru_cache(maxsize=1)
def _estimator(config: motion.MotionConfig) -> motion.FlowEstimator:
  return motion.make_estimator(config)  # once per process: RAFT weights are slow to load


def _drop(drop: filters.Drop, start: float, end: float) -> dict:
  return {"reason": drop.reason, "detail": drop.detail, "start_seconds": round(start, 3), "end_seconds": round(end, 3)}


def _make_clip(path: str, clip_path: str, meta: dict, span: tuple[float, float], crop: transforms.CropBox,
               config: PrepareConfig) -> None:
  size = transforms.resized_size(crop.width, crop.height, config.transform.target_short_side)
  meter = motion.MotionMeter(_estimator(config.motion), config.motion.analysis_short_side)
  jpeg_frames = []
  frames = video_io.read_frames(path, start_seconds=span[0], duration_seconds=span[1] - span[0],
                                video_filter=transforms.ffmpeg_filter(crop, size, config.transform.target_fps))
  for frame in frames:
    jpeg_frames.append(encode_jpeg(frame, config.transform.jpeg_quality))
    meter.update(frame)
  if not jpeg_frames:
    raise video_io.VideoReadError(f"{path}: no frames decoded between {span[0]:.2f} s and {span[1]:.2f} s")
  save_clip(clip_path, ClipMeta(**meta, fps=config.transform.target_fps, num_frames=len(jpeg_frames),
                                width=size[0], height=size[1], motion_score=meter.score), jpeg_frames)


def process_source(src_dir: str, source: str, clips_dir: str, config: PrepareConfig) -> SourceResult:
  """Makes the clips of one source into clips_dir; any failure to read it comes back as the result's error.
  Every engine runs this, once per source."""
  path, local = source_path(src_dir, source), None
  try:
    stamp = fingerprint(src_dir, source)
    with _local_copy(src_dir, source, int(stamp.split("-")[0])) as local:
      result = _process_source(local, source, clips_dir, config, stamp)
    return dataclasses.replace(result, outside=is_outside(src_dir, source))
  except Exception as e:  # a bad file must not stop the run; the error names the file and the reason
    message = str(e) if isinstance(e, video_io.VideoReadError) else f"{path}: {type(e).__name__}: {e}"
    return SourceResult(source=source, fingerprint="", error=message if local is None else message.replace(local, path))


def _process_source(path: str, source: str, clips_dir: str, config: PrepareConfig, stamp: str) -> SourceResult:
  info = video_io.probe(path)
  early = (filters.check_fps(info.fps, config.filters) or filters.check_size(info.width, info.height, config.filters)
           or (info.duration > 0 and filters.check_duration(info.duration, config.filters)) or None)
  if early:
    return SourceResult(source=source, fingerprint=stamp, drops=(_drop(early, 0.0, info.duration),))

  # One pass over the whole source: scene cuts and the black-border profile.
  borders = transforms.BorderProfile()
  cutter = scenes.SceneCutter(info.fps, config.scenes)
  for frame in video_io.read_frames(path):
    borders.update(frame)
    cutter.update(frame)
  if cutter.num_frames == 0:
    raise video_io.VideoReadError(f"{path}: no frames could be decoded")
  spans = scenes.clip_spans(cutter.num_frames, info.fps, cutter.finish(), config.scenes.max_clip_seconds)

  kept, drops, reused = [], [], 0
  for index, (first, end) in enumerate(spans):
    start_seconds, end_seconds = first / info.fps, end / info.fps
    crop = transforms.detect_borders(*borders.span(first, end), config.transform)
    drop = (filters.check_duration(end_seconds - start_seconds, config.filters)
            or filters.check_size(crop.width, crop.height, config.filters))
    if drop:
      drops.append(_drop(drop, start_seconds, end_seconds))
      continue
    clip_id = clip_id_for(source, index)
    clip_path = os.path.join(clips_dir, f"{clip_id}.npz")
    if os.path.exists(clip_path) and load_clip_meta(clip_path).source_fingerprint == stamp:
      reused += 1
    else:
      meta = dict(clip_id=clip_id, source=source, source_fingerprint=stamp, start_seconds=start_seconds,
                  end_seconds=end_seconds, crop=(crop.x, crop.y, crop.width, crop.height),
                  source_caption=info.source_caption)
      _make_clip(path, clip_path, meta, (start_seconds, end_seconds), crop, config)
    kept.append(clip_id)
  return SourceResult(source=source, fingerprint=stamp, kept=tuple(kept), drops=tuple(drops), reused=reused)


def quiet_ffmpeg_logs() -> None:
  # imageio-ffmpeg warns on every read whose output size differs from the source: here, always.
  logging.getLogger("imageio_ffmpeg").setLevel(logging.ERROR)
