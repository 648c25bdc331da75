"""The merged report: method order, the headline ``summary.json`` (DVC metrics) and the
committed ``reports/`` being what ``write_report`` makes of ``reports/views/``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sparsect.evaluation.report import (
    SUMMARY_LIMIT,
    baselines_markdown,
    markdown,
    method_order,
    summary,
    write_report,
)

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("unet", "sg_unet", "sg_threshold", "sg_oracle")
DVC_METRICS_WIDTH = 160  # widest line `dvc metrics show` may print


def _method(psnr: float, **extra) -> dict:
    return {"psnr": psnr, "ssim": 0.9, "rmse_hu": 40.0, "residual": 0.01,
            "ci95": {"psnr": [psnr - 0.5, psnr + 0.5], "ssim": [0.89, 0.91],
                     "rmse_hu": [38.0, 42.0]}, **extra}


def _learned(psnr: float, prior: str, upper_bound: bool = False, **extra) -> dict:
    return _method(psnr, prior=prior, upper_bound=upper_bound, **extra)


def _per_view(views: int) -> dict:
    return {
        "_settings": {"slices": 8, "subjects": ["s1"], "hu_window": [-1000, 2000],
                      "data_range_hu": 3000, "views": views},
        "_reference": {"residual": 0.007},
        "fbp": _method(29.49727),
        "sirt": _method(32.8756),
        "tv": _method(36.30061),
        "unet": _learned(36.62139, "none"),
        "sg_unet": _learned(36.49373, "predicted", dice=0.6961272),
        "sg_threshold": _learned(35.1, "threshold"),
        "sg_oracle": _learned(38.0, "oracle", upper_bound=True, dice=0.99),
    }


def _numbers(block: dict) -> int:
    return sum(_numbers(v) if isinstance(v, dict) else 1 for v in block.values())


def _committed_models() -> tuple[str, ...]:
    """The learned models in the order the CLI passes them: the variant table's names."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return tuple(params["variants"]) if params.get("variants") else MODELS


def test_method_order_is_classical_then_the_models_then_alphabetical():
    names = ["zeta", "sg_oracle", "tv", "unet", "alpha", "fbp", "sg_unet", "sirt"]
    assert method_order(names, ("unet", "sg_unet", "sg_oracle")) == [
        "fbp", "sirt", "tv", "unet", "sg_unet", "sg_oracle", "alpha", "zeta"]
    # the variant table's order, not a fixed one
    assert method_order(names, ("sg_oracle", "sg_unet", "unet")) == [
        "fbp", "sirt", "tv", "sg_oracle", "sg_unet", "unet", "alpha", "zeta"]
    assert method_order(names) == [
        "fbp", "sirt", "tv", "alpha", "sg_oracle", "sg_unet", "unet", "zeta"]


def test_markdown_lists_methods_in_the_models_order():
    merged = {"60": _per_view(60)}
    rows = [line.split(" | ")[0] for line in markdown(merged, models=MODELS).splitlines()
            if line.startswith("| ") and " [" in line]
    assert rows == ["| fbp", "| sirt", "| tv", "| unet", "| sg_unet", "| sg_threshold",
                    "| sg_oracle (upper bound)"]
    rows = [line.split(" | ")[0] for line in
            markdown(merged, models=("sg_unet", "unet")).splitlines()
            if line.startswith("| ") and " [" in line]
    assert rows[3:5] == ["| sg_unet", "| unet"]


def test_summary_has_the_headline_numbers_rounded():
    result = summary({"60": _per_view(60), "30": _per_view(30)}, MODELS)
    assert list(result) == ["30", "60"]
    for block in result.values():
        # sirt (not the strongest classical) and sg_oracle (an upper bound) are left out
        assert list(block) == ["fbp", "tv", "unet", "sg_unet", "sg_threshold", "dice"]
        assert block == {"fbp": 29.5, "tv": 36.3, "unet": 36.62, "sg_unet": 36.49,
                         "sg_threshold": 35.1, "dice": 0.696}
    assert _numbers(result) <= SUMMARY_LIMIT


def test_summary_counts_a_model_outside_the_table_as_learned_by_its_prior():
    per_view = _per_view(30)
    per_view["my_net"] = _learned(37.004, "none")
    assert summary({"30": per_view}, ("unet",))["30"] == {
        "fbp": 29.5, "tv": 36.3, "unet": 36.62, "my_net": 37.0, "sg_threshold": 35.1,
        "sg_unet": 36.49, "dice": 0.696}


def test_summary_without_a_predicted_prior_has_no_dice():
    per_view = _per_view(30)
    del per_view["sg_unet"]
    assert "dice" not in summary({"30": per_view}, MODELS)["30"]


def test_summary_drops_the_largest_view_counts_first():
    merged = {str(v): _per_view(v) for v in (120, 15, 60, 30)}
    result = summary(merged, MODELS)
    assert list(result) == ["15", "30"]  # 6 numbers each: 60 and 120 do not fit
    assert _numbers(result) == 12
    merged = {str(v): {k: x for k, x in _per_view(v).items() if k != "sg_threshold"}
              for v in (120, 30, 60)}
    assert list(summary(merged, MODELS)) == ["30", "60"]  # 5 each: 120 would make 15


def test_summary_of_one_crowded_view_count_keeps_its_first_numbers():
    per_view = _per_view(30)
    extra = [f"net{i:02d}" for i in range(12)]
    per_view.update({name: _learned(30.0 + i, "none") for i, name in enumerate(extra)})
    result = summary({"30": per_view}, (*MODELS, *extra))
    assert _numbers(result) == SUMMARY_LIMIT
    assert list(result["30"])[:5] == ["fbp", "tv", "unet", "sg_unet", "sg_threshold"]


def test_write_report_writes_the_summary(tmp_path):
    for views in (30, 60):
        folder = tmp_path / "views" / str(views)
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(_per_view(views)))
    out = write_report({30: tmp_path / "views/30", 60: tmp_path / "views/60"},
                       tmp_path / "out", MODELS)
    written = json.loads((out / "summary.json").read_text())
    assert written == summary(json.loads((out / "metrics.json").read_text()), MODELS)
    assert list(written["30"]) == ["fbp", "tv", "unet", "sg_unet", "sg_threshold", "dice"]


@pytest.mark.skipif(not all((ROOT / "reports" / kind / "30/metrics.json").is_file()
                        for kind in ("views", "external")),
                    reason="the committed evaluations are not checked out")
def test_committed_report_is_what_write_report_makes_of_the_evaluations(tmp_path):
    """``reports/`` (metrics.json, summary.json, report.md, plots) is rebuilt byte for byte
    from ``reports/views/<views>/metrics.json`` and ``reports/external/<views>/``."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    folders = {int(v): ROOT / "reports/views" / str(v) for v in params["sweep"]["views"]}
    external = {int(v): ROOT / "reports/external" / str(v) for v in params["sweep"]["views"]}
    out = write_report(folders, tmp_path, _committed_models(), external)
    for name in ("metrics.json", "summary.json", "report.md", "plots/psnr.csv",
                 "plots/ssim.csv"):
        assert (out / name).read_bytes() == (ROOT / "reports" / name).read_bytes(), (
            f"reports/{name} is not what `sparsect report` writes: run `dvc repro report`")


@pytest.mark.skipif(not (ROOT / "reports/summary.json").is_file(),
                    reason="reports/summary.json is not checked out")
def test_committed_summary_fits_a_dvc_metrics_show_line():
    """``dvc metrics show`` prints one column per number: the file's path, then each
    flattened key (``30.fbp``) or its value, whichever is wider, 2 then 4 spaces apart."""
    path = "reports/summary.json"
    flat = {f"{views}.{key}": value
            for views, block in json.loads((ROOT / path).read_text()).items()
            for key, value in block.items()}
    assert 0 < len(flat) <= SUMMARY_LIMIT
    widths = [max(len(key), len(str(value))) for key, value in flat.items()]
    line = len(path) + 2 + sum(widths) + 4 * (len(widths) - 1)
    assert line <= DVC_METRICS_WIDTH, f"`dvc metrics show` would print {line} columns"


def test_the_report_states_each_baselines_setting_and_its_validation_numbers():
    per_view = _per_view(60)
    per_view["_baselines"] = {
        "methods": {"fbp": {"filter": "hann"}, "sirt": {"iterations": 400},
                    "tv": {"iterations": 400, "weight": 0.01}},
        "defaults": {"fbp": {"filter": "ram-lak"}, "sirt": {"iterations": 100},
                     "tv": {"iterations": 100, "weight": 0.03}},
        "tuning": {"split": "val", "slices": 24, "methods": {
            "fbp": {"grid": {"filter": ["ram-lak", "hann"]}, "psnr": 29.034,
                    "default_psnr": 26.941, "trials": [{}, {}]},
            "tv": {"grid": {"weight": [0.01, 0.03], "iterations": [100, 400]}, "psnr": 31.77,
                   "default_psnr": 30.7, "trials": [{}] * 4}}}}
    lines = baselines_markdown(per_view["_baselines"])
    assert "24 validation slices" in lines[1]
    rows = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ")}
    assert rows["fbp"] == ("| fbp | filter hann | 29.03 | filter ram-lak | 26.94 | "
                           "filter ram-lak, hann (2 settings, the untuned one included) |")
    assert rows["tv"] == ("| tv | iterations 400, weight 0.01 | 31.77 | iterations 100, weight "
                          "0.03 | 30.70 | iterations 100, 400; weight 0.01, 0.03 (4 settings, "
                          "the untuned one included) |")
    assert rows["sirt"] == "| sirt | iterations 400 | | iterations 100 | | not tuned |"
    assert "| tv | iterations 400, weight 0.01 | 31.77 |" in markdown({"60": per_view})
    assert baselines_markdown(None) == [] and "val PSNR" not in markdown({"60": _per_view(60)})
