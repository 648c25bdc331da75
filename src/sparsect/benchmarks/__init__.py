"""Peer benchmarks reproduced with sparsect's own physics, solvers and models.

:mod:`sparsect.benchmarks.ellipses`: dival's ``ellipses`` standard data set (Baguer,
Leuschner & Schmidt, Inverse Problems 36, 094004, 2020) with FBP, TV, FBP+U-Net and
Learned Primal-Dual, scored against the published test PSNRs.
"""
