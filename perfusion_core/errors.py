"""Every error perfusion raises derives from `PerfusionError`; its message says what is wrong and what to do."""


class PerfusionError(Exception):
    """Base class of every error perfusion raises; its message says what is wrong and what to do."""


class ConceptFileError(PerfusionError):
    """A concept file is missing, truncated, corrupt, a pickle, or from a newer format."""


class IncompatibleConceptError(PerfusionError):
    """A concept does not fit the model (family, context width, text-encoder layer or layer map)."""


class TrainingError(PerfusionError):
    """Training cannot go on (bad data, bad words, NaN or stuck loss)."""
