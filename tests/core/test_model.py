import pytest
import torch
from torch import nn

from etalage.core.model import POOLINGS, MultiImageNet


class Flat(nn.Module):
    """A stand-in backbone: mean colour of each picture, projected (fast and deterministic)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 8)

    def forward(self, x):
        return torch.relu(self.proj(x.mean(dim=(2, 3))))


def _net(fusion):
    torch.manual_seed(0)
    return MultiImageNet(Flat(), 8, n_classes=6, n_level1=2, n_level2=3, pooling=fusion, dropout=0.0).eval()


@pytest.mark.parametrize("fusion", POOLINGS)
def test_products_do_not_see_each_other(fusion):
    net = _net(fusion)
    x = torch.rand(5, 3, 4, 4)
    owner = torch.tensor([0, 0, 1, 2, 2])
    out = net(x, owner, 3)
    assert out["logits"].shape == (3, 6) and out["picture_logits"].shape == (5, 6)
    assert out["level1"].shape == (3, 2) and out["level2"].shape == (3, 3) and out["embedding"].shape == (3, 8)
    x2 = x.clone()
    x2[2] = torch.rand(3, 4, 4)  # change product 1's only picture
    out2 = net(x2, owner, 3)
    assert torch.allclose(out["logits"][[0, 2]], out2["logits"][[0, 2]], atol=1e-6)
    assert not torch.allclose(out["logits"][1], out2["logits"][1])


@pytest.mark.parametrize("fusion", POOLINGS)
def test_fusion_ignores_picture_order(fusion):
    net = _net(fusion)
    x = torch.rand(3, 3, 4, 4)
    a = net(x, torch.zeros(3, dtype=torch.long), 1)["logits"]
    b = net(x[[2, 0, 1]], torch.zeros(3, dtype=torch.long), 1)["logits"]
    assert torch.allclose(a, b, atol=1e-5)


def test_prob_mean_is_the_average_of_picture_probabilities():
    net = _net("prob-mean")
    x = torch.rand(3, 3, 4, 4)
    out = net(x, torch.tensor([0, 0, 1]), 2)
    p = torch.softmax(out["picture_logits"], 1)
    assert torch.allclose(out["logits"].exp()[0], p[:2].mean(0), atol=1e-5)
    assert torch.allclose(out["logits"].exp().sum(1), torch.ones(2), atol=1e-5)


def test_gate_learns_to_ignore_a_placeholder():
    """A learned gate can down-weight an uninformative picture that mean pooling cannot."""
    torch.manual_seed(0)
    net = MultiImageNet(Flat(), 8, 2, 1, 1, pooling="gate", dropout=0.0)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(300):
        y = torch.randint(0, 2, (16,))
        informative = y.float().view(-1, 1, 1, 1).expand(16, 3, 2, 2) * 0.8 + 0.1
        placeholder = torch.ones(16, 3, 2, 2)
        x = torch.cat([informative, placeholder])
        owner = torch.cat([torch.arange(16), torch.arange(16)])
        loss = nn.functional.cross_entropy(net(x, owner, 16)["logits"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = net.picture_weights(net.backbone(x), owner, 16)
    assert w[16:].mean() < 0.3, "the placeholder gets less weight than the informative picture"


def test_unknown_pooling():
    with pytest.raises(ValueError, match="picture pooling must be one of"):
        MultiImageNet(Flat(), 8, 2, 1, 1, pooling="median")
