"""2.4 must be right on networks whose answer is known by construction (tests/knownkit.py):
shortcut networks with cues of several kinds, places and strengths say "not meaningful", digit
readers "meaningful", untrained networks "not meaningful". One cheap case runs in `make test`,
through the command line, end to end; every other case is a slow test here, and the
whole suite with its confusion table is benchmarks/known_answer.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

import knownkit
from cnnlab.analysis import controls as ctl
from cnnlab.analysis import meaningful as mm
from cnnlab.analysis import meaningful_rule as rule

N_IMAGES = 150
CASES = {c.name: c for c in knownkit.CASES}


@pytest.fixture(scope="module")
def controls(mnist_split):
    """N and P, trained once for the module (the command trains them itself on every run)."""
    from cnnlab.model import Net
    ref = Net(mean=mnist_split.mean, std=mnist_split.std)
    return {"negative": ctl.train_shortcut(ref, mnist_split.train_x, seed=0),
            "positive": ctl.train_reader(ref, mnist_split.train_x, mnist_split.train_y, seed=0)}


def _check(name: str, split, controls) -> None:
    case = CASES[name]
    net, _ = knownkit.train_case(case, split)
    truth = knownkit.ground_truth(case, net, split)
    assert truth["truth"] in rule.VERDICTS, truth                 # the construction gave a known answer
    x, y = knownkit.case_images(case, split, N_IMAGES)
    r = mm.meaningful_experiment(net, x, y, split=split, n_behaviour=N_IMAGES, n_occlusion=20, **controls)
    assert r.verdict == truth["truth"], (r.verdict, r.reasons, r.subjects["M"]["behaviour"])
    assert r.controls["behaviour"], r.reasons                  # the controls never depend on M


@pytest.mark.mnist
# the slow tier: the reader is also test_meaningful's digit-reading model, and make test calls a
# shortcut network "not meaningful" twice already (the command below, and test_meaningful.py)
@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in knownkit.CHEAP if n != knownkit.CHEAP[0]])
def test_a_cheap_known_answer_network_gets_its_verdict(name, mnist_split, controls):
    _check(name, mnist_split, controls)


@pytest.mark.slow
@pytest.mark.mnist
@pytest.mark.parametrize("name", [n for n in CASES if n not in knownkit.CHEAP])
def test_every_known_answer_network_gets_its_verdict(name, mnist_split, controls):
    _check(name, mnist_split, controls)


def _run_dir(path, model, batch_norm: bool = False):
    """A minimal run directory holding `model` (what `cnnlab train` writes, less the history)."""
    from cnnlab.model import save_weights
    from cnnlab.output import write_json
    from cnnlab.runs import RUN_FORMAT
    path.mkdir(parents=True)
    save_weights(model, path / "model.safetensors")
    write_json(path / "run.json", {"format": RUN_FORMAT, "status": "complete", "versions": {},
                                   "config": {"dataset": "mnist", "batch_norm": batch_norm, "val_size": 10000,
                                              "split_seed": 0},
                                   "split": {}})
    return path


@pytest.mark.mnist
def test_the_command_calls_a_marker_shortcut_network_not_meaningful(mnist_split, mnist_dir, tmp_path, capsys):
    """`cnnlab occlusion RUN --meaningful --images F.npz --json`, end to end, controls trained inside."""
    from cnnlab.cli import main
    case = CASES[knownkit.CHEAP[0]]
    net, _ = knownkit.train_case(case, mnist_split)
    run = _run_dir(tmp_path / "run", net)
    x, y = knownkit.case_images(case, mnist_split, 100)
    np.savez(tmp_path / "cued.npz", images=x, labels=y)
    assert main(["occlusion", str(run), "--meaningful", "--images", str(tmp_path / "cued.npz"),
                 "--data-dir", str(mnist_dir), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["verdict"] == "not meaningful", d["reasons"]
    assert d["controls"]["behaviour"] and d["subjects"]["M"]["behaviour_call"] == "does not read the digit"
