"""The training loop's contracts (state, hook, evaluation), the CLI flags generated from the
config, and the one result protocol every analysis follows."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch

from cnnlab.analysis import activations, anatomy, class_models, filters, occlusion, robustness, targeted
from cnnlab.analysis._shared import untrained_like
from cnnlab.cli.common import add_config_flags
from cnnlab.config import TrainConfig
from cnnlab.errors import ConfigError
from cnnlab.metrics import LoopState
from cnnlab.model import Net
from cnnlab.output import jsonable
from cnnlab.train import evaluate, train
from faultkit import TINY, synthetic_split


def _train(**kw):
    return train(TINY.replace(epochs=1), None, split=synthetic_split(), progress=False, log=lambda s: None, **kw)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

def test_callback_sees_every_step_once_in_order_and_changes_nothing_when_it_returns_none():
    seen = []
    with_hook = _train(callback=lambda state, loss: seen.append((state.step, loss.item())))
    plain = _train()
    assert [s for s, _ in seen] == list(range(with_hook.info.steps))
    assert all(np.isfinite(v) for _, v in seen)
    # the oracle: the same run without a hook (same seed), row for row
    drop = ("train_time_s", "elapsed_s")
    strip = [{k: v for k, v in m.items() if k not in drop} for m in plain.metrics]
    assert [{k: v for k, v in m.items() if k not in drop} for m in with_hook.metrics] == strip


def test_a_callback_that_scales_the_loss_changes_the_run():
    """Control: the hook really reaches the update (a loss ×0 leaves the weights where AdamW's
    decay alone takes them, which is not where training takes them)."""
    plain = _train()
    zeroed = _train(callback=lambda state, loss: loss * 0.0)
    init = untrained_like(plain.model, TINY.seed)
    assert not torch.equal(zeroed.model.fc2.weight, plain.model.fc2.weight)
    # no gradient: only the decoupled weight decay moved fc2, so it stays parallel to its init
    cos = torch.nn.functional.cosine_similarity(zeroed.model.fc2.weight.detach().flatten(), init.fc2.weight.detach().flatten(), dim=0)
    assert float(cos) == pytest.approx(1.0, abs=1e-6)


def test_loop_state_round_trips_through_json():
    s = LoopState(epoch=2, batch=3, step=11, images=700, best_val_acc=0.5, best_epoch=1.75, best_step=7,
                  train_time_s=1.5, epoch_time_s=0.25, epoch_times_s=[0.5, 0.75], run_loss=3.0, run_err=4.0, run_n=5)
    assert LoopState.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(TypeError):
        LoopState.from_dict({**s.to_dict(), "unknown": 1})


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_evaluate_leaves_the_callers_model_as_it_was(memory_format):
    torch.manual_seed(0)
    model = Net().to(memory_format=memory_format).train()
    x = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (40,))
    res = evaluate(model, x, y, batch_size=16)
    assert model.training
    assert model.conv1.weight.is_contiguous(memory_format=memory_format)
    assert model.conv2.weight.is_contiguous() == (memory_format == torch.contiguous_format)
    with torch.no_grad():                                     # oracle: one plain forward pass
        pred = model.eval()(x.float() / 255).argmax(1)
    assert torch.equal(res.predictions, pred)


# ---------------------------------------------------------------------------------------------
# Training flags generated from TrainConfig
# ---------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_config_flags(p)
    return p


def test_every_config_field_has_a_flag_with_its_comment_as_help():
    p = _parser()
    dests = {a.dest: a for a in p._actions}
    for f in dataclasses.fields(TrainConfig):
        assert f.name in dests, f.name
        assert dests[f.name].help, f.name
    assert "peak learning rate" in dests["lr"].help and "[1e-08, 10]" in dests["lr"].help


@pytest.mark.parametrize("flag, field, value, ok", [
    ("--label-smoothing", "label_smoothing", "0.995", True),   # the old CLI refused this; the config allows it
    ("--label-smoothing", "label_smoothing", "1", False),
    ("--epochs", "epochs", "1", True), ("--epochs", "epochs", "0", False),
    ("--max-rotate", "max_rotate", "45", True), ("--max-rotate", "max_rotate", "46", False),
    ("--val-size", "val_size", "59999", True), ("--val-size", "val_size", "60000", False),
])
def test_flags_accept_exactly_what_the_config_accepts(flag, field, value, ok):
    kind = int if field in ("epochs", "val_size") else float
    try:
        TrainConfig(**{field: kind(value)})
        config_ok = True
    except ConfigError:
        config_ok = False
    try:
        args = _parser().parse_args([flag, value])
        cli_ok = getattr(args, field) == kind(value)
    except argparse.ArgumentError:
        cli_ok = False
    assert config_ok == cli_ok == ok


# ---------------------------------------------------------------------------------------------
# One result protocol
# ---------------------------------------------------------------------------------------------

def _results(model):
    img = torch.rand(28, 28)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    return [anatomy.summary(model=model),
            filters.filters(model, "conv1", reference=untrained_like(model, 0)),
            activations.activations(model, img),
            occlusion.occlusion(model, img, patch_sizes=(3,)),
            class_models.synthesize(model, targets=[1, 2], steps=2),
            targeted.adversarial(model, img, targets=[3], steps=2),
            robustness.robustness({"net": model}, x, y, eps_list=[0.0, 0.1])]


def test_every_result_has_to_dict_figure_and_save(tmp_path):
    import matplotlib.pyplot as plt
    torch.manual_seed(0)
    model = Net().eval()
    for res in _results(model):
        d = res.to_dict()
        json.dumps(d)
        fig = res.figure()
        assert isinstance(fig, plt.Figure)
        plt.close(fig)
        paths = res.save(tmp_path / type(res).__name__)
        names = {p.name for p in paths}
        assert {f"{res.stem}.json", f"{res.stem}.png"} <= names <= {f"{res.stem}.json", f"{res.stem}.png", f"{res.stem}.npz"}
        # what to_dict returns, as every JSON file cnnlab writes holds it (NaN as null: output.jsonable)
        assert json.loads((tmp_path / type(res).__name__ / f"{res.stem}.json").read_text()) == jsonable(d)
        assert not list((tmp_path / type(res).__name__).glob(".*.tmp"))


@pytest.mark.parametrize("total_steps", range(1, 13))
@pytest.mark.parametrize("pct_start", [0.1, 0.25, 0.5, 0.75])
def test_the_schedule_runs_for_any_number_of_steps(total_steps, pct_start):
    """OneCycleLR divides by zero when the warm-up is exactly one step; ours steps through."""
    from cnnlab.model import Net
    from cnnlab.train import make_optimizer
    opt, sched = make_optimizer(Net(), TINY.replace(pct_start=pct_start, lr=1e-2), total_steps)
    lrs = [sched.get_last_lr()[0]]
    for _ in range(total_steps - 1):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert len(lrs) == total_steps and all(0 < lr <= 1e-2 * (1 + 1e-9) for lr in lrs)
    if pct_start * total_steps >= 1:              # a warm-up of one step or more starts at lr / 25
        assert lrs[0] == pytest.approx(1e-2 / 25)


def test_a_one_step_warm_up_gives_the_rates_of_a_slightly_longer_one_where_torch_alone_divides_by_zero():
    from cnnlab.model import Net
    from cnnlab.train import make_optimizer

    def rates(opt, sched):
        lrs = [sched.get_last_lr()[0]]
        for _ in range(3):
            opt.step()
            sched.step()
            lrs.append(sched.get_last_lr()[0])
        return lrs
    ours = rates(*make_optimizer(Net(), TINY.replace(pct_start=0.25, lr=1e-2), 4))
    sgd = torch.optim.SGD(Net().parameters(), lr=1e-2)
    longer = rates(sgd, torch.optim.lr_scheduler.OneCycleLR(sgd, max_lr=1e-2, total_steps=4, pct_start=0.2500001,
                                                              anneal_strategy="cos", div_factor=25.0,
                                                              final_div_factor=1e3))
    assert ours == pytest.approx(longer, rel=1e-6)
    assert ours[0] == pytest.approx(1e-2 / 25) and ours[3] == pytest.approx(1e-2 / 25 / 1e3)
    with pytest.raises(ZeroDivisionError):          # the control: torch's scheduler as it comes
        torch.optim.lr_scheduler.OneCycleLR(torch.optim.SGD(Net().parameters(), lr=1e-2), max_lr=1e-2,
                                            total_steps=4, pct_start=0.25)
