"""The exceptions cnnlab raises for problems a user can fix.

Every one carries a message that says what was wrong, what was expected and what to do. The CLI
prints the message on one line and exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations


class CnnlabError(Exception):
    """Base of every error cnnlab raises on purpose."""

    exit_code = 2


class ConfigError(CnnlabError):
    """An option or configuration value is out of range, unknown or malformed."""


class DataError(CnnlabError):
    """A dataset file is missing, corrupt, or fails its checksum; or no source could provide it."""


class IdxFormatError(DataError):
    """A file is not a valid IDX file (wrong magic, dtype, dimensions or length)."""


class ChecksumError(DataError):
    """A file's decompressed content does not have the SHA-256 it must have."""


class CheckpointError(CnnlabError):
    """A weights file is missing, is not safetensors, or does not fit the network."""


class RunError(CnnlabError):
    """A run directory is missing, malformed, locked by another process, or would be overwritten."""


class StateDamagedError(RunError):
    """The saved training state of a run cannot be resumed; the message says what and how to recover."""


class OutputError(RunError):
    """An output folder or file cannot be written, or writing it would replace a file cnnlab did
    not write (a user's file, a symlink) without --overwrite."""


class TrainingError(CnnlabError):
    """Training cannot go on (for example, the loss became NaN or infinite)."""


class ImageError(CnnlabError):
    """A user image cannot be read or is unsafe to decode."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped a command. A KeyboardInterrupt, so no `except
    Exception` on the way up can swallow it; the CLI exits 128 + the signal number (130 / 143)."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
        self.message = message


class WeightsImportError(CheckpointError):
    """Weights trained elsewhere cannot be imported: unreadable, unsafe to open, or not the
    assignment's network."""


class PathError(ConfigError):
    """A path given to a command cannot be used as given: a name or the whole path too long for
    the file system, or an output folder that is a symbolic link."""
