"""Domain exceptions: raised inside, turned into one-line messages only at the edges (CLI, UI)."""


class GreedyScoreError(Exception):
    """Base class: its message is shown to the user as it is, so it says what to do."""


class BadInput(GreedyScoreError, ValueError):
    """Empty prompt, unknown role, out-of-range setting."""


class InputTooLong(BadInput):
    """The prompt (plus the tokens asked for) does not fit the model's context."""


class ModelNotFound(GreedyScoreError):
    """A --model path that does not exist or holds no model."""


class EngineUnavailable(GreedyScoreError):
    """A backend that cannot run here (no CUDA, lmdeploy not installed)."""


class AlignmentError(GreedyScoreError):
    """Prompt ids we rebuilt differ from what the engine consumed: scores would be shifted."""


class Busy(GreedyScoreError):
    """The shared engine's queue is full."""


class ModelFailed(GreedyScoreError):
    """The engine raised on this request (a bug or a bad model): the server keeps serving."""


class OutOfMemory(ModelFailed):
    """The request needed more memory than the machine or GPU has."""


class Unsupported(GreedyScoreError):
    """This server cannot do what was asked (e.g. rescoring: no prompt logprobs); the message says which can."""


class ServerRefused(GreedyScoreError):
    """A server's logprobs are not the model's true probabilities (renormalised or processed)."""
