"""Option dataclasses (training, bench, compare) read from flags, YAML/JSON files and saved runs."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from .errors import ConfigError


class Options:
    """Mixin for a dataclass of user options: plain-dict round trip, unknown keys are a one-line error."""

    option_kind: ClassVar[str] = "option"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown {cls.option_kind} option(s): {', '.join(sorted(unknown))}")
        return cls(**values)
