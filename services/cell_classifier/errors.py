"""Errors of the cell service's model loading."""


class ModelIntegrityError(RuntimeError):
    """A model file does not match its card."""
