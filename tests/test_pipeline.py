"""End-to-end: the real `dvc repro` on a tiny configuration in a temporary copy
(the ``tiny_repo`` fixture of conftest.py)."""

from __future__ import annotations

import json

import pytest

from helpers import sh, tool_env
from sparsect.tracking import CHECKPOINT_TAG, sha256_file


@pytest.mark.slow
def test_dvc_repro_produces_metrics_for_every_view_and_method(tiny_repo):
    metrics = json.loads((tiny_repo / "reports" / "metrics.json").read_text())
    assert set(metrics) == {"12", "24", "external", "followup"}
    # follow-up imaging at followup.views: every method, the controls and the real pairs
    followup = metrics.pop("followup")
    assert set(followup) == {"24"}
    scored = {m for m in followup["24"] if not m.startswith("_")}
    assert {"fbp", "tv", "piccs", "prior", "sg_unet", "piccs (unregistered)",
            "piccs (wrong patient)", "piccs (true field)", "prior_unet",
            "prior_unet (unregistered)", "prior_unet (wrong patient)",
            "prior_unet (true field)"} <= scored
    # the model that reads the earlier scan, trained by followup_train@24 on the training
    # pairs, beside the methods without a prior: its ghosts measured, its lesions scored
    trained = json.loads((tiny_repo / "artifacts" / "followup-models" / "24" /
                          "summary.json").read_text())
    assert set(trained) == {"prior_unet"} and trained["prior_unet"]["epochs"] >= 1
    data = json.loads((tiny_repo / "artifacts" / "followup-models" / "24" /
                       "data.json").read_text())
    assert data["pairs"]["train"]["realisations"] == 2 and data["fixed"] == "fbp"
    assert followup["24"]["prior_unet"]["prior"] == "registered"
    assert "ghost_contrast" in followup["24"]["prior_unet"]["resolved_lesions"]
    assert "new_lesions" in followup["24"]["prior_unet"]
    assert set(followup["24"]["_real"]) == {"abdomen_dicom", "abdomen_upper_ct"}
    assert (tiny_repo / "reports" / "followup" / "24" / "panels.png").is_file()
    assert "## Follow-up with an earlier full-dose scan" in (
        tiny_repo / "reports" / "report.md").read_text()
    external = metrics.pop("external")
    assert set(external) == {"12", "24"}
    for per_scan in external.values():
        # the repository's real scans, each scored with every method
        assert {s for s in per_scan if not s.startswith("_")} == {
            "abdomen_ct", "abdomen_dicom", "abdomen_upper_ct"}
        for scan, result in per_scan.items():
            if not scan.startswith("_"):
                assert {m for m in result if not m.startswith("_")} == {
                    "fbp", "sirt", "tv", "unet", "sg_unet", "unet+dc", "sg_unet+dc"}
                assert result["_reference"]["noise_sd_hu"] > 0
    for per_method in metrics.values():
        methods = {m for m in per_method if not m.startswith("_")}
        assert methods == {"fbp", "sirt", "tv", "unet", "sg_unet", "unet+dc", "sg_unet+dc"}
        # +dc: the step train chose on validation (residual at the references' floor,
        # not below it, where the grid allows), applied to the test split
        views = per_method["_settings"]["views"]
        chosen_dc = json.loads((tiny_repo / "artifacts" / "models" / str(views) /
                                "summary.json").read_text())
        for model in ("unet", "sg_unet"):
            step, tuned = per_method[f"{model}+dc"]["data_consistency"], chosen_dc[model]["dc"]
            assert tuned["split"] == "val"
            assert step == {"lambda": tuned["lambda"], "steps": tuned["steps"]}
            if tuned["steps"] == 0:  # the network was at the floor: +dc is the network
                assert tuned["network"]["residual"] <= tuned["floor"] or all(
                    t["residual"] >= tuned["network"]["residual"] for t in tuned["trials"])
                assert per_method[f"{model}+dc"]["psnr"] == per_method[model]["psnr"]
            else:
                assert tuned["network"]["residual"] > tuned["residual"]
                assert tuned["residual"] >= tuned["floor"] or all(
                    t["residual"] < tuned["floor"] for t in tuned["trials"]
                    if t["residual"] < tuned["network"]["residual"])
                assert per_method[f"{model}+dc"]["psnr"] != per_method[model]["psnr"]
        for method in methods:
            values = per_method[method]
            assert {"psnr", "ssim", "rmse_hu", "residual", "ci95", "ci95_by_subject",
                    "by_subject", "regions"} <= set(values)
            lo, hi = values["ci95"]["psnr"]
            assert lo <= values["psnr"] <= hi
            assert set(values["regions"]) == {"lung", "soft_tissue", "bone", "body"}
        assert 0 <= per_method["sg_unet"]["dice"] <= 1
        assert per_method["_reference"]["residual"] > 0
        # the task study: every method scored on the cohort, with intervals over subjects
        study = per_method["_task_study"]
        assert study["subjects"] == 2 and study["lesions"] >= 1 and study["realisations"] == 2
        assert study["structure_threshold_hu"] == pytest.approx(
            3 * study["full_view_fbp_noise_hu"])
        for method in methods:
            values = per_method[method]
            assert {"lesion_contrast_recovery", "lesion_cnr", "detectability",
                    "downstream_dice", "hallucinated", "lost"} <= set(values), method
            assert values["lesion_contrast_recovery"]["abs_cr_minus_1"] >= 0
            assert 0 <= values["detectability"]["auc"] <= 1
            dice = values["downstream_dice"]
            assert set(dice["by_subject"]) == {"0", "1"}
            assert 0 <= dice["mean"] <= 1 and dice["ci95"][0] <= dice["ci95"][1]
            assert values["hallucinated"]["count"] >= 0 and values["lost"]["count"] >= 0
        assert 0 <= per_method["_task_reference"]["downstream_dice"]["mean"] <= 1
        # each baseline ran with the setting chosen on validation (the tiny grid's)
        chosen = per_method["_baselines"]
        assert set(chosen["tuning"]["methods"]) == {"fbp", "sirt", "tv"}
        for method, result in chosen["tuning"]["methods"].items():
            best = max(result["trials"], key=lambda trial: trial["psnr"])
            assert chosen["methods"][method] == result["chosen"] == best["options"]
    # more views -> less streaking in the FBP (the physics is doing something)
    assert metrics["24"]["fbp"]["psnr"] > metrics["12"]["fbp"]["psnr"]
    for views in ("12", "24"):
        for figure in ("panel.png", "residuals.png"):
            assert (tiny_repo / "reports" / "views" / views / figure).stat().st_size > 10_000
    report = (tiny_repo / "reports" / "report.md").read_text()
    assert "## 12 views" in report and "## 24 views" in report and "residual" in report
    assert "## Real scans (external validation)" in report and "reference noise" in report
    assert report.count("Classical baselines' settings, chosen by mean PSNR on 4 validation") == 2
    assert report.count("| method | abs(CR - 1) | CNR | d' | AUC | downstream Dice |") == 2
    assert "full-dose reference (segmenter's ceiling)" in report
    psnr_csv = (tiny_repo / "reports" / "plots" / "psnr.csv").read_text().splitlines()
    assert psnr_csv[0].split(",")[0] == "views" and len(psnr_csv) == 3
    env = tool_env(tiny_repo)
    shown = json.loads(sh("dvc", "plots", "show", "--json", cwd=tiny_repo, env=env))
    assert shown, "dvc plots show rendered nothing"
    # the DVC metrics are the headline summary: readable in one screen width
    shown = sh("dvc", "metrics", "show", cwd=tiny_repo, env=env)
    assert "reports/summary.json" in shown and "12.sg_unet" in shown, shown
    assert "metrics.json" not in shown and max(map(len, shown.splitlines())) <= 160, shown


@pytest.mark.slow
def test_dvc_status_is_clean_and_mlflow_holds_one_run_per_model(tiny_repo):
    env = tool_env(tiny_repo)
    status = sh("dvc", "status", cwd=tiny_repo, env=env)
    assert "up to date" in status, status
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tiny_repo / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "sparsect"]
    runs = client.search_runs([experiment.experiment_id])
    # train@V's models, and followup_train@24's prior model
    assert sorted(r.info.run_name for r in runs) == sorted(
        [f"{m}@{v}" for m in ("unet", "sg_unet") for v in (12, 24)] + ["prior_unet@24"])
    for run in runs:
        assert "val/psnr" in run.data.metrics and "train/loss" in run.data.metrics
        assert run.data.tags["git_commit"]
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
        assert artifacts == ["checkpoints/selected.ckpt"]
        # the run is found again by the content of the checkpoint it wrote
        model, views = run.info.run_name.split("@")
        stage = "followup-models" if model == "prior_unet" else "models"
        output = tiny_repo / "artifacts" / stage / views / f"{model}.ckpt"
        assert run.data.tags[CHECKPOINT_TAG] == sha256_file(output)


@pytest.mark.slow
def test_promote_stage_names_a_champion_per_view_count(tiny_repo):
    promotion = json.loads((tiny_repo / "reports" / "promotion.json").read_text())
    names = {d["name"] for d in promotion["decisions"]}
    assert names == {f"sparsect-parallel-{v}v-{m}" for v in (12, 24)
                     for m in ("unet", "sg_unet")} | {"sparsect-parallel-24v-prior_unet"}
    # the model that reads an earlier scan is judged on the validation follow-up pairs
    prior = [d for d in promotion["decisions"] if d["model"] == "prior_unet"]
    assert prior[0]["selection_set"].startswith("followup-val:")
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tiny_repo / 'mlflow.db'}")
    for name in names:
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    env = tool_env(tiny_repo)
    sh("sparsect", "promote", "--prepared", "artifacts/prepared", "--models", "artifacts/models",
       "--evaluations", "reports/views", "--out", "reports/promotion.json", cwd=tiny_repo,
       env=env)  # a second promote changes nothing
    for name in names:
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
        assert len(client.search_model_versions(f"name='{name}'")) == 1


@pytest.mark.slow
def test_export_stage_exports_each_champion_and_logs_it(tiny_repo):
    summary = json.loads((tiny_repo / "reports" / "export.json").read_text())
    assert summary["opset"] == 18 and summary["skipped"] == []
    assert {(e["views"], e["model"]) for e in summary["exports"]} == {
        (12, "sg_unet"), (24, "sg_unet"), (24, "prior_unet")}
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tiny_repo / 'mlflow.db'}")
    for entry in summary["exports"]:
        assert entry["onnx_max_abs_hu"] <= 0.5 and entry["split"] == "val"
        record = json.loads((tiny_repo / entry["folder"] / "export.json").read_text())
        assert record["views"] == entry["views"] and record["source"] == entry["uri"]
        assert record["int8"]["calibration"]["split"] == "val"
        if entry["model"] == "prior_unet":  # checked where it reads an earlier scan
            assert record["parity"]["split"] == "validation follow-up pairs"
            assert record["inputs"]["prior"]["shape"][1] == 11
        name = f"sparsect-parallel-{entry['views']}v-{entry['model']}"
        tags = client.get_model_version_by_alias(name, "champion").tags
        assert tags["onnx"].endswith("/onnx/v1")
        assert float(tags["onnx_max_abs_hu"]) == pytest.approx(entry["onnx_max_abs_hu"],
                                                               rel=1e-5)


@pytest.mark.slow
def test_hydra_multirun_over_view_counts(tiny_repo):
    env = {**tool_env(tiny_repo), "MLFLOW_TRACKING_URI": f"sqlite:///{tiny_repo / 'sweep.db'}"}
    sh("sparsect", "train", "-m", "experiment=tiny", "geometry.views=12,24",
       "--prepared", "artifacts/prepared", "--masks", "artifacts/masks",
       "--sweep-dir", "sweep", cwd=tiny_repo, env=env)
    for views in (12, 24):
        job = tiny_repo / "sweep" / f"experiment=tiny,geometry.views={views}"
        metrics = json.loads((job / "evaluation" / "metrics.json").read_text())
        assert {"fbp", "unet", "sg_unet"} <= set(metrics)
        assert json.loads((job / "sim" / "geometry.json").read_text())["geometry"]["views"] \
            == views


@pytest.mark.slow
def test_dvc_queued_experiment_composes_conf_and_runs(tiny_repo):
    env = tool_env(tiny_repo)
    sh("git", "add", "-A", cwd=tiny_repo)
    sh("git", "-c", "user.name=ci", "-c", "user.email=ci@localhost", "commit", "-qm", "tiny",
       cwd=tiny_repo)
    sh("dvc", "exp", "run", "--queue", "-S", "experiment=tiny", "-S", "trainer.max_epochs=1",
       "--name", "one-epoch", cwd=tiny_repo, env=env)
    sh("dvc", "queue", "start", cwd=tiny_repo, env=env)
    import time

    deadline = time.time() + 600
    while time.time() < deadline:
        status = sh("dvc", "queue", "status", cwd=tiny_repo, env=env)
        if "one-epoch" in status and ("Success" in status or "Failed" in status):
            break
        time.sleep(3)
    assert "Success" in status, status + sh("dvc", "queue", "logs", "one-epoch", cwd=tiny_repo,
                                            env=env)
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=tiny_repo, env=env))
    text = json.dumps(shown)
    assert "one-epoch" in text and '"max_epochs": 1' in text.replace("'", '"')


@pytest.mark.slow
def test_ablation_trains_each_seed_and_view_count_and_states_the_endpoint(tiny_repo, tmp_path):
    """`sparsect ablation` on the tiny project's pipeline outputs: two view counts, two
    seeds, the endpoint's pair, one epoch; its own tracking store, so the pipeline's
    runs stay as they are."""
    env = {**tool_env(tiny_repo), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'ab.db'}"}
    sh("sparsect", "params", "experiment=tiny", "+ablation.views=[12,24]",
       "+ablation.seeds=[0,1]", "+ablation.variants=[unet,sg_unet]", "trainer.max_epochs=1",
       "--out", str(tmp_path / "params.yaml"), cwd=tiny_repo, env=env)
    sh("sparsect", "ablation", "--params", str(tmp_path / "params.yaml"),
       "--prepared", "artifacts/prepared", "--sim", "artifacts/sim", "--masks", "artifacts/masks",
       "--cohort", "artifacts/cohort", "--segmenter", "artifacts/segmenter",
       "--work", str(tmp_path / "work"), "--out", str(tmp_path / "ablation.json"),
       cwd=tiny_repo, env=env)
    report = json.loads((tmp_path / "ablation.json").read_text())
    assert report["_settings"]["seeds"] == [0, 1] and report["_settings"]["views"] == [12, 24]
    for views in ("12", "24"):
        assert set(report[views]["per_seed"]) == {"0", "1"}
        for seed in ("0", "1"):
            for model in ("unet", "sg_unet"):
                record = report[views]["per_seed"][seed][model]
                assert {"psnr", "downstream_dice", "detectability", "hallucinated"} <= set(record)
                assert set(record["downstream_dice"]["by_subject"]) == {"0", "1"}
        # seeds differ: the seed reached training
        psnr = [report[views]["per_seed"][s]["sg_unet"]["psnr"] for s in ("0", "1")]
        assert psnr[0] != psnr[1]
    endpoint = report["endpoint"]
    assert endpoint["comparison"] == "sg_unet - unet"
    levels = sorted(r["downstream_dice"]["level"] for r in endpoint["by_views"].values())
    assert levels == [0.95, 0.975]  # Holm over the two view counts
    for result in endpoint["by_views"].values():
        dice = result["downstream_dice"]
        assert dice["subjects"] == 2 and dice["seeds"] == 2
        assert dice["ci"][0] <= dice["mean"] <= dice["ci"][1]
        assert dice["p_holm"] >= dice["p"]


@pytest.mark.slow
def test_reconstruct_with_a_prior_scan_uses_the_prior_models_champion(tiny_repo):
    env = tool_env(tiny_repo)
    out = tiny_repo / "followup_recon.nii.gz"
    scan = "realct/abdomen_upper_ct.nii.gz"
    sh("sparsect", "reconstruct", scan, "-o", str(out), "--views", "24", "--prior-scan",
       "realct/abdomen_ct.nii.gz", cwd=tiny_repo, env=env)
    sidecar = json.loads((tiny_repo / "followup_recon.prior.json").read_text())
    # no --model: the champion of followup.model.variants' first, with its organ map
    assert sidecar["method"] == "prior_unet"
    assert sidecar["segmenter"].endswith("artifacts/segmenter/segmenter.ckpt")
    assert len(sidecar["segmenter_sha256"]) == 64
    assert "rigid" in sidecar["registration"] and sidecar["registration"]["overlap"] > 0.3
    import nibabel as nib
    import numpy as np

    image = np.asarray(nib.load(str(out)).dataobj, np.float32)
    assert image.shape[:2] == (32, 32) and np.isfinite(image).all()


@pytest.mark.slow
def test_submitit_local_sweep_runs_two_jobs_at_once_into_one_mlflow_store(tiny_repo):
    """Hydra's submitit launcher on this machine: each view count a process of its own,
    both at once, both tracked in one sqlite store that neither had created."""
    import mlflow

    store = tiny_repo / "submitit.db"
    env = {**tool_env(tiny_repo), "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    sh("sparsect", "train", "-m", "experiment=tiny", "geometry.views=12,24",
       "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1",
       "hydra.launcher.timeout_min=30", "--prepared", "artifacts/prepared",
       "--masks", "artifacts/masks", "--sweep-dir", "sweep_submitit", cwd=tiny_repo, env=env)
    for views in (12, 24):
        job = tiny_repo / "sweep_submitit" / f"experiment=tiny,geometry.views={views}"
        metrics = json.loads((job / "evaluation" / "metrics.json").read_text())
        assert {"fbp", "unet", "sg_unet"} <= set(metrics)
    # submitit ran them: its folder holds each job's pickled result
    assert len(list((tiny_repo / "sweep_submitit" / ".submitit").glob("*/*_result.pkl"))) == 2
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.info.run_name for r in runs) == [
        "sg_unet@12", "sg_unet@24", "unet@12", "unet@24"]
    assert all(r.info.status == "FINISHED" for r in runs)
    # the two jobs ran at once: their spans in the store overlap
    spans = {views: (min(r.info.start_time for r in runs if r.info.run_name.endswith(views)),
                     max(r.info.end_time for r in runs if r.info.run_name.endswith(views)))
             for views in ("@12", "@24")}
    assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values()), spans
