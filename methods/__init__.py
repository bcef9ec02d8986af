"""Analysis methods over stored traces, as modules with a name, a version and parameters.

Why a layer: every analysis (localisation, deletion/insertion, later CLEANN and flags) is run
by one command and stores its output through one channel (``store.put_result`` under
``method@version/params-key``, headline numbers as filterable metrics), so results from
different versions or parameters never overwrite each other silently and every result says
how it was computed. This package is torch-free (the dashboard may import it); methods that
need the model live in :mod:`engine.methods` and register themselves there.
"""

from methods.base import Method, MethodResult, Needs, params_key, save_result
from methods.registry import get, names, needs_model

__all__ = [
    "Method",
    "MethodResult",
    "Needs",
    "get",
    "names",
    "needs_model",
    "params_key",
    "save_result",
]
