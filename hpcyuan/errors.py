"""User-facing errors.

Everything a user can cause (a wrong config, a missing corpus, a vocabulary that does not match the
model) raises `HpcyuanError` with a one-line message that names the file, field and value involved.
The CLI prints such errors as one line and exits with status 2; anything else is a bug and keeps its
traceback.
"""


class HpcyuanError(Exception):
    """An error caused by input the user controls; its message is one self-contained line."""


class EveryRankError(HpcyuanError):
    """An error every rank of a job raises alike, because it follows from the config and the job size
    alone (pp x dp does not fit the ranks): rank 0 reports it, the other ranks end without a word."""


class ConfigError(HpcyuanError):
    """A config value is invalid: names the source file, the dotted field path and the value."""

    def __init__(self, field: str, value, reason: str, source: str | None = None):
        self.field, self.value, self.reason, self.source = field, value, reason, source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{self.field} = {format_value(self.value)}: {self.reason}"

    def located(self, source: str | None = None, section: str | None = None) -> "ConfigError":
        """The same error with a file and/or a section prefix added to the field path."""
        field = f"{section}.{self.field}" if section else self.field
        return ConfigError(field, self.value, self.reason, source or self.source)


def format_value(value) -> str:
    """A value as it would be written in TOML, so the message can be pasted back into a config."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if value is None:
        return "(unset)"
    return str(value)
