"""One module per method; importing this package registers them all."""

from .dense import Dense
from .pruning import Pruning
from .rigl import RigL
from .set import SET
from .small_dense import SmallDense
from .snfs import SNFS
from .snip import SNIP
from .srigl import SRigL
from .static import Static

__all__ = ["SET", "SNFS", "SNIP", "Dense", "Pruning", "RigL", "SRigL", "SmallDense", "Static"]
