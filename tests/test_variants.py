"""The variant table: one entry per model, read by train, evaluate, report and promote.

A model of the user's own is one entry naming its class; ``TinyNet`` below is
such a model, defined here and nowhere in the package.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from helpers import ROOT, TINY_TRAINING, build_tiny_inputs
from sparsect.config import compose, load_params
from sparsect.errors import InputError
from sparsect.models.variants import (
    Variant,
    build_net,
    count_parameters,
    net_spec,
    variant_table,
)
from sparsect.priors.organs import ORGAN_CLASSES
from sparsect.stages.train import default_models


class TinyNet(nn.Module):
    """A user's model: two convolutions on the FBP, a residual output."""

    def __init__(self, in_channels: int = 1, width: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, fbp: torch.Tensor) -> torch.Tensor:
        return fbp[:, self.in_channels // 2:][:, :1] + self.body(fbp)


USER_ENTRY = "+variants.tiny_net={net: {_target_: test_variants.TinyNet, width: 5}, prior: none}"


def test_the_default_table():
    table = variant_table(load_params(ROOT / "params.yaml"))
    assert list(table) == ["unet", "sg_unet", "sg_threshold", "sg_oracle", "prior_unet", "lpd",
                           "sg_lpd"]
    assert [v.prior for v in table.values()] == ["none", "predicted", "threshold", "oracle",
                                                 "scan", "none", "predicted"]
    assert [name for name, v in table.items() if v.deployable] == ["unet", "sg_unet",
                                                                     "sg_threshold", "prior_unet",
                                                                     "lpd", "sg_lpd"]
    assert [name for name, v in table.items() if v.upper_bound] == ["sg_oracle"]
    assert [name for name, v in table.items() if v.operator] == ["lpd", "sg_lpd"]
    assert table["unet"].match_params == "sg_unet"
    assert table["prior_unet"].match_params == "sg_unet"


def test_the_prior_model_has_sg_unets_budget_of_parameters():
    cfg = load_params(ROOT / "params.yaml")
    table = variant_table(cfg)
    counts = {name: count_parameters(build_net(net_spec(table[name], cfg.model, table)))
              for name in ("sg_unet", "prior_unet")}
    assert abs(counts["prior_unet"] / counts["sg_unet"] - 1) <= 0.05, counts
    # it reads the earlier scan and an organ map of the segmenter's classes
    net = build_net(net_spec(table["prior_unet"], cfg.model, table))
    assert net.prior_channels == 1 + ORGAN_CLASSES


def test_the_default_models_follow_prior_variant():
    cfg = load_params(ROOT / "params.yaml")
    assert default_models(cfg) == ("unet", "sg_unet")
    assert default_models(load_params(ROOT / "params.yaml", ["prior.variant=threshold"])) == (
        "unet", "sg_threshold")
    assert default_models(load_params(ROOT / "params.yaml", ["prior.variant=none"])) == ("unet",)
    with pytest.raises(InputError, match="train on the follow-up pairs"):
        default_models(load_params(ROOT / "params.yaml", ["prior.variant=scan"]))
    with pytest.raises(InputError, match="prior.variant 'lung' is unknown"):
        default_models(load_params(ROOT / "params.yaml", ["prior.variant=lung"]))
    # variants reading the sinogram (sg_lpd has the predicted prior) train only when listed
    assert default_models(load_params(ROOT / "params.yaml", ["sweep.models=[lpd,unet]"])) == (
        "lpd", "unet")


def test_the_operator_flag_must_match_the_network():
    cfg = load_params(ROOT / "params.yaml")
    table = variant_table(cfg)
    assert net_spec(table["lpd"], cfg.model, table)["_target_"].endswith("LearnedPrimalDual")
    wrong = Variant("lpd", {"_target_": "sparsect.models.lpd.LearnedPrimalDual"})
    with pytest.raises(InputError, match=r"'variants.lpd.operator' is False .* set operator: "
                                         "true"):
        net_spec(wrong, cfg.model)
    with pytest.raises(InputError, match="set operator: false"):
        net_spec(Variant("u", {"_target_": "sparsect.models.unet.UNet"}, operator=True),
                 cfg.model)


def test_a_network_gets_the_model_keys_its_class_takes_then_its_own():
    cfg = load_params(ROOT / "params.yaml", ["model.context_slices=3", "model.channels=8"])
    table = variant_table(cfg)
    spec = net_spec(table["sg_threshold"], cfg.model, table)
    assert spec == {"_target_": "sparsect.models.unet.SGUNet", "in_channels": 3, "channels": 8,
                    "depth": 4, "seg_channels": 8, "num_classes": 5, "predict_prior": False}
    user = Variant("tiny", {"_target_": "test_variants.TinyNet", "width": 4})
    assert net_spec(user, cfg.model) == {"_target_": "test_variants.TinyNet", "in_channels": 3,
                                         "width": 4}


def test_match_params_widens_to_the_named_variants_capacity():
    cfg = load_params(ROOT / "params.yaml", [*TINY_TRAINING])
    table = variant_table(cfg)
    unet, sg_unet = (net_spec(table[name], cfg.model, table) for name in ("unet", "sg_unet"))
    assert unet["channels"] > int(cfg.model.channels)  # widened from model.channels
    target = count_parameters(build_net(sg_unet))
    wider, narrower = ({**unet, "channels": unet["channels"] + step} for step in (1, -1))
    error = abs(count_parameters(build_net(unet)) - target)
    assert error <= abs(count_parameters(build_net(wider)) - target)
    assert error <= abs(count_parameters(build_net(narrower)) - target)


@pytest.mark.parametrize(("entry", "message"), [
    ({"prior": "none"}, "net._target_' is missing"),
    ({"net": {"_target_": "x.Y"}, "prior": "lungs"}, "'variants.bad.prior' is 'lungs'"),
    ({"net": {"_target_": "x.Y"}, "prior": "oracle", "upper_bound": False},
     "set upper_bound: true"),
    ({"net": {"_target_": "x.Y"}, "upper_bound": True, "deployable": True},
     "cannot be deployable"),
    ({"net": {"_target_": "x.Y"}, "widht": 3}, "unknown key(s) ['widht']"),
])
def test_a_bad_entry_is_named_with_its_fix(entry, message):
    with pytest.raises(InputError, match=re.escape(message)):
        Variant.from_entry("bad", entry)


def test_unknown_classes_and_references_are_named():
    cfg = load_params(ROOT / "params.yaml", ["variants.unet.match_params=segnet"])
    with pytest.raises(InputError, match="names 'segnet', which is not a variant"):
        variant_table(cfg)
    with pytest.raises(InputError, match="'nowhere.Net' cannot be imported"):
        build_net({"_target_": "nowhere.Net"})


def test_a_user_entry_composes_from_conf():
    cfg = compose(ROOT / "conf", [USER_ENTRY])
    table = variant_table(cfg)
    assert list(table)[-1] == "tiny_net" and table["tiny_net"].deployable


@pytest.mark.slow
def test_a_users_model_runs_through_train_evaluate_report_and_promote(tmp_path, monkeypatch):
    """One table entry, no other edit: trained, scored, reported and registered."""
    from omegaconf import OmegaConf

    from sparsect.stages.evaluate import evaluate
    from sparsect.stages.promote import promote_all
    from sparsect.stages.report import report
    from sparsect.stages.simulate import simulate
    from sparsect.stages.train import train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    overrides = [*TINY_TRAINING, "trainer.max_epochs=1", "sweep.views=[12]"]
    build_tiny_inputs(tmp_path, overrides, subjects=4, slices=3, seed=7)
    cfg = OmegaConf.create(compose(ROOT / "conf", [*overrides, USER_ENTRY]))
    simulate(cfg, tmp_path / "prepared", tmp_path / "sim", views=12, workers=1)
    train(cfg, tmp_path / "prepared", tmp_path / "sim", tmp_path / "masks",
          tmp_path / "models" / "12", 12, ("unet", "tiny_net"))
    evaluate(cfg, tmp_path / "prepared", tmp_path / "sim", tmp_path / "masks",
             tmp_path / "models" / "12", tmp_path / "views" / "12", 12)
    report(cfg, tmp_path / "views", tmp_path / "reports")
    promote_all(cfg, tmp_path / "prepared", tmp_path / "models", tmp_path / "views",
                tmp_path / "promotion.json")

    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())["12"]
    assert metrics["tiny_net"]["prior"] == "none" and not metrics["tiny_net"]["upper_bound"]
    table_rows = [line for line in (tmp_path / "reports" / "report.md").read_text().splitlines()
                  if line.startswith("| unet") or line.startswith("| tiny_net")]
    # in the order of the table, each model followed by its data-consistent form
    assert [row.split(" |")[0] for row in table_rows][:4] == [
        "| unet", "| unet+dc", "| tiny_net", "| tiny_net+dc"]
    promoted = json.loads((tmp_path / "promotion.json").read_text())["decisions"]
    assert {d["model"] for d in promoted} == {"unet", "tiny_net"}
    assert any(d["name"] == "sparsect-parallel-12v-tiny_net" for d in promoted)
