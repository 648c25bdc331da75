"""The method layer: every reconstruction method, classical or learned, applied one way.

A :class:`~sparsect.methods.case.Case` holds what any method may read for a set of
slices (the FBP, the sinograms, the acquisition, the slice index and neighbours, and the
optional priors); a method turns a case into named outputs. The evaluations (test
split, task cohort, real scans), ``sparsect reconstruct``, the served model, the export
and the benchmarks build cases and call methods; none has a loop of its own, so what
is scored is what is served. :func:`~sparsect.methods.loading.load_methods` loads the
methods of a run for one view count.

The package's modules are imported one by one (``sparsect.methods.names`` must stay
importable without torch, for the report).
"""
