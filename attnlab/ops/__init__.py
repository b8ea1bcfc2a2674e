"""Kernels of the token mixers and their fast parallel forms (naive references live in the tests)."""
