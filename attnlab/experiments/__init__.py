"""Offline data for the experiments of the Dual Attention Transformer paper: relational games, mathematics
problems and small image sets, all generated or bundled, seeded and deterministic (nothing is downloaded)."""
