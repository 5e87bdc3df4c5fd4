"""Data preparation over a source tree with bad entries (symlink loops, dangling symlinks, special files):
each is that entry's error in the summary and the run goes on; a symlink to a folder above the source folder
is such a loop in both engines (the videos beside the source folder are never taken in), and the clips of
symlinks to elsewhere are counted as from outside it; unwritable outputs and bad options are one
`error:` line before any work; stagings left by killed runs are removed by the next run."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from data_testing_utils import moving_frames, write_video
from kvjax import atomic
from kvjax.data import prepare
from train import prepare_data

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture
def tree(tmp_path):
  """A 20 fps video (read, then dropped by the fps rule: no decoding, no dataset) among bad entries."""
  src = tmp_path / "videos"
  (src / "sub").mkdir(parents=True)
  write_video(src / "slow.mp4", moving_frames(240, 320, 24, seed=1), 20)
  other = tmp_path / "elsewhere"
  other.mkdir()
  write_video(other / "linked.mp4", moving_frames(240, 320, 24, seed=2), 20)
  os.symlink(other, src / "linked")  # a symlinked folder is searched
  os.symlink(src / "missing.mp4", src / "gone.mp4")  # dangling
  os.symlink("loop.mp4", src / "loop.mp4")  # a link to itself
  os.symlink("pong.mp4", src / "ping.mp4")
  os.symlink("ping.mp4", src / "pong.mp4")
  os.symlink("..", src / "sub" / "back")  # a folder loop
  os.mkfifo(src / "pipe.mp4")  # ffmpeg would wait on it forever
  return src


def test_bad_entries_are_their_own_errors_and_the_run_goes_on(tree, tmp_path):
  summary = prepare.prepare(str(tree), str(tmp_path / "out"), progress=False)
  assert summary.dropped["fps"] == 2 and summary.clips_in == 2  # slow.mp4 and linked/linked.mp4 were read
  errors = sorted(summary.errors)
  assert errors == sorted([
      f"{tree}/gone.mp4: a dangling symlink (to {tree}/missing.mp4, which does not exist)",
      f"{tree}/loop.mp4: a symlink loop (its links never reach a file)",
      f"{tree}/ping.mp4: a symlink loop (its links never reach a file)",
      f"{tree}/pong.mp4: a symlink loop (its links never reach a file)",
      f"{tree}/pipe.mp4: not a regular file (a folder, pipe, device or socket)",
      f"{tree}/sub/back: a symlink loop (leads back to {tree}); skipped",
  ])
  table = summary.table()
  assert "errors                     6" in table and f"{tree}/gone.mp4: a dangling symlink" in table


def test_the_cli_prints_the_table_with_those_errors(tree, tmp_path, capsys):
  assert prepare_data.main([str(tree), str(tmp_path / "out"), "--no-progress"]) == 0
  table = capsys.readouterr().out
  assert "dropped: fps               2" in table and "a symlink loop" in table and "dangling symlink" in table


def test_a_folder_reached_twice_is_searched_once(tmp_path):
  src = tmp_path / "videos"
  (src / "real").mkdir(parents=True)
  (src / "real" / "a.mp4").write_bytes(b"")
  os.symlink(src / "real", src / "twin")
  problems = []
  assert prepare.find_sources(str(src), problems) == ["real/a.mp4"]
  assert [p.error for p in problems] == [f"{src}/twin: the same folder as {src}/real (a symlink); searched once, "
                                         f"as {src}/real"]



@pytest.fixture(scope="module")
def up_tree(tmp_path_factory, test_config):
  """top/videos (the source folder: a.mp4, `up -> ..`, `linked -> ../elsewhere` holding b.mp4) beside
  top/sibling/c.mp4, which no run may take in; and the summary of the local engine's run over it."""
  top = tmp_path_factory.mktemp("top")
  src = top / "videos"
  for folder in (src, top / "elsewhere", top / "sibling"):
    folder.mkdir()
  write_video(src / "a.mp4", moving_frames(240, 320, 60, seed=1, pixels_per_frame=1), 24)  # 2.5 s: one clip
  shutil.copy(src / "a.mp4", top / "elsewhere" / "b.mp4")
  shutil.copy(src / "a.mp4", top / "sibling" / "c.mp4")
  os.symlink("..", src / "up")
  os.symlink("../elsewhere", src / "linked")
  summary = prepare.prepare(str(src), str(top / "out"), config=test_config, progress=False)
  return src, summary


def check_up_tree_summary(src, summary):
  real = os.path.realpath(src)
  assert summary.errors == [f"{src}/up: a symlink loop (leads up to {os.path.dirname(real)}, which holds {src}); "
                            "skipped"]
  assert summary.sources == 3 and summary.clips_kept == 2 and summary.clips_outside == 1
  assert "  from outside SRC         1  through symlinks" in summary.table()
  import tensorflow_datasets as tfds
  clips = tfds.builder_from_directory(summary.dataset_dir).as_data_source("train")
  assert sorted(clip["clip_id"].decode().split("-")[0] for clip in clips) == ["a", "b"]  # no c: not the sibling's


def test_a_symlink_above_the_source_folder_is_a_loop_and_its_siblings_are_left_out(up_tree):
  check_up_tree_summary(*up_tree)


def test_the_beam_engine_leaves_them_out_as_well(up_tree, test_config, tmp_path):
  pytest.importorskip("apache_beam")
  src, local = up_tree
  summary = prepare.prepare(str(src), str(tmp_path / "out"), config=test_config, progress=False, engine="beam",
                            pipeline_args=("--runner=DirectRunner",))
  check_up_tree_summary(src, summary)
  assert summary.table().replace(summary.dataset_dir, "") == local.table().replace(local.dataset_dir, "")


def test_links_that_lead_above_the_folder_they_are_in_are_loops(tmp_path):
  """Found through a symlink to elsewhere: a link to a folder above the source folder, or above its own."""
  src, far = tmp_path / "videos", tmp_path / "far"
  (far / "deep").mkdir(parents=True)
  src.mkdir()
  (far / "f.mp4").write_bytes(b"")
  os.symlink("..", far / "deep" / "back")  # far holds far/deep, not the source folder
  os.symlink(tmp_path, far / "deep" / "top")  # holds the source folder
  os.symlink(far / "deep", src / "deep")
  problems = []
  assert prepare.find_sources(str(src), problems) == []  # f.mp4 is above the linked folder: not taken in
  real = os.path.realpath(tmp_path)
  assert [p.error for p in problems] == [
      f"{src}/deep/back: a symlink loop (leads up to {real}/far, which holds {src}/deep); skipped",
      f"{src}/deep/top: a symlink loop (leads up to {real}, which holds {src}); skipped"]

@pytest.mark.parametrize("argv,message", [
    (["{src}", "{tmp}/file/out"], "{tmp}/file is a file, not a folder: cannot write {tmp}/file/out"),
    (["{src}", "{tmp}/file"], "{tmp}/file is a file, not a folder"),
    (["{tmp}/file", "{tmp}/out"], "source folder {tmp}/file is a file, not a folder"),
    (["{src}", "{tmp}/out", "--seed", "-1"], "--seed must be zero or more, got -1"),
    (["{src}", "{tmp}/out", "--fps", "0"], "--fps must be positive, got 0.0"),
    (["{src}", "{tmp}/out", "--short-side", "0"], "--short-side must be positive, got 0"),
    (["{src}", "{tmp}/out", "--workers", "0"], "--workers must be positive, got 0"),
    (["{src}", "{tmp}/out", "--max-clip-seconds", "nan"], "--max-clip-seconds must be positive, got nan"),
])
def test_bad_outputs_and_options_are_one_error_before_any_work(tmp_path, capsys, argv, message):
  (tmp_path / "src").mkdir()
  (tmp_path / "file").write_text("x")
  before = sorted(os.listdir(tmp_path))
  assert prepare_data.main([a.format(tmp=tmp_path, src=tmp_path / "src") for a in argv] + ["--no-progress"]) == 2
  err = capsys.readouterr().err
  assert err == f"error: {message.format(tmp=tmp_path)}\n"
  assert sorted(os.listdir(tmp_path)) == before


def test_a_read_only_output_folder_is_one_error(tmp_path, capsys, monkeypatch):
  (tmp_path / "src").mkdir()
  folder = tmp_path / "read-only"
  folder.mkdir()
  # Root writes anywhere: the read-only folder is simulated where writability is asked.
  monkeypatch.setattr(atomic.os, "access", lambda path, mode: os.path.abspath(path) != str(folder))
  assert prepare_data.main([str(tmp_path / "src"), str(folder / "out"), "--no-progress"]) == 2
  assert capsys.readouterr().err == (f"error: cannot create {folder}/out: {folder} is not writable "
                                     "(permission denied)\n")
  assert os.listdir(folder) == []


# What a SIGKILL while writing a clip or the dataset leaves: the staging of the killed process.
KILLED = textwrap.dedent("""
    import os, signal, sys
    from kvjax.atomic import staged
    with staged(sys.argv[1], overwrite=True, folder=sys.argv[2] == "folder") as staging:
        open(os.path.join(staging, "part") if sys.argv[2] == "folder" else staging, "wb").write(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
""")


def test_stagings_of_killed_runs_are_removed_by_the_next_run(tree, tmp_path, capsys):
  out = tmp_path / "out"
  (out / "work" / "clips").mkdir(parents=True)
  for path, kind in ((out / "work" / "clips" / "slow-0123abcd-000.npz", "file"), (out / "dataset", "folder")):
    child = subprocess.run([sys.executable, "-c", KILLED, str(path), kind], cwd=REPO, capture_output=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
  assert any(".partial-" in n for n in os.listdir(out)) and os.listdir(out / "work" / "clips")
  prepare.prepare(str(tree), str(out), progress=False)
  err = capsys.readouterr().err
  assert "removed 1 leftover staging of" in err and err.count("removed 1 leftover staging") == 2
  assert not [name for _, folders, files in os.walk(out) for name in folders + files if ".partial-" in name]
