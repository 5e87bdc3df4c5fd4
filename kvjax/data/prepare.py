"""Turns a folder of videos into the training dataset: per source, probe -> filters -> one decode pass
(scene cuts and black-border profile) -> clip spans -> per clip: filters, crop, 24 fps, resize, JPEG frames
and motion score -> the clip store; then captions, a seeded shuffle and the tfds dataset.

Resumable: every finished clip is a file of its own, and every finished source a ledger entry, both written
atomically. A re-run skips finished sources (unless the file changed) and, inside a source that was cut
short, the clips already made. A file that cannot be read is reported with its reason and the run goes on;
errors are not written to the ledger, so the next run tries that file again.

Layout of OUT_DIR: work/settings.json, work/sources/*.json (ledger), work/clips/*.npz (clip store),
dataset/kvjax_clips/1.0.0/ (the tfds dataset; see kvjax.data.dataset).

This module is the run around the sources: the ledger, the engines and the dataset. The work on one source
(finding sources, and one source's clips) is kvjax.data.sources, which every engine runs.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import sys
from typing import Callable

import numpy as np

from kvjax.atomic import OutputError, check_writable, remove_leftovers, staged
from kvjax.data import captions as captions_lib
from kvjax.data import filters, motion
from kvjax.data.dataset import load_clip_meta, write_dataset
from kvjax.data.sources import (PrepareConfig, SourceResult, digest, find_sources, find_url_sources, fingerprint,
                                is_url, process_source, quiet_ffmpeg_logs, source_path)


@dataclasses.dataclass
class Summary:
  sources: int = 0
  sources_finished_earlier: int = 0
  clips_in: int = 0
  clips_kept: int = 0
  clips_reused: int = 0
  clips_outside: int = 0  # kept clips of sources whose real path is outside the source folder's (symlinks)
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
    self.clips_outside += len(result.kept) if result.outside else 0
    for drop in result.drops:
      self.dropped[drop["reason"]] = self.dropped.get(drop["reason"], 0) + 1

  def table(self) -> str:
    rows = [("sources", self.sources, ""),
            ("  finished earlier", self.sources_finished_earlier, "skipped: done in a previous run"),
            ("clips in", self.clips_in, "after scene splitting"),
            ("clips kept", self.clips_kept, f"{self.clips_reused} made in an earlier run cut short"
             if self.clips_reused else ""),
            ("  from outside SRC", self.clips_outside, "through symlinks to folders outside the source folder"
             if self.clips_outside else "")]
    rows += [(f"dropped: {reason}", count, filters.REASONS.get(reason, "")) for reason, count in self.dropped.items()]
    rows.append(("errors", len(self.errors), "unreadable files, skipped; re-run to retry" if self.errors else ""))
    lines = [f"{name:<20} {count:>7}  {note}".rstrip() for name, count, note in rows]
    lines += [f"  {error}" for error in self.errors]
    lines.append(f"dataset: {self.dataset_dir}" if self.dataset_dir else "dataset: not written (no clips kept)")
    return "\n".join(lines)


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
    return os.path.join(self.ledger, f"{digest(source)[:16]}.json")

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
                                                initializer=quiet_ffmpeg_logs) as pool:
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
  quiet_ffmpeg_logs()
  work = WorkFolder(out_dir, config)
  for folder in (out_dir, work.root, work.clips, work.ledger):
    remove_leftovers(folder)  # stagings of runs that were killed (their clips are made again)
  summary = Summary()
  results = {}
  todo = []
  problems = []
  listed = find_url_sources(src_dir) if is_url(src_dir) else None  # URL sources come with their stamps
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
