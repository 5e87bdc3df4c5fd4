"""The Apache Beam engine of data preparation (kvjax.data.beam_engine): on the DirectRunner in multi-processing
mode it writes the local engine's dataset (clip ids and order, spans, crops, motion scores, frames) and summary
table, resumes as the local engine does, and refuses options Beam does not know; sources at a URL of a Beam
filesystem are read by either engine."""

import dataclasses
import os

import numpy as np
import pytest

from kvjax.data import dataset, prepare
from train import prepare_data

pytest.importorskip("apache_beam")
from apache_beam.io.filesystem import FileMetadata  # noqa: E402
from apache_beam.io.localfilesystem import LocalFileSystem  # noqa: E402

DIRECT = ("--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing")
# The resume retries only the failed sources: in this process (the multi-processing run above already sends
# the engine's work to other processes; starting two more only imports everything again).
IN_PROCESS = ("--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory")


def records(summary, out):
  """Every clip of the dataset in its order: its record (caption, frames) and store metadata, less the
  source fingerprint (a file's, which another filesystem stamps otherwise)."""
  import tensorflow_datasets as tfds
  rows = []
  for example in tfds.builder_from_directory(summary.dataset_dir).as_data_source("train"):
    clip_id = example["clip_id"].decode() if isinstance(example["clip_id"], bytes) else example["clip_id"]
    meta = dataclasses.asdict(dataset.load_clip_meta(os.path.join(out, "work", "clips", f"{clip_id}.npz")))
    meta.pop("source_fingerprint")
    rows.append((meta, {k: np.asarray(v).tolist() for k, v in example.items()}))
  return rows


@pytest.fixture(scope="module")
def beam_run(source_folder, prepared, tmp_path_factory, test_config):
  out = tmp_path_factory.mktemp("beam") / "out"
  captions = os.path.join(os.path.dirname(prepared[1]), "captions.jsonl")
  summary = prepare.prepare(str(source_folder), str(out), captions_path=captions, config=test_config, progress=False,
                            seed=0, engine="beam", pipeline_args=DIRECT)
  return summary, out, captions


def test_beam_writes_the_local_engines_dataset(prepared, beam_run):
  local, beam = prepared[0], beam_run[0]
  assert beam.table().replace(beam.dataset_dir, "") == local.table().replace(local.dataset_dir, "")
  assert beam.clips_kept == local.clips_kept > 3 and beam.errors == local.errors and len(beam.errors) == 2
  assert records(beam, beam_run[1]) == records(local, prepared[1])
  work = beam_run[1] / "work"
  assert not [name for name in os.listdir(work) if name.startswith(".")]  # its results staging is gone


def test_beam_resumes_and_refuses_unknown_options(source_folder, beam_run, test_config, capsys):
  summary, out, captions = beam_run
  again = prepare.prepare(str(source_folder), str(out), captions_path=captions, config=test_config, progress=False,
                          seed=0, engine="beam", pipeline_args=IN_PROCESS)
  assert again.sources_finished_earlier == summary.sources - len(summary.errors)  # errors are tried again
  assert records(again, out) == records(summary, out)

  base = [str(source_folder), str(out), "--no-progress", "--engine", "beam"]
  for argv, message in (([*base, "--", "--runner=DirectRunner", "--no_such_option=1"], "--no_such_option"),
                        ([*base, "--workers", "2", "--", *DIRECT], "--workers is the local engine's"),
                        ([*base[:-2], "--", *DIRECT], "are for --engine beam")):
    assert prepare_data.main(argv) == 2
    assert message in capsys.readouterr().err


class MirrorFileSystem(LocalFileSystem):
  """This machine's files at mirror://PATH: a Beam filesystem with a scheme, as gs:// is, for the test."""

  @classmethod
  def scheme(cls):
    return "mirror"

  def match(self, patterns, limits=None):
    results = super().match([p.removeprefix("mirror://") for p in patterns], limits)
    for result in results:
      result.metadata_list = [FileMetadata("mirror://" + m.path, m.size_in_bytes, m.last_updated_in_seconds)
                              for m in result.metadata_list]
    return results

  def open(self, path, *args, **kwargs):
    return super().open(path.removeprefix("mirror://"), *args, **kwargs)

  def exists(self, path):
    return super().exists(path.removeprefix("mirror://"))


def test_sources_at_a_url(source_folder, prepared, tmp_path, test_config):
  summary = prepare.prepare(f"mirror://{source_folder}", str(tmp_path / "out"), config=test_config, progress=False,
                            captions_path=os.path.join(os.path.dirname(prepared[1]), "captions.jsonl"))
  assert records(summary, tmp_path / "out") == records(*prepared)
  assert sorted(summary.errors) == sorted(e.replace(str(source_folder), f"mirror://{source_folder}")
                                          for e in prepared[0].errors)
  with pytest.raises(FileNotFoundError, match="nothere://x: cannot list it"):
    prepare.prepare("nothere://x", str(tmp_path / "out2"), config=test_config, progress=False)
