"""One module per method; importing this package registers them all.

The order of the imports below is the registration order of :data:`regrow.sparsity.METHODS`,
which every help text, table and figure uses to list methods: dense baselines, then fixed masks,
then pruning, then the drop-and-grow methods. A new method appears everywhere once imported here.
"""

# isort: off
from .dense import Dense
from .small_dense import SmallDense
from .static import Static
from .snip import SNIP
from .pruning import Pruning
from .granet import GraNet
from .set import SET
from .mest import MEST
from .snfs import SNFS
from .rigl import RigL
from .srigl import SRigL
from .chase import Chase

# isort: on

__all__ = [
    "MEST",
    "SET",
    "SNFS",
    "SNIP",
    "Chase",
    "Dense",
    "GraNet",
    "Pruning",
    "RigL",
    "SRigL",
    "SmallDense",
    "Static",
]
