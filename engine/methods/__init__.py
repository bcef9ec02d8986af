"""Methods that re-run the model (torch): importing this package registers them in
:mod:`methods.registry` beside the torch-free ones, which is why the CLI imports it and the
dashboard (never torch) does not."""

from engine.methods import (
    grounding,  # noqa: F401  (registers grounding)
    occlusion,  # noqa: F401  (registers occlusion)
    perturbation,  # noqa: F401  (registers deletion and insertion)
)
