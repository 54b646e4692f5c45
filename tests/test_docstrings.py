r"""Documentation coverage: every public module, function, class and method of ``ovis`` has a docstring.

What "public" means here (the same rule the Sphinx API pages follow):

* **Modules**: every module and package found by ``pkgutil.walk_packages`` under ``ovis`` whose
  dotted name has no part starting with ``_`` (``ovis.estimators.base`` is public; a module
  ``ovis.foo._impl`` would not be).  Packages count through their ``__init__``.
* **Functions and classes** of a public module: every function and class *defined* in that module
  (``obj.__module__ == module.__name__``) and bound to a name that does not start with ``_`` or is
  listed in the module's ``__all__``.  ``__all__`` (what ``import *`` and the Sphinx pages show) adds
  names but does not hide any: a helper without a leading underscore can be imported, so it is
  documented even when ``__all__`` leaves it out (``ovis.training.arguments.pos_int``).  A re-export is
  checked once, where it is defined; a function or class that a public module lists in ``__all__`` but
  defines in a private ``ovis`` module is checked as part of the public one.  Constants and type
  aliases are data, not checked.
* **Methods** of a public class: every function, ``property``, ``classmethod`` and ``staticmethod``
  in the class's own ``__dict__`` whose name does not start with ``_`` (``forward`` counts;
  ``__init__`` and other dunders do not: the class docstring documents the constructor).

A function, method or property passes when it has a docstring of its own, or inherits one from an
``ovis`` class it overrides (the first class in the MRO, from a module under ``ovis``, that defines the
same name with a docstring).  A docstring inherited from torch or the standard library does not
count: ``nn.Module.forward``'s generic text says nothing about an estimator's or a model's
``forward``.  A class passes only with a docstring of its own: the text that ``dataclasses`` and
``NamedTuple`` generate (the signature) does not count.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import types
from typing import Iterator, List, Optional, Tuple

import ovis


def _is_private(name: str) -> bool:
    return any(part.startswith("_") for part in name.split("."))


def public_modules() -> List[types.ModuleType]:
    r"""The public modules and packages of ``ovis`` (imported), ``ovis`` itself first."""
    modules = [ovis]
    for info in pkgutil.walk_packages(ovis.__path__, prefix="ovis."):
        if not _is_private(info.name):
            modules.append(importlib.import_module(info.name))
    return modules


def _own_doc(obj: object) -> Optional[str]:
    r"""The docstring ``obj`` carries itself (unwrapping descriptors), stripped, or ``None``."""
    if isinstance(obj, (classmethod, staticmethod)):
        obj = obj.__func__
    elif isinstance(obj, property):
        obj = obj.fget
    doc = getattr(obj, "__doc__", None)
    if isinstance(doc, str) and doc.strip():
        return doc.strip()
    return None


def _generated_class_doc(cls: type) -> bool:
    r"""Whether ``cls.__doc__`` is the signature text that ``dataclasses``/``NamedTuple`` write."""
    doc = cls.__dict__.get("__doc__")
    return isinstance(doc, str) and re.fullmatch(re.escape(cls.__name__) + r"\(.*\)", doc.strip(), re.S) is not None


def class_has_doc(cls: type) -> bool:
    r"""Whether ``cls`` has a docstring of its own (not a generated one)."""
    doc = cls.__dict__.get("__doc__")
    return isinstance(doc, str) and bool(doc.strip()) and not _generated_class_doc(cls)


def member_has_doc(cls: type, name: str) -> bool:
    r"""Whether ``cls.__dict__[name]`` has a docstring, its own or that of the ``ovis`` class it overrides."""
    for klass in cls.__mro__:
        if not (klass is cls or klass.__module__.split(".")[0] == "ovis"):
            continue
        if name in klass.__dict__ and _own_doc(klass.__dict__[name]) is not None:
            return True
    return False


def _is_method(attr: object) -> bool:
    return isinstance(attr, (types.FunctionType, classmethod, staticmethod, property))


def _public_names(module: types.ModuleType) -> List[str]:
    names = list(getattr(module, "__all__", ()))
    return names + [n for n in vars(module) if not n.startswith("_") and n not in names]


def public_symbols() -> Iterator[Tuple[str, str, object]]:
    r"""Yield ``(qualified name, kind, object)`` for every public function, class and method;
    ``kind`` is ``"function"``, ``"class"`` or ``"method"`` (for a method, ``object`` is the class)."""
    seen = set()
    modules = public_modules()
    walked = {m.__name__ for m in modules}
    for module in modules:
        for name in _public_names(module):
            obj = getattr(module, name, None)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            home = getattr(obj, "__module__", None) or ""
            if home != module.__name__ and not (
                home.split(".")[0] == "ovis" and home not in walked and "__all__" in vars(module)
            ):
                continue  # checked where it is defined (or not ovis's)
            qualname = f"{home}.{obj.__qualname__}"
            if qualname in seen:
                continue
            seen.add(qualname)
            if inspect.isfunction(obj):
                yield qualname, "function", obj
                continue
            yield qualname, "class", obj
            for attr_name, attr in vars(obj).items():
                if attr_name.startswith("_") or not _is_method(attr):
                    continue
                yield f"{qualname}.{attr_name}", "method", obj


def undocumented() -> Tuple[List[str], int]:
    r"""The qualified names of the public symbols without a docstring, and the number of symbols checked."""
    missing, total = [], 0
    for qualname, kind, obj in public_symbols():
        total += 1
        if kind == "function":
            ok = _own_doc(obj) is not None
        elif kind == "class":
            ok = class_has_doc(obj)
        else:
            ok = member_has_doc(obj, qualname.rsplit(".", 1)[1])
        if not ok:
            missing.append(f"{qualname} ({kind})")
    return missing, total


def test_every_public_module_has_a_docstring():
    modules = public_modules()
    assert len(modules) > 50  # the walk found the package (guards against a vacuous pass)
    missing = [m.__name__ for m in modules if _own_doc(m) is None]
    assert not missing, f"{len(missing)} public module(s) without a module docstring:\n" + "\n".join(missing)


def test_every_public_function_class_and_method_has_a_docstring():
    missing, total = undocumented()
    assert total > 500  # the walk found the symbols (guards against a vacuous pass)
    assert not missing, (
        f"{len(missing)} of {total} public functions, classes and methods of ovis have no docstring "
        "(own, or inherited from the ovis class they override):\n" + "\n".join(missing)
    )


def test_the_checker_rejects_what_it_should():
    r"""The rules themselves: torch's inherited docs and generated dataclass docs do not count."""
    import dataclasses

    from torch import nn

    class Base:
        def run(self):
            """Documented in the base."""

    class Child(Base):
        def run(self):
            return 1

    class Net(nn.Module):
        def forward(self, x):
            return x

    @dataclasses.dataclass
    class Plain:
        a: int = 0

    @dataclasses.dataclass
    class Documented:
        """A documented dataclass."""

        a: int = 0

    Base.__module__ = Child.__module__ = "ovis.fake"
    assert member_has_doc(Child, "run")          # inherited from an ovis class
    assert not member_has_doc(Net, "forward")    # nn.Module.forward's docstring does not count
    assert _own_doc(nn.Module.__dict__["forward"])  # ... though torch documents it
    assert not class_has_doc(Plain)              # dataclass-generated signature text
    assert class_has_doc(Documented)
    Base.__module__ = "torch.fake"
    assert not member_has_doc(Child, "run")      # inherited from outside ovis: not counted
