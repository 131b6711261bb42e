"""Models: one interface (base.LoadedModel), four formats, one loader (loading.load_models).

Imports are lazy so that front ends can build requests (ModelOptions) without importing torch.
"""

from importlib import import_module

from .options import ModelOptions

_LAZY = {"LoadedModel": ".base", "Prepared": ".base", "load_models": ".loading", "describe_model": ".loading"}

__all__ = ["ModelOptions", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
