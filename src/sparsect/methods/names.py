"""Names shared by the method layer and the reports (no heavy imports: the report stage
reads them without loading torch)."""

CLASSICAL = ("fbp", "sirt", "cgls", "tv", "sart")
"""The classical methods (:class:`sparsect.methods.classical.Classical`)."""

DC_SUFFIX = "+dc"
"""A model's name after its data-consistency step (the ``+dc`` method)."""
