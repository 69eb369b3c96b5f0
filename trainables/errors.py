"""The one error type for bad user input.

The CLI turns an InputError into one line on stderr and exit code 2; any
other exception is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """Bad input from the user: a config value, a data file, a model path."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""
