"""Export a saved attnlab model as a self-contained Hugging Face model folder, and share it on the hub.

The folder holds the weights, ``config.json`` with ``auto_map``, the modeling code (attnlab's own modules,
copied as flat files by ``flatten``), the tokenizer, ``generation_config.json`` and a model card; plain
transformers loads it with ``trust_remote_code=True``, without attnlab. The command line: ``attnlab export``.
"""

from .folder import Export, export_run
from .hub import push_folder

__all__ = ["Export", "export_run", "push_folder"]
