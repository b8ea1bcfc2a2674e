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


class CorruptFileError(DataError):
    """A file attnlab reads that cannot be trusted: truncated, empty, with flipped bytes, not the JSON or the
    format its name promises, a config of a model attnlab does not know, weights that do not fit their config,
    or a checkpoint file whose size or checksum differs from its manifest. ``path`` is the file (or the
    directory a file is missing from); the message says what is wrong with it and what to do."""

    def __init__(self, path, problem: str, fix: str = ""):
        self.path, self.problem, self.fix = path, problem, fix
        super().__init__(f"{path}: {problem}" + (f"; {fix}" if fix else ""))

    def __reduce__(self):  # picklable across processes despite the three-argument constructor
        return type(self), (self.path, self.problem, self.fix)


class WriteError(AttnlabError):
    """A file attnlab cannot write: a full disk, a read-only directory, a path that is a file where a
    directory belongs. What was complete before the failed write (the previous checkpoint) stays as it was."""


class TrainingInterrupted(Exception):
    """Training stopped by SIGTERM or SIGINT after writing a checkpoint at a step boundary: not an error of the
    user's input, so not an ``AttnlabError``. ``exit_code`` is what ``attnlab train`` exits with (128 + the
    signal number: 143 for SIGTERM, 130 for SIGINT); ``--resume`` continues from ``step``. ``resumable`` is
    False only when the signal came before the run's first step, with no checkpoint to resume from."""

    def __init__(self, signum: int, step: int, run_dir, resumable: bool = True):
        import signal

        self.signum, self.step, self.run_dir, self.resumable = signum, step, run_dir, resumable
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        if resumable:
            message = (f"stopped by {name} at step {step}: checkpoint saved; continue with "
                       f"attnlab train --out-dir {run_dir} --resume")
        else:
            message = f"stopped by {name} before the first step: nothing to resume; start the run again"
        super().__init__(message)

    def __reduce__(self):
        return type(self), (self.signum, self.step, self.run_dir, self.resumable)
