"""Causal softmax attention. ``naive`` holds its slow reference and the element-wise RoPE reference, which
the tests compare the fast forms (``attnlab.layers.attention``, ``attnlab.layers.rotary``) with."""
