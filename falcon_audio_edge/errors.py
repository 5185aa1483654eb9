"""Errors the toolkit raises on bad input. The CLI prints them as one line and exits 2."""


class FaEdgeError(Exception):
    """Base class: a problem with the user's input, described in one line."""


class ContextFullError(FaEdgeError):
    """The conversation does not fit in the decoder's context: the turn that did not fit is taken back, the
    conversation before it is kept; ``reset()`` starts a new one."""


class Interrupted(FaEdgeError):
    """Work stopped midway because its result is no longer wanted (a speculation dropped when speech resumed)."""


class ConfigError(FaEdgeError, ValueError):
    """A setting or a dims file has a bad, unknown or conflicting value."""


class AudioError(FaEdgeError, ValueError):
    """An audio input is missing, unreadable, empty, silent, or not finite."""


class BundleError(FaEdgeError):
    """A bundle is missing files, has a bad checksum, or does not match its manifest."""


class CheckpointError(FaEdgeError):
    """A checkpoint folder is missing files or its weights do not match its dims."""


class ExportError(FaEdgeError):
    """An export cannot proceed (output folder in use, unmapped tensor, ...)."""


class SetupError(FaEdgeError, RuntimeError):
    """A system tool the command needs is missing or incomplete (an espeak-ng voice, ...)."""
