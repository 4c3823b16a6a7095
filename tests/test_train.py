"""Training: an end-to-end smoke run on real MNIST, determinism, what a run directory holds."""

import csv
import json

import pytest
import torch

from cnnlab.config import PRESETS, TrainConfig, preset
from cnnlab.errors import ConfigError
from cnnlab.model import load_weights, weights_digest
from cnnlab.runs import open_run
from cnnlab.train import evaluate, train

QUIET = dict(progress=False, log=lambda s: None)


def test_one_epoch_reaches_98_percent(mnist_run):
    info = json.loads((mnist_run / "run.json").read_text())
    assert info["status"] == "complete" and info["test"]["accuracy"] >= 0.98
    for f in ("model.safetensors", "run.json", "metrics.csv"):      # its figures: test_cli_core
        assert (mnist_run / f).stat().st_size > 0
    for key in ("config", "versions", "device", "precision", "split", "timing", "best", "test"):
        assert key in info
    assert info["split"]["train_size"] == 50_000 and info["split"]["val_size"] == 10_000
    assert len(info["split"]["val_indices_sha256"]) == 16
    rows = list(csv.DictReader(open(mnist_run / "metrics.csv")))
    assert len(rows) == 4 and rows[-1]["kind"] == "epoch"          # 3 logged steps + end of epoch
    assert float(rows[-1]["val_acc"]) > float(rows[0]["val_acc"])


def test_reported_accuracy_matches_independent_evaluation(mnist_run, mnist_split):
    run = open_run(mnist_run)
    model = run.load_model()
    with torch.no_grad():
        pred = torch.cat([model(mnist_split.test_x[i:i + 1000].float() / 255).argmax(1)
                          for i in range(0, 10_000, 1000)])
    acc = (pred == mnist_split.test_y).float().mean().item()
    assert abs(acc - run.info.test.accuracy) <= 0.002     # bf16 vs fp32 evaluation
    assert evaluate(model, mnist_split.test_x, mnist_split.test_y).accuracy == pytest.approx(acc, abs=1e-6)


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=pytest.mark.slow)])
def test_same_seed_same_metrics(mnist_small, precision):
    cfg = TrainConfig(epochs=1, train_subset=1024, batch_size=128, precision=precision, log_every=4)
    a, b = train(cfg, split=mnist_small, **QUIET), train(cfg, split=mnist_small, **QUIET)
    assert weights_digest(a.model) == weights_digest(b.model)
    assert [r["val_loss"] for r in a.metrics] == [r["val_loss"] for r in b.metrics]
    c = train(cfg.replace(seed=1), split=mnist_small, **QUIET)
    assert weights_digest(c.model) != weights_digest(a.model)


def test_augmentation_and_batch_norm_train(mnist_small, tmp_path):
    cfg = TrainConfig(epochs=1, train_subset=4096, batch_size=64, augment=True, batch_norm=True)
    res = train(cfg, tmp_path / "r", split=mnist_small, figures=False, **QUIET)
    assert res.test_accuracy > 0.8
    assert load_weights(tmp_path / "r" / "model.safetensors").batch_norm


def test_config_validation_and_presets():
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="unknown configuration key"):
        TrainConfig.from_dict({"epochs": 1, "learning_rate": 3})
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=float("nan"))
    assert preset("quick", epochs=5).epochs == 5 and preset("quick", epochs=None).epochs == PRESETS["quick"]["epochs"]
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
