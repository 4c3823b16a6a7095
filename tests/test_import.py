"""`cnnlab import`: networks written the way students write them, trained a few steps here, saved
both ways, imported; the oracle is the student's own module (its evaluation, its occlusion maps)."""

from __future__ import annotations

import json
import math
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import WeightsImportError
from cnnlab.imported import InputTransform, import_weights, match_layers, read_learner_metrics, read_weights

MNIST_NORM = (0.1307, 0.3081)


# --- the students' networks ------------------------------------------------------------------------

def sequential(batch_norm: bool = False, dropout: bool = False) -> nn.Module:
    """nn.Sequential with Flatten, batch-norm between conv and ReLU, dropout before fc2."""
    bn = (lambda: [nn.BatchNorm2d(32)]) if batch_norm else (lambda: [])
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), *bn(), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), *bn(), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 500), nn.ReLU(), *([nn.Dropout(0.5)] if dropout else []),
        nn.Linear(500, 10))


class StudentNet(nn.Module):
    """A class with its own names, nested blocks, conv without bias under batch-norm, a BatchNorm1d
    after fc1, and x.view for the flatten."""

    def __init__(self, batch_norm: bool = True, fc_bn: bool = False):
        super().__init__()
        self.features = nn.ModuleDict({
            "conv_a": nn.Conv2d(1, 32, 3, padding=1, bias=not batch_norm),
            "norm_a": nn.BatchNorm2d(32) if batch_norm else nn.Identity(),
            "conv_b": nn.Conv2d(32, 32, 3, padding=1, bias=not batch_norm),
            "norm_b": nn.BatchNorm2d(32) if batch_norm else nn.Identity()})
        self.hidden = nn.Linear(1568, 500)
        self.hidden_norm = nn.BatchNorm1d(500) if fc_bn else nn.Identity()
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(500, 10)

    def forward(self, x):
        f = self.features
        x = F.max_pool2d(F.relu(f["norm_a"](f["conv_a"](x))), 2)
        x = F.max_pool2d(F.relu(f["norm_b"](f["conv_b"](x))), 2)
        x = F.relu(self.hidden_norm(self.hidden(x.view(x.size(0), -1))))
        return self.out(self.drop(x))


def trained(model: nn.Module, split, transform: InputTransform, steps: int = 40, seed: int = 0,
            batch: int = 64) -> nn.Module:
    """A few seeded Adam steps on MNIST fed through the student's transform; returned in eval mode
    (87–95% test accuracy for the five cases below, 1.9 s each on 1 thread; batches of 128 took
    twice as long for 90–95%)."""
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(split.train_x), (batch,), generator=g)
        loss = F.cross_entropy(model(feed(split.train_x[idx], transform)), split.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def feed(x_uint8: torch.Tensor, t: InputTransform) -> torch.Tensor:
    """What the student's DataLoader gives: ToTensor (or raw bytes), then Normalize."""
    x = x_uint8.float() / 255 if t.pixel_max == 1 else x_uint8.float()
    return (x - t.mean) / t.std if t.normalized else x


def own_accuracy(model: nn.Module, split, t: InputTransform) -> tuple[float, torch.Tensor]:
    with torch.no_grad():
        pred = torch.cat([model(feed(split.test_x[i:i + 1000], t)).argmax(1) for i in range(0, len(split.test_x), 1000)])
    return float((pred == split.test_y).float().mean()), pred


def save_torch(model: nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def save_safetensors(model: nn.Module, path: Path) -> Path:
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


CASES = {
    "sequential": (lambda: sequential(), InputTransform(1.0, *MNIST_NORM)),
    "sequential-dropout": (lambda: sequential(dropout=True), InputTransform()),
    "sequential-bn": (lambda: sequential(batch_norm=True), InputTransform(1.0, *MNIST_NORM)),
    "class-bn-fc-bn": (lambda: StudentNet(batch_norm=True, fc_bn=True), InputTransform(255.0)),
    "class-plain": (lambda: StudentNet(batch_norm=False), InputTransform(1.0, 0.5, 0.5)),
}


@pytest.fixture(scope="module")
def split(mnist_small):
    """MNIST with its first 2000 test images (conftest's mnist_small): every comparison below is
    image by image, and the import's own evaluation of 10,000 images per model made this file the
    suite's slowest."""
    return mnist_small


@pytest.fixture(scope="module")
def students(split):
    return {name: (trained(make(), split, t, seed=i), t) for i, (name, (make, t)) in enumerate(CASES.items())}


# --- the contract ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def own(students, split):
    """Each student model's own evaluation of the whole test set (accuracy, predictions)."""
    return {name: own_accuracy(model, split, t) for name, (model, t) in students.items()}


SAVED = [(name, save_torch) for name in CASES] + [("sequential-bn", save_safetensors), ("class-bn-fc-bn", save_safetensors)]


LOG = "epoch,train_loss,train_acc,val_loss,val_acc\n0.5,0.8,0.75,0.5,0.86\n1,0.4,0.88,0.3,0.91\n"


@pytest.fixture(scope="module")
def imported(students, split, tmp_path_factory):
    """Each student model saved with torch.save and imported, with a training log."""
    d = tmp_path_factory.mktemp("imported")
    (d / "log.csv").write_text(LOG)
    return {name: import_weights(save_torch(model, d / f"{name}.pt"), d / name, t, split=split, metrics=d / "log.csv")
            for name, (model, t) in students.items()}


@pytest.mark.parametrize("name,saver", SAVED, ids=[f"{n}-{'pt' if s is save_torch else 'safetensors'}" for n, s in SAVED])
def test_imported_accuracy_is_the_students_own_evaluation(name, saver, students, own, imported, split, tmp_path):
    model, t = students[name]
    acc, pred = own[name]
    assert acc > 0.8, f"{name} learned something in its few steps ({acc:.3f})"
    if saver is save_torch:
        res = imported[name]
    else:
        res = import_weights(saver(model, tmp_path / "w.bin"), tmp_path / "run", t, split=split)
    assert res.test_accuracy == acc
    assert res.run.info.test.errors == int((pred != split.test_y).sum())
    ours = res.run.load_model()
    with torch.no_grad():
        theirs = model(feed(split.test_x[:256], t))
        mine = ours(split.test_x[:256].float() / 255)
    assert torch.allclose(mine, theirs, atol=2e-4, rtol=1e-4)
    assert res.run.imported.transform_text == t.describe()
    assert res.run.batch_norm == ("bn" in name)


def test_occlusion_maps_equal_those_of_the_students_module(students, imported, split):
    from cnnlab.analysis.occlusion import occlusion
    for name in ("sequential-bn", "class-bn-fc-bn"):
        model, t = students[name]
        run = imported[name].run
        img = split.test_x[0, 0].float() / 255
        got = occlusion(run.load_model(), img[None], patch_sizes=(3,), precision="fp32")
        # the oracle: the student's own module on each occluded copy, built by a plain loop
        copies = []
        for i in range(26):
            for j in range(26):
                o = img.clone()
                o[i:i + 3, j:j + 3] = got.fill
                copies.append(o)
        x = torch.stack(copies)[:, None]
        with torch.no_grad():
            p = model(feed_float(x * t.pixel_max, t)).softmax(1)[:, got.target].reshape(26, 26)
        assert got.base_pred == int(own_accuracy(model, split, t)[1][0])
        assert torch.allclose(torch.as_tensor(got.prob[3]).float(), p, atol=2e-5)


def feed_float(x: torch.Tensor, t: InputTransform) -> torch.Tensor:
    """The student's transform on float pixels already on its scale."""
    return (x - t.mean) / t.std if t.normalized else x


# --- what a student gets wrong: one line each, nothing written ----------------------------------------

def state(**changes):
    """The Sequential's state dict with tensors replaced (value) or removed (None); '0_weight' = '0.weight'."""
    sd = sequential().state_dict()
    for k, v in changes.items():
        k = k.replace("_", ".")
        if v is None:
            sd.pop(k)
        else:
            sd[k] = v
    return sd


def refused(tmp_path, source, match, **kw) -> str:
    out = tmp_path / "run"
    with pytest.raises(WeightsImportError, match=match) as e:
        import_weights(source, out, split=object(), **kw)     # refused before the data is touched
    assert "\n" not in str(e.value)
    assert not out.exists()
    return str(e.value)


@pytest.mark.parametrize("change,match", [
    ({"9_weight": None, "9_bias": None}, "1 fully connected layer; the assignment's network has 2"),
    ({"3_weight": torch.zeros(64, 32, 3, 3), "3_bias": torch.zeros(64)}, "conv2 has 64 filters, the assignment's network has 32"),
    ({"7_weight": torch.zeros(500, 3136)}, r"fc1 has 64·7·7 inputs, the assignment's network has 32·7·7"),
    ({"7_weight": torch.zeros(500, 800)}, r"fc1 has 32·5·5 inputs"),
    ({"0_weight": torch.zeros(32, 3, 3, 3)}, "conv1 takes 3 input channels, the assignment's network takes 1"),
    ({"0_weight": torch.zeros(32, 1, 5, 5)}, "conv1 has 5×5 kernels"),
    ({"0_bias": torch.zeros(16)}, r"conv1's bias \(0.bias\) has shape \[16\]"),
    ({"12_weight": torch.zeros(10, 10), "12_bias": torch.zeros(10)}, "a fully connected layer more"),
    ({"0_weight": torch.full((32, 1, 3, 3), math.nan)}, "non-finite"),
    ({"9_bias": torch.tensor([float("inf")] * 10)}, "non-finite"),
    ({"0_weight": torch.zeros(32, 1, 3, 3, dtype=torch.int64)}, "int64; the weights must be floating point"),
    ({"x_scale": torch.ones(1)}, "unexpected tensor x.scale"),
])
def test_a_state_dict_that_is_not_the_assignments_network_is_one_line(change, match, tmp_path):
    refused(tmp_path, state(**change), match)


def test_a_batch_norm_network_needs_both_batch_norms_and_their_statistics(tmp_path):
    sd = sequential(batch_norm=True).state_dict()
    refused(tmp_path, {k: v for k, v in sd.items() if not k.startswith("5.")}, "1 batch-norm layer")
    no_stats = {k: v for k, v in sd.items() if k.startswith("5.") and "running" not in k and "num_b" not in k}
    refused(tmp_path, {**{k: v for k, v in sd.items() if not k.startswith("5.")}, **no_stats}, "unexpected tensor 5.weight")
    refused(tmp_path, dict(sd, **{"1.running_var": -torch.ones(32)}), "negative variances")
    refused(tmp_path, dict(sd, **{"1.running_mean": torch.zeros(64), "1.running_var": torch.ones(64)}), "64 features")


def test_layers_defined_out_of_order_are_matched_by_shape():
    sd = sequential().state_dict()
    backwards = dict(sorted(sd.items(), key=lambda kv: -int(kv[0].split(".")[0])))     # fc2 first, conv1 last
    m = match_layers(backwards)
    assert m.sources == {"conv1": "0", "conv2": "3", "fc1": "7", "fc2": "9"}
    assert all(torch.equal(m.state[f"{k}.weight"], sd[f"{v}.weight"]) for k, v in m.sources.items())


def test_a_checkpoint_dict_is_unwrapped_and_other_objects_are_refused(tmp_path):
    sd = sequential().state_dict()
    m = match_layers({"model.net." + k: v for k, v in sd.items()})       # any nesting of names
    assert m.sources == {"conv1": "model.net.0", "conv2": "model.net.3", "fc1": "model.net.7", "fc2": "model.net.9"}
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "model_state_dict": sd, "optimizer_state_dict": {"state": {}}}, path)
    assert list(read_weights(path)[0]) == list(sd)
    torch.save({"epoch": 3, "weights_of_mine": sd}, path)
    refused(tmp_path, path, "entry 'epoch' is a int, not a tensor")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")     # torch.jit, to write a TorchScript file
def test_files_that_are_not_state_dicts_are_refused_unopened(tmp_path):
    model = sequential()
    torch.save(model, tmp_path / "whole.pt")
    assert "torch.save(model.state_dict()" in refused(tmp_path, tmp_path / "whole.pt", "whole pickled model")
    torch.jit.save(torch.jit.script(model), tmp_path / "ts.pt")
    refused(tmp_path, tmp_path / "ts.pt", "TorchScript file")
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr("notes.txt", "hello")
    refused(tmp_path, tmp_path / "a.zip", "zip archive but not a torch.save file")
    good = tmp_path / "good.pt"
    torch.save(model.state_dict(), good)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    refused(tmp_path, tmp_path / "cut.pt", "damaged zip|not a readable torch.save file")
    (tmp_path / "text.pt").write_text("conv1 = [[0.1, 0.2]]")
    refused(tmp_path, tmp_path / "text.pt", "neither a torch.save file nor a .safetensors file")
    (tmp_path / "bad.safetensors").write_bytes((10_000).to_bytes(8, "little") + b'{"a": 1}')
    refused(tmp_path, tmp_path / "bad.safetensors", "not a valid safetensors file")
    with open(tmp_path / "huge.pt", "wb") as f:
        f.truncate(65 * 1024 * 1024)                # sparse: costs no disk
    refused(tmp_path, tmp_path / "huge.pt", "refusing to read it")
    refused(tmp_path, tmp_path / "absent.pt", "no such weights file")
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    refused(tmp_path, tmp_path / "list.pt", "holds a list, not a state dict")


def test_learner_metrics_are_read_into_cnnlabs_curves(tmp_path):
    f = tmp_path / "log.csv"
    f.write_text("epoch,train_loss,train_acc,val_loss,val_acc\n1,0.30,0.91,0.12,0.962\n2,0.10,0.97,0.08,0.975\n")
    rows = read_learner_metrics(f)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["val_error"] == pytest.approx(0.025) and rows[0]["train_error"] == pytest.approx(0.09)
    for text, match in (("epoch,val_acc\n1,97.5\n", "fractions"), ("step,val_acc\n1,0.9\n", "header"),
                        ("epoch,val_acc\n1,0.9,3\n", "3 values"), ("epoch,val_acc\n1,high\n", "not a number")):
        f.write_text(text)
        with pytest.raises(WeightsImportError, match=match):
            read_learner_metrics(f)
    f.write_text("epoch,val_acc\n1,97.5\n")
    refused(tmp_path, sequential().state_dict(), "fractions", metrics=f)


# --- the input transform ------------------------------------------------------------------------------

def test_a_wrong_transform_is_named_with_the_one_that_works(students, split, tmp_path):
    model, _ = students["class-bn-fc-bn"]                 # trained on 0–255 pixels
    out = tmp_path / "run"
    with pytest.raises(WeightsImportError, match=r"near chance.*pixels in \[0, 255\].*--pixel-max 255"):
        import_weights(model.state_dict(), out, InputTransform(), split=split)
    assert not out.exists()


def test_the_module_itself_is_checked_to_compute_the_same_function(split, tmp_path):
    """Batch-norm after ReLU: the same tensors as the assignment's order, another function."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(32), nn.MaxPool2d(2),
                      nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(32), nn.MaxPool2d(2),
                      nn.Flatten(), nn.Linear(1568, 500), nn.ReLU(), nn.Linear(500, 10)).eval()
    for bn in (m[2], m[6]):
        bn.running_mean.uniform_(0.1, 0.5)
        bn.running_var.uniform_(0.05, 0.2)
    with pytest.raises(WeightsImportError, match="computes something else than your module"):
        import_weights(m, tmp_path / "run", split=split)
    assert not (tmp_path / "run").exists()


# --- the command line, the API and the other commands on an imported run --------------------------------

def test_cli_import_then_analysis_commands_read_the_run(students, mnist_split, mnist_dir, tmp_path, capsys):
    from cnnlab.cli import main
    model, t = students["sequential"]
    full = own_accuracy(model, mnist_split, t)[0]           # the CLI evaluates all 10,000 test images
    weights = save_torch(model, tmp_path / "model.pt")
    log = tmp_path / "log.csv"
    log.write_text("epoch,train_loss,val_loss,val_acc\n0.5,0.9,0.5,0.85\n1,0.4,0.3,0.91\n")
    run = tmp_path / "mine"
    assert main(["import", str(weights), "--out", str(run), "--normalize", "0.1307", "0.3081",
                 "--metrics", str(log), "--data-dir", str(mnist_dir)]) == 0
    assert f"{100 * full:.2f}%" in capsys.readouterr().out
    info = json.loads((run / "run.json").read_text())
    assert info["imported"]["transform"]["mean"] == 0.1307 and info["imported"]["file"] == str(weights.resolve())
    assert (run / "metrics.csv").is_file()
    # a second import into the same folder is refused; a missing file is one line
    assert main(["import", str(weights), "--out", str(run), "--data-dir", str(mnist_dir)]) == 2
    assert main(["import", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x"), "--data-dir", str(mnist_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("cnnlab import: error:") for e in err)
    # the analysis commands take it like any run
    assert main(["evaluate", str(run), "--data-dir", str(mnist_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == pytest.approx(full)
    assert main(["occlusion", str(run), "--index", "0", "--patch", "3", "--data-dir", str(mnist_dir)]) == 0
    assert main(["filters", str(run), "--layer", "conv1"]) == 0
    capsys.readouterr()


def test_the_public_api_and_the_explorer(students, mnist_dir, tmp_path, capsys, monkeypatch):
    import cnnlab
    monkeypatch.setenv("CNNLAB_DATA_DIR", str(mnist_dir))
    model, _ = students["sequential"]
    run = cnnlab.import_state_dict(model.state_dict(), out=tmp_path / "api", normalize=MNIST_NORM)
    assert "test accuracy" in capsys.readouterr().out
    assert run.imported.format == "state dict (Python)"
    from cnnlab.explore.explorer import Explorer
    info = Explorer([run.path], data_dir=str(mnist_dir)).info()
    assert info


def test_batch_norm_after_relu_is_named_from_its_running_statistics(split, tmp_path):
    """From a state dict alone: bn1's running mean is the mean of what it normalized."""
    t = InputTransform(1.0, *MNIST_NORM)
    m = trained(nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(32), nn.MaxPool2d(2),
                              nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(32), nn.MaxPool2d(2),
                              nn.Flatten(), nn.Linear(1568, 500), nn.ReLU(), nn.Linear(500, 10)), split, t, steps=30)
    with pytest.raises(WeightsImportError, match=r"^2 normalizes the convolution's output after ReLU"):
        import_weights(m.state_dict(), tmp_path / "run", t, split=split)
    assert not (tmp_path / "run").exists()


# --- the report from imported runs ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def imported_pair(imported):
    return imported["sequential"].run, imported["sequential-bn"].run


def test_sections_say_what_an_imported_run_lacks(imported_pair, split, tmp_path):
    from cnnlab.config import ANALYSIS_PRESETS
    from cnnlab.report import batch_norm, training
    from cnnlab.report.base import Context, Printed
    plain, bn = imported_pair
    ctx = Context(tmp_path, split, {"plain": [plain.path], "batch_norm": []}, plain, plain.load_model(),
                  ANALYSIS_PRESETS["smoke"], Printed(), results={})
    assert "no batch-norm network" in " ".join(batch_norm.section_1_6(ctx).answer)
    s11 = training.section_1_1(ctx)
    assert s11.figures and s11.numbers["test_accuracy"] == [plain.info.test.accuracy]
    ctx.runs = {"plain": [bn.path.parent / "plain-no-log"], "batch_norm": [bn.path]}

    shutil.copytree(plain.path, ctx.runs["plain"][0])
    (ctx.runs["plain"][0] / "metrics.csv").unlink()
    s11 = training.section_1_1(ctx)
    assert not s11.figures and "curves of an imported model are not available" in " ".join(s11.answer)
    s16 = batch_norm.section_1_6(ctx)
    assert "Training time: not available" in " ".join(s16.answer) and s16.verdicts[0].id == "1.6.accuracy"


def test_report_runs_are_checked_before_any_work(imported_pair, tmp_path, capsys):
    from cnnlab.cli import main
    plain, bn = imported_pair
    out = tmp_path / "report"
    for runs, needle in (([bn.path], "is a batch-norm network; --runs takes the plain network first"),
                         ([plain.path, plain.path], "the second of --runs must be the batch-norm network"),
                         ([plain.path, bn.path, bn.path], "one or two runs"),
                         ([tmp_path / "absent"], "does not exist")):
        assert main(["report", "--runs", *map(str, runs), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1
        assert not out.exists()


@pytest.mark.slow
def test_report_from_an_imported_pair(students, mnist_split, mnist_dir, tmp_path, capsys):
    from cnnlab.cli import main
    # imported on the whole test set (the fixtures' 2000 images would not be the report's 10,000)
    (tmp_path / "log.csv").write_text(LOG)
    plain, bn = (import_weights(save_torch(students[n][0], tmp_path / f"{n}.pt"), tmp_path / n, students[n][1],
                                split=mnist_split, metrics=tmp_path / "log.csv").run for n in ("sequential", "sequential-bn"))
    out = tmp_path / "report"
    assert main(["report", "--runs", str(plain.path), str(bn.path), "--out", str(out), "--preset", "smoke",
                 "--data-dir", str(mnist_dir)]) == 0
    results = json.loads((out / "results.json").read_text())
    for name in ("report.html", "report.pdf", "report.ipynb", "report-notebook.pdf"):
        assert (out / name).is_file(), name
    assert set(results["provenance"]["runs"]) == {"plain", "batch_norm"}
    assert (out / "runs" / "plain-sequential" / "metrics.csv").is_file()
    html = (out / "report.html").read_text()
    assert "Training time: not available" in html and "imported" in html
    ids = set(results["sections"])
    assert {"1.1", "1.2", "1.6", "2.1", "2.2", "2.3", "2.4", "3.1", "3.2"} <= {i[:3] for i in ids}
