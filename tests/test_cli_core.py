"""The CLI core: clear one-line errors, and a seconds-long end-to-end run through the command line."""

import json
import subprocess
import sys

import pytest

from cnnlab.cli import main


def run_cli(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as e:          # argparse usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, needle", [
    (["train", "--epochs", "0"], "--epochs 0: expected an integer in [1, 100000]"),                        # the config's own words
    (["train", "--batch-size", "0"], "--batch-size 0: expected an integer in [1, 60000]"),
    (["train", "--lr", "nan"], "not a finite number"),
    (["train", "--bogus"], "unrecognized arguments"),
    (["evaluate", "/nonexistent/run"], "does not exist"),
])
def test_bad_input_is_one_clear_line(capsys, argv, needle):
    code, out, err = run_cli(capsys, *argv)
    assert code != 0 and needle in err and "Traceback" not in err


def test_run_dir_without_checkpoint(capsys, tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"format": 1, "config": {}, "split": {}, "versions": {}, "status": "complete"}))
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path))
    assert code == 2 and "no checkpoint" in err and len(err.strip().splitlines()) == 1


def test_data_command(capsys, mnist_dir):
    code, out, _ = run_cli(capsys, "data", "--data-dir", str(mnist_dir), "--json")
    summary = json.loads(out)
    assert code == 0 and summary["train_size"] == 50_000 and summary["test_size"] == 10_000


def test_end_to_end_train_and_evaluate(capsys, mnist_dir, tmp_path):
    out = tmp_path / "smoke"
    code, _, err = run_cli(capsys, "train", "--preset", "smoke", "--out", str(out), "--data-dir", str(mnist_dir), "--quiet")
    assert code == 0, err
    for png in ("curves.png", "predictions.png"):                   # the run's figures, as PNG files
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 10_000
    code, stdout, _ = run_cli(capsys, "evaluate", str(out), "--data-dir", str(mnist_dir), "--json")
    res = json.loads(stdout)
    assert code == 0 and res["test_accuracy"] > 0.9
    # a second train into the same folder is refused unless --overwrite
    code, _, err = run_cli(capsys, "train", "--preset", "smoke", "--out", str(out), "--data-dir", str(mnist_dir))
    assert code == 2 and "--overwrite" in err


def test_python_dash_m():
    r = subprocess.run([sys.executable, "-m", "cnnlab", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("cnnlab ")
