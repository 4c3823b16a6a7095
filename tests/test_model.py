"""The network: pinned contract (shapes, parameter counts, names), exact speed tricks, checkpoints."""

import pytest
import torch
import torch.nn.functional as F

from cnnlab.errors import CheckpointError
from cnnlab.model import Net, load_weights, save_weights, weights_digest

EXPECTED = {"conv1.weight": (32, 1, 3, 3), "conv1.bias": (32,), "conv2.weight": (32, 32, 3, 3),
            "conv2.bias": (32,), "fc1.weight": (500, 1568), "fc1.bias": (500,),
            "fc2.weight": (10, 500), "fc2.bias": (10,)}


def test_parameter_contract():
    m = Net()
    assert {k: tuple(p.shape) for k, p in m.named_parameters()} == EXPECTED
    assert sum(p.numel() for p in m.parameters()) == 320 + 9248 + 784500 + 5010 == 799_078
    bn = Net(batch_norm=True)
    assert sum(p.numel() for p in bn.parameters()) == 799_078 + 2 * 64
    assert {"input_mean", "input_std", "bn1.running_mean", "bn2.running_var"} <= set(bn.state_dict())


def test_forward_shapes_and_features():
    m = Net().eval()
    x = torch.rand(3, 1, 28, 28)
    assert m(x).shape == (3, 10)
    f = m.features(x)
    assert [k for k in f] == ["conv1", "pool1", "conv2", "pool2", "fc1", "logits", "probs"]
    assert [tuple(f[k].shape[1:]) for k in ("conv1", "pool1", "conv2", "pool2", "fc1")] == \
        [(32, 28, 28), (32, 14, 14), (32, 14, 14), (32, 7, 7), (500,)]
    assert torch.allclose(f["logits"], m(x), atol=1e-6)
    assert torch.allclose(f["probs"].sum(1), torch.ones(3))


def test_against_functional_oracle():
    """The whole forward written out with torch.nn.functional, in the diagram's order."""
    torch.manual_seed(0)
    m = Net().eval()
    x = torch.rand(4, 1, 28, 28)
    h = (x - m.input_mean) / m.input_std
    h = F.max_pool2d(F.relu(F.conv2d(h, m.conv1.weight, m.conv1.bias, padding=1)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, m.conv2.weight, m.conv2.bias, padding=1)), 2)
    h = F.relu(F.linear(h.flatten(1), m.fc1.weight, m.fc1.bias))
    ref = F.linear(h, m.fc2.weight, m.fc2.bias)
    assert torch.allclose(m(x), ref, atol=1e-5)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_pool_before_relu_is_exact(batch_norm):
    torch.manual_seed(1)
    m = Net(batch_norm=batch_norm).eval()
    x = torch.rand(5, 1, 28, 28)
    fast = m(x)
    m.pool_before_relu = False
    assert torch.equal(fast, m(x))
    cl = m.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(fast, cl, atol=1e-5)


def test_checkpoint_round_trip_is_exact(tmp_path):
    torch.manual_seed(2)
    m = Net(batch_norm=True, mean=0.2, std=0.4)
    m.bn1.running_mean.fill_(0.3)
    save_weights(m, tmp_path / "model.safetensors")
    back = load_weights(tmp_path / "model.safetensors")
    assert back.batch_norm and weights_digest(back) == weights_digest(m)
    assert float(back.input_mean) == pytest.approx(0.2)


def test_checkpoint_mismatch_is_named(tmp_path):
    save_weights(Net(batch_norm=True), tmp_path / "bn.safetensors")
    with pytest.raises(CheckpointError, match="batch-norm network but the plain"):
        load_weights(tmp_path / "bn.safetensors", batch_norm=False)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_weights(tmp_path / "junk.safetensors")
