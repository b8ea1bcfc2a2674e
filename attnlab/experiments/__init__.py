"""The experiments of the papers behind the families, re-run by ``attnlab experiment``: the offline data of the
Dual Attention Transformer paper's experiments (relational games, mathematics problems, small image sets), the
experiments themselves (``relational``, ``math``, ``vision``; ``lm`` for language modelling), their shared
training loop (``training``), the runner that plans, resumes and reports them (``runner``) and the registry of
names (``registry``). Importing this package imports none of them (``attnlab experiment --list`` stays light)."""
