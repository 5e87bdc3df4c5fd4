"""Turns a folder of videos into the training dataset: per source, probe -> filters -> one decode pass
(scene cuts and black-border profile) -> clip spans -> per clip: filters, crop, 24 fps, resize, JPEG frames
and motion score -> the clip store; then captions, a seeded shuffle and the tfds dataset.

Resumable: every finished clip is a file of its own, and every finished source a ledger entry, both written
atomically. A re-run skips finished sources (unless the file changed) and, inside a source that was cut
short, the clips already made. A file that cannot be read is reported with its reason and the run goes on;
errors are not written to the ledger, so the next run tries that file again.

Layout of OUT_DIR: work/settings.json, work/sources/*.json (ledger), work/clips/*.npz (clip store),
dataset/kvjax_clips/1.0.0/ (the tfds dataset; see kvjax.data.dataset).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import re
import stat
import sys
import tempfile
from typing import Callable, Iterator

import numpy as np

from kvjax.atomic import OutputError, check_writable, remove_leftovers, staged
from kvjax.data import captions as captions_lib
from kvjax.data import filters, motion, scenes, transforms, video_io
from kvjax.data.dataset import ClipMeta, encode_jpeg, load_clip_meta, save_clip, write_dataset

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

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self))

  @classmethod
  def from_json(cls, text: str) -> "SourceResult":
    fields = json.loads(text)
    return cls(**{**fields, "kept": tuple(fields["kept"]), "drops": tuple(fields["drops"])})


@dataclasses.dataclass
class Summary:
  sources: int = 0
  sources_finished_earlier: int = 0
  clips_in: int = 0
  clips_kept: int = 0
  clips_reused: int = 0
  dropped: dict[str, int] = dataclasses.field(default_factory=lambda: {reason: 0 for reason in filters.REASONS})
  errors: list[str] = dataclasses.field(default_factory=list)
  dataset_dir: str = ""

  def add(self, result: SourceResult) -> None:
    self.sources += 1
    if result.error is not None:
      self.errors.append(result.error)
      return
    self.clips_in += len(result.kept) + len(result.drops)
    self.clips_kept += len(result.kept)
    self.clips_reused += result.reused
    for drop in result.drops:
      self.dropped[drop["reason"]] = self.dropped.get(drop["reason"], 0) + 1

  def table(self) -> str:
    rows = [("sources", self.sources, ""),
            ("  finished earlier", self.sources_finished_earlier, "skipped: done in a previous run"),
            ("clips in", self.clips_in, "after scene splitting"),
            ("clips kept", self.clips_kept, f"{self.clips_reused} made in an earlier run cut short"
             if self.clips_reused else "")]
    rows += [(f"dropped: {reason}", count, filters.REASONS.get(reason, "")) for reason, count in self.dropped.items()]
    rows.append(("errors", len(self.errors), "unreadable files, skipped; re-run to retry" if self.errors else ""))
    lines = [f"{name:<20} {count:>7}  {note}".rstrip() for name, count, note in rows]
    lines += [f"  {error}" for error in self.errors]
    lines.append(f"dataset: {self.dataset_dir}" if self.dataset_dir else "dataset: not written (no clips kept)")
    return "\n".join(lines)


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


def find_sources(src_dir: str, errors: list[SourceResult] | None = None) -> list[str]:
  """Video files below src_dir (by suffix, following symlinked folders), as sorted relative paths. Entries
  that cannot be sources (dangling symlinks, symlink loops, special files, unreadable folders, a folder
  reached twice through symlinks) are left out, each as an error result appended to `errors`."""
  errors = [] if errors is None else errors
  src_dir = os.path.normpath(src_dir)
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
      earlier = first_seen.setdefault((info.st_dev, info.st_ino), path)
      if earlier != path:
        subfolders.remove(sub)
        inside = path.startswith(earlier + os.sep)
        error(path, f"{path}: a symlink loop (leads back to {earlier}); skipped" if inside else
              f"{path}: the same folder as {earlier} (a symlink); searched once, as {earlier}")
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


def _find_url_sources(src_dir: str) -> dict[str, str]:
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


def _digest(text: str) -> str:
  return hashlib.sha1(text.encode("utf-8")).hexdigest()


def clip_id_for(source: str, index: int) -> str:
  """Readable and unique: the file's stem, a hash of its relative path, the clip's place in the source."""
  stem = re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.splitext(os.path.basename(source))[0])[:40]
  return f"{stem}-{_digest(source)[:8]}-{index:03d}"


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
      return _process_source(local, source, clips_dir, config, stamp)
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


class WorkFolder:
  """OUT_DIR/work: the settings the clips were made with, the ledger of finished sources, the clip store."""

  def __init__(self, out_dir: str, config: PrepareConfig):
    self.root = os.path.join(out_dir, "work")
    self.clips = os.path.join(self.root, "clips")
    self.ledger = os.path.join(self.root, "sources")
    for folder in (self.clips, self.ledger):
      try:
        os.makedirs(folder, exist_ok=True)
      except OSError as e:
        check_writable(folder)  # names a read-only folder or a file on the way
        raise OutputError(f"cannot create {folder}: {e.strerror or e}") from None
    settings = json.dumps(dataclasses.asdict(config), sort_keys=True, indent=1)
    settings_path = os.path.join(self.root, "settings.json")
    if os.path.exists(settings_path):
      with open(settings_path) as f:
        if json.loads(f.read()) != json.loads(settings):
          raise ValueError(f"{out_dir} holds clips made with other settings ({settings_path}); use a new output "
                           "folder, or delete its work folder to start over")
    else:
      self._write(settings_path, settings)

  @staticmethod
  def _write(path: str, text: str) -> None:
    with staged(path, overwrite=True, folder=False) as staging, open(staging, "w") as f:
      f.write(text)

  def _entry(self, source: str) -> str:
    return os.path.join(self.ledger, f"{_digest(source)[:16]}.json")

  def finished(self, source: str, stamp: str) -> SourceResult | None:
    """The ledger entry of `source` if it was finished from the file as it is now."""
    try:
      with open(self._entry(source)) as f:
        result = SourceResult.from_json(f.read())
    except (OSError, ValueError, TypeError, KeyError):
      return None
    clips_present = all(os.path.exists(os.path.join(self.clips, f"{clip}.npz")) for clip in result.kept)
    return result if result.source == source and result.fingerprint == stamp and clips_present else None

  def record(self, result: SourceResult) -> None:
    self._write(self._entry(result.source), result.to_json())


def _quiet_ffmpeg_logs() -> None:
  # imageio-ffmpeg warns on every read whose output size differs from the source: here, always.
  logging.getLogger("imageio_ffmpeg").setLevel(logging.ERROR)


ENGINES = ("local", "beam")


def _run_sources(src_dir: str, todo: list[str], clips_dir: str, config: PrepareConfig, workers: int,
                 on_result: Callable[[SourceResult], None], progress: bool) -> None:
  """The local engine: process_source over `todo` in this process or a pool of `workers` processes."""
  from tqdm import tqdm
  bar = tqdm(total=len(todo), desc="videos", unit="video", disable=not progress or not todo, file=sys.stderr)
  try:
    if workers <= 1:
      for source in todo:
        on_result(process_source(src_dir, source, clips_dir, config))
        bar.update()
      return
    # spawn: the parent may hold threads (tfds, grain, jax) that fork would copy mid-state.
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_quiet_ffmpeg_logs) as pool:
      futures = {pool.submit(process_source, src_dir, source, clips_dir, config): source for source in todo}
      try:
        for future in concurrent.futures.as_completed(futures):
          try:
            result = future.result()
          except concurrent.futures.BrokenExecutor:
            # A worker was killed (out of memory, a signal) or crashed: this source and every one still
            # queued are errors of this run (retried by the next), the finished ones are kept.
            source = futures[future]
            result = SourceResult(source=source, fingerprint="", error=(
                f"{os.path.join(src_dir, source)}: not prepared: a worker process died (killed, out of memory "
                "or crashed) while this or another video was being prepared; re-run (--workers 1 finds the video)"))
          on_result(result)
          bar.update()
      except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # an interrupt stops the queued videos, not after them
        raise
  finally:
    bar.close()


def prepare(src_dir: str, out_dir: str, *, captions_path: str | None = None, config: PrepareConfig = PrepareConfig(),
            workers: int = 1, seed: int = 0, progress: bool = True, engine: str = "local",
            pipeline_args: tuple[str, ...] = ()) -> Summary:
  """Prepares every video below src_dir (a folder, or a URL Apache Beam reads) into out_dir (see the module
  docstring) and returns the summary. `seed` fixes the dataset's shuffled clip order; it can change between
  runs without redoing any clip. `engine`: "local" (`workers` processes of this machine) or "beam" (an Apache
  Beam pipeline with `pipeline_args` as its options, kvjax.data.beam_engine)."""
  if engine not in ENGINES:
    raise ValueError(f"--engine {engine!r}: one of {', '.join(ENGINES)}")
  if engine == "local" and pipeline_args:
    raise ValueError(f"Beam pipeline options ({' '.join(pipeline_args)}) are for --engine beam")
  if not is_url(src_dir) and not os.path.isdir(src_dir):
    if os.path.exists(src_dir):
      raise ValueError(f"source folder {src_dir} is a file, not a folder")
    raise FileNotFoundError(f"source folder {src_dir} does not exist")
  if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
    raise ValueError(f"--seed must be a non-negative integer, got {seed}")
  if engine == "beam":
    from kvjax.data import beam_engine
    beam_engine.pipeline_options(pipeline_args)  # unknown options are an error before any work
  check_writable(out_dir)  # a read-only folder, or a file on the way, before any work
  captions = captions_lib.load_captions(captions_path) if captions_path else {}
  if config.motion.method == "raft":
    motion.make_estimator(config.motion)  # a missing weights file or torchvision is an error before any work
  _quiet_ffmpeg_logs()
  work = WorkFolder(out_dir, config)
  for folder in (out_dir, work.root, work.clips, work.ledger):
    remove_leftovers(folder)  # stagings of runs that were killed (their clips are made again)
  summary = Summary()
  results = {}
  todo = []
  problems = []
  listed = _find_url_sources(src_dir) if is_url(src_dir) else None  # URL sources come with their stamps
  for source in sorted(listed) if listed is not None else find_sources(src_dir, problems):
    try:
      stamp = listed[source] if listed is not None else fingerprint(src_dir, source)
    except OSError as e:  # gone or changed since the search
      problems.append(SourceResult(source=source, fingerprint="", error=f"{source_path(src_dir, source)}: "
                                   f"cannot read it ({e.strerror or e})"))
      continue
    done = work.finished(source, stamp)
    if done is None:
      todo.append(source)
    else:
      results[source] = done
      summary.sources_finished_earlier += 1
  for problem in problems:
    results.setdefault(problem.source, problem)

  def on_result(result: SourceResult) -> None:
    if result.error is None:
      work.record(result)
    results[result.source] = result

  if engine == "beam":
    from kvjax.data import beam_engine
    beam_engine.run_sources(src_dir, todo, work.clips, config, pipeline_args, work.root, on_result)
  else:
    _run_sources(src_dir, todo, work.clips, config, workers, on_result, progress)
  for source in sorted(results):
    summary.add(results[source])

  entries = []
  for source in sorted(results):
    result = results[source]
    for clip_id in result.kept:
      clip_path = os.path.join(work.clips, f"{clip_id}.npz")
      caption = captions_lib.caption_for(captions, clip_id=clip_id, source=source, src_dir=src_dir,
                                         source_caption=load_clip_meta(clip_path).source_caption)
      entries.append((clip_path, caption))
  if not entries:
    return summary  # tfds cannot write an empty split; the table says no dataset was written
  order = np.random.default_rng(seed).permutation(len(entries))
  summary.dataset_dir = write_dataset(os.path.join(out_dir, "dataset"), [entries[i] for i in order])
  return summary
