"""A pytest plugin standing in for torchvision where no CPU build matching the installed torch
exists (PyPI's wheels are CUDA builds). laplace-torch's test modules (and torchmetrics) import
it at the top, and only a few tests build a torchvision model: those fail alike on laplace-torch
and on compat and drop out of the comparison, while the rest of each module runs. Every name
under ``torchvision`` is a class whose construction or call raises ImportError."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from types import ModuleType


class _Unavailable:
    def __init__(self, *args, **kwargs):
        raise ImportError(f"{type(self).__qualname__}: torchvision is not installed here")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)


class _Module(ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        stub = type(name, (_Unavailable,), {"__module__": self.__name__})
        setattr(self, name, stub)
        return stub


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        return None

    def create_module(self, spec) -> ModuleType:
        return _Module(spec.name)

    def exec_module(self, module: ModuleType) -> None:
        module.__version__ = "0.0"


def pytest_load_initial_conftests(early_config, parser, args) -> None:
    if importlib.util.find_spec("torchvision") is None:
        sys.meta_path.insert(0, _Finder())
