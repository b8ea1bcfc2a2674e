"""Relational attention of the Dual Attention Transformer (Altabaa & Lafferty 2024, the ``dual-attention``
package): the fast forms in ``forms``, their slow reference in ``naive`` (imported by the tests only)."""
