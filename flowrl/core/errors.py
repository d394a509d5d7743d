"""Errors caused by the user's input rather than by a bug: the command line prints their one-line message
(naming the config key, file, reward or server) and exits with code 2; ``--debug`` shows the traceback."""

from __future__ import annotations


class InputError(ValueError):
    """Base of every error a user fixes by changing their input (config, data, reward, server)."""


class ConfigError(InputError):
    """A bad configuration value or command-line option; the message names the key and what is allowed."""


class LaunchError(InputError):
    """A launch the trainer cannot run as configured (accelerate, FSDP or DeepSpeed settings, process counts)."""


class DataError(InputError):
    """A prompt or dataset file that cannot be used; the message names the file (and line)."""


class RewardError(InputError):
    """A reward function that raised or returned something unusable; the message names the reward."""


class TrainingStopped(InputError):
    """The run stopped itself, e.g. after too many consecutive non-finite rewards or losses."""


class Interrupted(Exception):
    """Training stopped by Ctrl-C or SIGTERM (a scheduler's pre-emption): the command prints the message on one
    line and exits with ``code`` (128 + the signal's number, as a shell reports it)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


__all__ = ["ConfigError", "DataError", "InputError", "Interrupted", "LaunchError", "RewardError", "TrainingStopped"]
