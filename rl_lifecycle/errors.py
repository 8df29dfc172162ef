"""Errors a user can act on. The CLI maps them to exit code 2 with their message."""


class UserInputError(ValueError):
    """Bad input (market key, config, CLI argument, candle file): the message names what is wrong."""
