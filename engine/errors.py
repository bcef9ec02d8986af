"""Errors the engine raises on bad input: each message says what went wrong and what to do."""


class EngineError(Exception):
    """Base class: a problem with the user's model, image or prompt, not a bug."""


class ModelLoadError(EngineError):
    """The model id or path could not be loaded as a vision-language model."""


class UnsupportedModelError(EngineError):
    """The model loaded, but no adapter knows its architecture, or it cannot return attention."""


class ImageError(EngineError):
    """The image file is missing, corrupt, of an unsupported format, or too large."""


class PromptError(EngineError):
    """The prompt is empty or cannot carry an image."""


class InputError(EngineError):
    """A recording option that is out of range or not UTF-8 text: caught before any model loads."""


class UnsafeCheckpointError(ModelLoadError):
    """The checkpoint's weights exist only as pickle files, which can run code when loaded."""
