"""Peer benchmarks reproduced with sparsect's own physics, solvers and models.

:mod:`sparsect.benchmarks.ellipses`: dival's ``ellipses`` standard data set (Baguer,
Leuschner & Schmidt, Inverse Problems 36, 094004, 2020) with FBP, TV, FBP+U-Net and
Learned Primal-Dual, scored against the published test PSNRs. Its config section is
read in :mod:`~sparsect.benchmarks.ellipses_settings`, its data and physics are in
:mod:`~sparsect.benchmarks.ellipses_data`, the trained methods in
:mod:`~sparsect.benchmarks.ellipses_learned` and ``report.md`` in
:mod:`~sparsect.benchmarks.ellipses_report`.
"""
