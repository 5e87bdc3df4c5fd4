"""Data preparation's per-source work as an Apache Beam pipeline, for datasets one machine cannot prepare:

  python -m train.prepare_data SRC OUT --engine beam -- --runner=DirectRunner --direct_num_workers=4 \
      --direct_running_mode=multi_processing

The pipeline is `sources -> reshuffle -> sources.process_source -> results`: the same function the local
engine runs, once per source not finished earlier, on Beam's workers. Everything around it is the local
run's, on the launching machine: the search for sources, the ledger (a source's entry is written when its
result comes back, so a re-run skips it), the captions, the shuffle and the tfds dataset.

Workers write clips straight into OUT/work/clips and their results into a hidden staging folder under
OUT/work, so OUT must be a path that every worker and the launching machine see (a local folder for the
DirectRunner; on a cluster, a shared filesystem mounted at the same path). Sources may be at any URL Beam
reads (gs://, s3:// where its extras are installed): each worker copies a source to a temporary local file,
since ffmpeg reads files. A source that cannot be read is its result's error, as in the local engine, and
never fails the pipeline.
"""

from __future__ import annotations

import glob
import os
import shutil
from typing import Callable, Sequence

from kvjax.atomic import staging_path
from kvjax.data import sources

try:
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions
except ImportError:
  raise ImportError("--engine beam needs Apache Beam: pip install -e '.[data]'") from None


def pipeline_options(args: Sequence[str]) -> PipelineOptions:
  """Beam's PipelineOptions of `args` (the command line after `--`); options no Beam runner knows (which
  Beam itself would drop with a log line) raise ValueError naming them."""
  options = PipelineOptions(list(args))
  unknown = sorted(set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options()))
  if unknown:
    raise ValueError(f"Beam pipeline options not known to Beam: {', '.join('--' + name for name in unknown)}")
  return options


class PrepareSources(beam.DoFn):
  """sources.process_source per source, each result as its JSON line."""

  def __init__(self, src_dir: str, clips_dir: str, config: sources.PrepareConfig):
    super().__init__()
    self.src_dir, self.clips_dir, self.config = src_dir, clips_dir, config

  def setup(self):
    sources.quiet_ffmpeg_logs()
    # imageio-ffmpeg starts ffmpeg with a preexec_fn (its own process group, against Ctrl-C), which makes
    # Python fork rather than vfork; in a Beam worker gRPC's fork handlers then break the child's pipes
    # ("Could not load meta information"). A worker gets no Ctrl-C: start ffmpeg without it.
    os.environ["IMAGEIO_FFMPEG_NO_PREVENT_SIGINT"] = "1"

  def process(self, source):
    yield sources.process_source(self.src_dir, source, self.clips_dir, self.config).to_json()


def run_sources(src_dir: str, todo: list[str], clips_dir: str, config: sources.PrepareConfig,
                args: Sequence[str], work_dir: str, on_result: Callable[[sources.SourceResult], None]) -> None:
  """process_source over `todo` on a Beam pipeline of options `args`; `on_result` gets every result on this
  machine after the pipeline has finished."""
  if not todo:
    return
  options = pipeline_options(args)
  results_dir = staging_path(os.path.join(work_dir, "beam-results"))  # a kill leaves it to remove_leftovers
  os.makedirs(results_dir)
  try:
    try:
      with beam.Pipeline(options=options) as pipeline:
        _ = (pipeline
             | "sources" >> beam.Create(sorted(todo))
             | "spread" >> beam.Reshuffle()  # every source its own unit of work, on any worker
             | "prepare" >> beam.ParDo(PrepareSources(src_dir, clips_dir, config))
             | "results" >> beam.io.WriteToText(os.path.join(results_dir, "results"), file_name_suffix=".jsonl"))
    except ValueError as e:  # an unknown runner, options a runner refuses
      raise ValueError(f"the Beam pipeline did not start: {e}") from None
    results = {}
    for path in sorted(glob.glob(os.path.join(results_dir, "results*.jsonl"))):
      with open(path) as f:
        for line in f:
          if line.strip():
            result = sources.SourceResult.from_json(line)
            results[result.source] = result
  finally:
    shutil.rmtree(results_dir, ignore_errors=True)
  for source in sorted(todo):
    on_result(results.get(source) or sources.SourceResult(source=source, fingerprint="", error=(
        f"{sources.source_path(src_dir, source)}: not prepared: the Beam pipeline returned no result for it; "
        "re-run")))
