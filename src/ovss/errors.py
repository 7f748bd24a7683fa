"""Errors that carry a message meant for the user (the CLI prints them without a traceback)."""
from __future__ import annotations


class OvssError(Exception):
    """Base class: the message says what went wrong and what to do about it."""


class InputError(OvssError, ValueError):
    """Bad user input: an unreadable image, an empty class list, an unknown option."""


class WeightsError(OvssError):
    """Weights that cannot be found, downloaded or loaded."""
