"""The SAGE optimizer and its helpers. Imports only torch.

    from sage_core.optim import SAGE, make_optimizer, sage_param_groups

    optimizer = make_optimizer(model, "sage", lr=1.5e-4, weight_decay=0.01, beta3=0.85)

The functional form is `sage_core.optim.sage.sage` (the submodule keeps its name here).
"""

from sage_core.optim.factory import OPTIMIZER_NAMES, build_optimizer, make_optimizer
from sage_core.optim.groups import SCOPES, is_linear_layer, is_norm_layer, sage_param_groups
from sage_core.optim.sage import BASES, SAGE

__all__ = [
    "BASES",
    "OPTIMIZER_NAMES",
    "SAGE",
    "SCOPES",
    "build_optimizer",
    "is_linear_layer",
    "is_norm_layer",
    "make_optimizer",
    "sage_param_groups",
]
