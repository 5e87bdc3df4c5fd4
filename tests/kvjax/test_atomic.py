"""kvjax.atomic.staged: whole outputs or none; leftovers of killed runs are removed by the next run, a live
run's staging is kept; unwritable outputs are one clear error naming the path."""

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from kvjax import atomic
from kvjax.atomic import OutputError, remove_leftovers, staged

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Stages OUT (a folder or a file), writes into it, prints the staging path, then dies by SIGKILL or, with
# "wait", waits for its stdin to close while staging.
STAGER = textwrap.dedent("""
    import os, signal, sys
    from kvjax.atomic import staged
    out, folder, mode = sys.argv[1], sys.argv[2] == "folder", sys.argv[3]
    with staged(out, overwrite=True, folder=folder) as staging:
        with open(os.path.join(staging, "part") if folder else staging, "w") as f:
            f.write("half")
        print(staging, flush=True)
        if mode == "wait":
            sys.stdin.read()
        os.kill(os.getpid(), signal.SIGKILL)
""")


def stage_in_child(out, folder, mode="kill"):
  child = subprocess.Popen([sys.executable, "-c", STAGER, str(out), "folder" if folder else "file", mode],
                           cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  staging = child.stdout.readline().strip()
  assert staging and os.path.lexists(staging), "the child did not stage"
  return child, staging


def staging_names(folder):
  return [n for n in os.listdir(folder) if atomic.STAGING_MARK in n]


@pytest.mark.parametrize("folder", [True, False], ids=["folder", "file"])
def test_a_killed_run_leaves_a_staging_that_the_next_run_removes(tmp_path, capsys, folder):
  out = tmp_path / "out"
  child, staging = stage_in_child(out, folder)
  assert child.wait(10) == -signal.SIGKILL
  name = os.path.basename(staging)
  assert name.startswith(".out.partial-") and f"-{child.pid}-" in name  # the owner is in the name
  assert staging_names(tmp_path) == [name] and not out.exists()

  with staged(out, folder=folder) as new:
    open(os.path.join(new, "whole") if folder else new, "w").close()
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "removed 1 leftover staging of" in err and str(out) in err
  assert f"pid {child.pid}" in err
  assert staging_names(tmp_path) == [] and out.exists()
  with staged(out, overwrite=True, folder=folder) as new:
    open(os.path.join(new, "whole") if folder else new, "w").close()
  assert capsys.readouterr().err == ""  # nothing left to report


def test_a_live_runs_staging_is_kept_until_it_is_gone(tmp_path, capsys):
  out = tmp_path / "video.mp4"
  child, staging = stage_in_child(out, folder=False, mode="wait")
  try:
    with staged(out, folder=False) as mine:
      open(mine, "w").close()
    assert os.path.exists(staging) and capsys.readouterr().err == ""  # the live run's staging is its own
  finally:
    child.kill()
    child.wait(10)
  with staged(out, overwrite=True, folder=False) as mine:
    open(mine, "w").close()
  assert not os.path.exists(staging) and "removed 1 leftover staging" in capsys.readouterr().err
  assert sorted(os.listdir(tmp_path)) == ["video.mp4"]


def test_remove_leftovers_sweeps_a_folder_and_leaves_unknown_owners(tmp_path, capsys):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  pid = int(dead.stdout)
  host = atomic._host_tag()
  (tmp_path / f".a.npz.partial-{host}-{pid}-0123abcd").write_text("x")
  (tmp_path / f".b.partial-{host}-{pid}-89abcdef").mkdir()
  (tmp_path / f".c.partial-{host}-{os.getpid()}-00000000").write_text("mine, alive")
  (tmp_path / ".d.partial-deadbeef").write_text("older kvjax: owner unknown")
  (tmp_path / f".e.partial-ffffff-{pid}-00000000").write_text("another machine")
  (tmp_path / "keep.partial-x").write_text("not a staging")
  removed = remove_leftovers(tmp_path)
  assert sorted(map(os.path.basename, removed)) == [f".a.npz.partial-{host}-{pid}-0123abcd",
                                                   f".b.partial-{host}-{pid}-89abcdef"]
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "removed 2 leftover stagings" in err
  assert ".d.partial-deadbeef" in err and ".e.partial-ffffff" in err and "left alone" in err
  assert sorted(os.listdir(tmp_path)) == sorted([f".c.partial-{host}-{os.getpid()}-00000000", ".d.partial-deadbeef",
                                                 f".e.partial-ffffff-{pid}-00000000", "keep.partial-x"])


def test_overwrite_replaces_folders_and_files_and_errors_leave_the_old_output(tmp_path):
  out = tmp_path / "model"
  out.mkdir()
  (out / "old").write_text("old")
  with pytest.raises(RuntimeError):
    with staged(out, overwrite=True) as staging:
      open(os.path.join(staging, "new"), "w").close()
      raise RuntimeError("fails half way")
  assert os.listdir(out) == ["old"] and os.listdir(tmp_path) == ["model"]
  with staged(out, overwrite=True) as staging:
    open(os.path.join(staging, "new"), "w").close()
  assert os.listdir(out) == ["new"] and os.listdir(tmp_path) == ["model"]
  with staged(out, overwrite=True, folder=False) as staging:  # a folder replaced by a file
    open(staging, "w").write("file")
  assert out.read_text() == "file" and os.listdir(tmp_path) == ["model"]
  with pytest.raises(FileExistsError, match="pass --overwrite"):
    with staged(out):
      pass


def test_a_parent_that_is_a_file_is_a_clear_error(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(OutputError, match=f"{tmp_path / 'file'} is a file, not a folder"):
    with staged(tmp_path / "file" / "sub" / "out"):
      pass
  assert os.listdir(tmp_path) == ["file"]


def test_an_unwritable_folder_is_a_clear_error(tmp_path, monkeypatch):
  # Root writes anywhere, so the refusal of a read-only folder is simulated at the system call.
  def refuse(path, *args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied", path)

  monkeypatch.setattr(atomic.os, "mkdir", refuse)
  with pytest.raises(OutputError) as info:
    with staged(tmp_path / "out"):
      pass
  assert str(info.value) == f"cannot write {tmp_path / 'out'}: {tmp_path} is not writable (Permission denied)"
  assert isinstance(info.value, ValueError)  # every CLI prints ValueErrors as one `error:` line
  monkeypatch.setattr(atomic.os, "open", refuse)
  with pytest.raises(OutputError, match="is not writable"):
    with staged(tmp_path / "out.mp4", folder=False):
      pass
  assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_a_clear_error(tmp_path):
  folder = tmp_path / "ro"
  folder.mkdir()
  folder.chmod(0o555)
  try:
    with pytest.raises(OutputError, match="not writable"):
      with staged(folder / "out"):
        pass
    with pytest.raises(OutputError, match="not writable"):
      atomic.check_writable(folder / "sub")
  finally:
    folder.chmod(0o755)


def test_a_full_disk_while_writing_names_the_output_and_leaves_nothing(tmp_path):
  with pytest.raises(OutputError, match=f"cannot write {tmp_path / 'out.gif'}: No space left on device"):
    with staged(tmp_path / "out.gif", folder=False) as staging:
      open(staging, "w").close()
      raise OSError(errno.ENOSPC, "No space left on device")
  assert os.listdir(tmp_path) == []
