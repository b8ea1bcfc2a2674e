"""Metric attention (MoA): the dot-product form of the distances in ``scores``, their slow pairwise
reference in ``naive`` (imported by the tests only)."""
