"""A pytest plugin that makes ``import laplace`` resolve to ``laplacetorch.compat``, names only.

laplace-torch's own test suite then runs against the compatibility layer with strict imports:
``laplace.X.Y`` is ``laplacetorch.compat.X.Y`` where that module exists, laplace-torch's module
files that have no counterpart of their own (``laplace.baselaplace``, ``laplace.lllaplace``,
...) are the flat ``laplacetorch.compat`` namespace, and anything else is an ImportError, as a
missing name is (no fallback, no stub). Loaded with ``-p laplace_alias``; it installs itself
first on ``sys.meta_path``, ahead of an installed laplace-torch.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

#: laplace-torch modules whose names live in compat's flat namespace (or another module)
RENAMED = {
    "laplace.baselaplace": "laplacetorch.compat",
    "laplace.lllaplace": "laplacetorch.compat",
    "laplace.subnetlaplace": "laplacetorch.compat",
    "laplace.laplace": "laplacetorch.compat",
    "laplace.marglik_training": "laplacetorch.compat",
    "laplace.curvature.curvature": "laplacetorch.compat.curvature",
    "laplace.utils.utils": "laplacetorch.compat.utils",
}


def target_of(name: str) -> str:
    """The compat module that stands for laplace-torch's module ``name``."""
    return RENAMED.get(name, "laplacetorch.compat" + name[len("laplace") :])


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "laplace" and not fullname.startswith("laplace."):
            return None
        try:
            importlib.import_module(target_of(fullname))
        except ModuleNotFoundError:
            return None  # strict: the import fails as a missing module does
        return importlib.util.spec_from_loader(fullname, self, is_package=True)

    def create_module(self, spec) -> ModuleType:
        return importlib.import_module(target_of(spec.name))

    def exec_module(self, module: ModuleType) -> None:
        return None


def pytest_load_initial_conftests(early_config, parser, args) -> None:
    for name in [m for m in sys.modules if m == "laplace" or m.startswith("laplace.")]:
        del sys.modules[name]
    sys.meta_path.insert(0, _Alias())
