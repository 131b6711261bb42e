"""Errors a user can act on: each names the problem and the fix, so front ends can show it as is."""

import re


class SegXAIError(Exception):
    """Base class: `problem` says what is wrong, `fix` says what to do about it."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  Fix: {fix}" if fix else problem)


class InputError(SegXAIError):
    """Images, masks, labels or options that cannot be used as given."""


class ModelError(SegXAIError):
    """A model file or folder that cannot be read, or that rejects the input."""


class TrustError(ModelError):
    """Loading would execute code from the model file (pickle, bundle expressions) without --trust."""


class MemoryBudgetError(SegXAIError):
    """Not even one window fits in the memory there is."""


class Cancelled(SegXAIError):
    """The user cancelled the run; nothing was written."""

    def __init__(self):
        super().__init__("The run was cancelled.", "")


def brief(exc: BaseException, limit: int = 300) -> str:
    """An exception from a library as one short line, for a message that must stay one paragraph.

    TorchScript errors carry the serialized code's traceback before the actual error: only its last line is kept,
    without the exception class name.
    """
    text = f"no {exc.args[0]!r} entry" if isinstance(exc, KeyError) and exc.args else str(exc)
    if "Traceback" in text:
        text = next((line for line in reversed(text.splitlines()) if line.strip()), text)
    text = re.sub(r"^[\w.]*(Error|Exception): ", "", " ".join(text.split())) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 1] + "…"
