"""User-facing errors.

Anything a user can cause (a bad flag, an impossible config, a missing file, an unreachable hub) raises an
``AttnlabError`` with a one-line message. The CLI prints that line and exits with code 2 instead of
showing a traceback; Python callers can catch the specific subclass.
"""


class AttnlabError(Exception):
    """Base class of every error caused by the user's input rather than by a bug."""


class ConfigError(AttnlabError, ValueError):
    """A model, training or data configuration that cannot work (e.g. d_model not divisible by n_heads)."""


class DataError(AttnlabError):
    """A data source that is missing, empty, malformed or unreachable."""


class ExportError(AttnlabError):
    """A model that cannot be exported or shared: a bad source or target folder, modeling code that cannot be
    made self-contained, or a hub that refuses the upload or cannot be reached."""
