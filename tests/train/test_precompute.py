"""python -m train.precompute refuses bad options and inputs with one error line, before any encoding.
(The encoding itself is tested through training on its output, in test_train_cli.py.)"""

from train.precompute import main as precompute


def test_refusals_are_one_line_and_leave_nothing(tmp_path, capsys):
  data, out = tmp_path / "prepared", tmp_path / "inputs"
  data.mkdir()
  (tmp_path / "a-file").write_text("")
  base = ["--config", "keyframe-tiny", "--data", str(data), "--out", str(out)]
  for flags, message in (([], ""), (["--batch-size", "0"], "--batch-size 0"),
                         (["--mesh", "data=3"], "mesh 'data=3' has 3 devices"),
                         (["--weights", str(tmp_path / "missing")], "missing"),
                         (["--out", str(tmp_path / "a-file" / "inputs")], "is a file, not a folder"),
                         (["--set", "frame_strde=2"], "--set frame_strde: TrainConfig has no such field; did you mean "
                          "frame_stride?"),
                         (["--set", "clip_start=middle"], "--set clip_start=middle: TrainConfig.clip_start must be")):
    argv = [*base, *flags]
    if not flags:
      argv[3] = str(tmp_path / "no-data")
      message = "no such folder"
    assert precompute(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, (message, err)
  assert not out.exists()
