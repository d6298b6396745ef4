"""The project's base exception."""

from __future__ import annotations


class FusetomoError(Exception):
    """Base class of every error fusetomo raises for bad input, an unusable file or message,
    or a job that cannot be done; the message names the problem and the value. The command
    line reports any of them as `fusetomo: error: <message>` with exit status 2. Subclasses
    also derive from the built-in class that fits (ValueError, KeyError, RuntimeError), so
    code that catches those keeps working."""
