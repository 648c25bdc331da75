import pytest
import yaml

from helpers import ROOT
from sparsect.config import apply_overrides, compose, load_params
from sparsect.errors import InputError


def test_committed_params_match_composed_conf():
    """dvc repro reads params.yaml; dvc exp run recomposes it from conf/. They must agree."""
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert compose(ROOT / "conf") == committed, "run `make params` after editing conf/"


def test_overrides_apply_with_types():
    cfg = load_params(ROOT / "params.yaml", ["geometry.views=90", "noise.i0=inf"])
    assert cfg.geometry.views == 90
    assert cfg.noise.i0 == float("inf")
    cfg = load_params(ROOT / "params.yaml", ["noise.i0=-1e5", "logger.experiment=2024"])
    assert cfg.noise.i0 == -1e5  # a number, although YAML 1.1 reads 1e5 as text
    assert cfg.logger.experiment == "2024"  # a text setting stays text


@pytest.mark.parametrize(
    ("override", "message"),
    [("geometry.veiws=60", "did you mean geometry.views"),
     ("nonsense", "key=value"),
     ("trainer.nope.deeper=1", "Unknown config key")],
)
def test_bad_overrides_are_explained(override, message):
    cfg = load_params(ROOT / "params.yaml")
    with pytest.raises(InputError, match=message):
        apply_overrides(cfg, [override])


def test_hydra_composition_rejects_unknown_group():
    with pytest.raises(InputError, match="Bad config override"):
        compose(ROOT / "conf", ["noise=nonexistent"])
