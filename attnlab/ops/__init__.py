"""Token-mixer kernels and their references, one package per mechanism (``leap``, ``attention``,
``relational``, ``metric``).

A package's ``naive.py`` holds the slow, obviously correct reference of its mechanism, written out from
the math with loops over batch, head and position (fp64 friendly). The tests compare the fast forms with
these references; the fast paths never import them.
"""
