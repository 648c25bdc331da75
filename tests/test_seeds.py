"""`sparsect seeds`: paired differences of two models over training seeds."""

from __future__ import annotations

import json

import pytest
from scipy import stats

from sparsect.cli import main
from sparsect.stages.seeds import compare_seeds


def write_metrics(folder, a_psnr: float, b_psnr: float) -> None:
    folder.mkdir(parents=True)
    entry = {"ssim": 0.9, "rmse_hu": 30.0, "residual": 0.01}
    metrics = {"_settings": {"split": "test"}, "a": {**entry, "psnr": a_psnr},
               "b": {**entry, "psnr": b_psnr}}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_paired_differences_over_seeds(tmp_path):
    values = [(35.0, 34.0), (35.5, 34.7), (34.8, 34.6)]
    folders = []
    for seed, (a, b) in enumerate(values):
        write_metrics(tmp_path / str(seed), a, b)
        folders.append(tmp_path / str(seed))
    out = compare_seeds(folders, [0, 1, 2], "a", "b", tmp_path / "seeds.json")
    report = json.loads(out.read_text())
    diff = report["psnr"]["difference"]
    assert diff["per_seed"] == pytest.approx([1.0, 0.8, 0.2])
    assert diff["mean"] == pytest.approx(2.0 / 3)
    half = stats.t.ppf(0.975, 2) * diff["sd"] / 3**0.5
    assert diff["ci95"] == pytest.approx([2.0 / 3 - half, 2.0 / 3 + half])
    assert report["psnr"]["a"]["mean"] == pytest.approx(35.1)
    assert report["ssim"]["difference"]["mean"] == 0.0 and report["split"] == "test"


def test_a_missing_model_or_folder_is_named(tmp_path, capsys):
    write_metrics(tmp_path / "0", 35.0, 34.0)
    code = main(["seeds", "--models", "a,c", "--seeds", "0", "--evaluations",
                 str(tmp_path / "0"), "--out", str(tmp_path / "s.json")])
    assert code != 0 and "has no model 'c'" in capsys.readouterr().err
    code = main(["seeds", "--models", "a,b", "--seeds", "0,1", "--evaluations",
                 str(tmp_path / "0"), str(tmp_path / "1"), "--out", str(tmp_path / "s.json")])
    assert code != 0 and "run `sparsect evaluate` for that seed" in capsys.readouterr().err
    code = main(["seeds", "--models", "a", "--seeds", "0", "--evaluations",
                 str(tmp_path / "0"), "--out", str(tmp_path / "s.json")])
    assert code != 0 and "must name two models" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()
