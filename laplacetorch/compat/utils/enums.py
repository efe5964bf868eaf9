"""laplace-torch's ``laplace.utils.enums`` names (those of :mod:`laplacetorch.compat.enums`)."""

from .. import enums as _enums
from ..enums import *  # noqa: F403

__all__ = [name for name in _enums.__all__ if name != "plain"]
