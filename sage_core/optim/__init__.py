"""The SAGE optimizer and its helpers. Imports only torch and sage_core.names.

    from sage_core.optim import SAGE, make_optimizer, sage_param_groups

    optimizer = make_optimizer(model, "sage", lr=1.5e-4, weight_decay=0.01)

The functional form is `sage_core.optim.sage.sage` (the submodule keeps its name here).
The optimizer names and SAGE scopes are `sage_core.names.OPTIMIZERS` and `SAGE_SCOPES`.
"""

from sage_core.optim.factory import build_optimizer, make_optimizer
from sage_core.optim.groups import (
    find_sage_scope,
    is_linear_layer,
    is_norm_layer,
    sage_param_groups,
)
from sage_core.optim.sage import BASES, SAGE

__all__ = [
    "BASES",
    "SAGE",
    "build_optimizer",
    "find_sage_scope",
    "is_linear_layer",
    "is_norm_layer",
    "make_optimizer",
    "sage_param_groups",
]
