import pytest
import torch

from sparsect.errors import InputError
from sparsect.models.checkpoint import load_module
from sparsect.models.module import ReconModule


class Payload:
    """Unpickling this would run code: it must never be unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_crafted_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "was_executed"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": Payload(marker)}, path)
    with pytest.raises(InputError, match="cannot be loaded safely"):
        load_module(path)
    assert not marker.exists()


def test_a_real_checkpoint_round_trips(tmp_path):
    module = ReconModule(net={"_target_": "sparsect.models.unet.SGUNet", "channels": 4,
                              "depth": 3, "seg_channels": 4}, prior="predicted")
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)},
               path)
    loaded = load_module(path)
    for name, tensor in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)


def test_missing_and_foreign_checkpoints_are_explained(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_module(tmp_path / "nope.ckpt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.ckpt")
    with pytest.raises(InputError, match="not a sparsect checkpoint"):
        load_module(tmp_path / "foreign.ckpt")
