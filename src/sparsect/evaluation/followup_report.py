"""The follow-up section of ``report.md``: what an earlier scan adds and what it hides
(``followup@V``'s ``metrics.json``, see :mod:`sparsect.stages.followup`)."""

from __future__ import annotations

import math
from typing import Any


def _num(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _ci(mean: Any, ci: Any, digits: int) -> str:
    if ci is None or mean is None:
        return _num(mean, digits)
    return f"{_num(mean, digits)} [{_num(ci[0], digits)}, {_num(ci[1], digits)}]"


def followup_markdown(per_view: dict[str, dict]) -> list[str]:
    """Markdown lines, one block per view count; nothing without follow-up results."""
    if not per_view:
        return []
    lines = ["", "## Follow-up with an earlier full-dose scan", "",
             "Baseline / follow-up pairs of one anatomy (the follow-up moved, deformed, its "
             "contrast and bowel redrawn, lesions new, grown, shrunk or resolved); the prior "
             "is the baseline's own full-dose scan, registered to the sparse follow-up. "
             "Intervals: 95 %, subjects resampled. `(unregistered)`, `(wrong patient)`: "
             "controls; `(true field)`: the prior warped with the true deformation, an upper "
             "bound. Ghost contrast: what a resolved lesion of the baseline leaves in the "
             "follow-up image (0 none, 1 all); change hidden: the share of a grown or shrunk "
             "lesion's size change the image does not show (0 none, 1 all). Lobulated: new "
             "lesions of another shape (3 to 5 overlapping spheres), in the test cohort "
             "only: a change no model learned from, scored apart. `prior_unet`: the "
             "learned model that reads the registered earlier scan and its organ map."]
    for views, metrics in sorted(per_view.items(), key=lambda item: int(item[0])):
        info = metrics.get("_followup", {})
        lesions = info.get("lesions", {})
        lines += ["", f"### {views} views", "",
                  f"{info.get('subjects')} subjects, lesions {lesions}, "
                  f"{info.get('realisations')} noise realisations (observer: "
                  f"{info.get('observer', {}).get('test')} scored).", "",
                  "| method | body PSNR (dB) | SSIM | new: \\|CR-1\\| | new: d' | new: AUC | "
                  "lobulated: \\|CR-1\\| | lobulated: d' | "
                  "grown/shrunk: \\|diameter error\\| (mm) | change hidden | ghost contrast |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name in sorted(k for k in metrics if not k.startswith("_")):
            m = metrics[name]
            new = m.get("new_lesions", {})
            cr = new.get("lesion_contrast_recovery", {})
            det = new.get("detectability", {})
            changed = m.get("changed_lesions", {})
            ghost = m.get("resolved_lesions", {})
            lobulated = m.get("lobulated_lesions", {})
            lob_cr = lobulated.get("lesion_contrast_recovery", {})
            lob_det = lobulated.get("detectability", {})
            lines.append(
                f"| {name} | {_ci(m.get('body_psnr'), m.get('body_psnr_ci95'), 2)} | "
                f"{_num(m.get('body_ssim'), 3)} | {_num(cr.get('abs_cr_minus_1'), 2)} | "
                f"{_ci(det.get('d_prime'), det.get('d_prime_ci95'), 2)} | "
                f"{_num(det.get('auc'), 2)} | {_num(lob_cr.get('abs_cr_minus_1'), 2)} | "
                f"{_num(lob_det.get('d_prime'), 2)} | "
                f"{_num(changed.get('abs_diameter_error_mm'), 1)} | "
                f"{_num(changed.get('change_hidden'), 2)} | "
                f"{_ci(ghost.get('ghost_contrast'), ghost.get('ci95'), 2)} |")
        registration = info.get("registration", {})
        if registration:
            lines += ["", f"Registration to the follow-up's {registration.get('fixed')} "
                      "(chosen on the validation pairs by mean TRE), target registration "
                      "error (mm) against the true field over the body:", "",
                      "| prior | mean 3D | p95 3D | mean in-plane | p95 in-plane | mean z | "
                      "p95 z |", "|---|---|---|---|---|---|---|"]
            for kind, e in registration.get("test_tre_mm", {}).items():
                lines.append(f"| {kind} | " + " | ".join(
                    _num(e.get(k), 2) for k in ("3d_mean", "3d_p95", "in_plane_mean",
                                                "in_plane_p95", "z_mean", "z_p95")) + " |")
        tuning = info.get("tuning", {})
        if tuning:
            lines += ["", f"TV {tuning.get('tv')} and PICCS {tuning.get('piccs')}: the best "
                      f"{tuning.get('criterion')} ({tuning.get('validation_psnr')})."]
        lines += ["", f"![follow-up panels, {views} views](followup/{views}/panels.png)"]
    return lines
