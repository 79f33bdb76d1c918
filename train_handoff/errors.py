"""Errors the person running the trainer can fix (a config value, a missing checkpoint, a mix that does not
fit)."""


class TrainError(Exception):
    """Raised with a message that names the file or setting; `phicurate train` prints it as a user error."""
