r"""Sphinx configuration of the ovis documentation site (``make docs``).

The site is built from this folder into ``docs/_build/html`` with warnings as errors and in
nitpicky mode (a broken cross-reference fails the build). The API reference is generated at
build time by autosummary (``api/generated/``, not committed); the tutorials
(``tutorials/*.ipynb``) are executed at build time by myst-nb. Nothing is fetched from the
network: there is no intersphinx, so references to other libraries' objects are listed in
``nitpick_ignore_regex`` below (external names only).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The tutorials run in a kernel of this interpreter (the project's .venv), which imports ovis from
# the repository. (No MPLBACKEND here: the kernel's inline backend must keep the plots.)
os.environ.setdefault("PYTHONPATH", str(ROOT))

import ovis  # noqa: E402

project = "ovis"
author = "the ovis developers"
copyright = "the ovis developers, MIT licence"
release = ovis.__version__
version = ovis.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx-mathjax-offline",  # MathJax 3 copied into _static: the maths renders without a network
]

exclude_patterns = ["_build", "jupyter_execute", ".jupyter_cache", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"

# -- HTML --------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"ovis {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
html_last_updated_fmt = None  # reproducible pages

# -- MyST / notebooks -----------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "force"           # every build executes every tutorial
nb_execution_timeout = 300            # seconds per cell
nb_execution_raise_on_error = True    # a failing tutorial fails the build
nb_execution_show_tb = True
nb_execution_in_temp = False          # tutorials run with docs/tutorials as the working folder
nb_merge_streams = True
nb_kernel_rgx_aliases = {".*": "python3"}

# -- autodoc / autosummary / napoleon ---------------------------------------------------------------
autosummary_generate = True
autosummary_generate_overwrite = True
autosummary_ignore_module_all = True   # submodules found by pkgutil (public: no leading underscore)
autosummary_imported_members = False
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    # every object is documented once, on the page of the module that defines it
    "ignore-module-all": True,
    "member-order": "bysource",
}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = True
autodoc_mock_imports: list[str] = []
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = False  # "a, b: text" entries of an Attributes section stay one entry
napoleon_preprocess_types = False

# -- references --------------------------------------------------------------------------------------
nitpicky = True
# No intersphinx (the build is offline): the names of other libraries cannot be resolved and are
# listed here. Only EXTERNAL names: a broken reference to an ovis object fails the build.
_EXTERNAL = [
    r"torch(\..*)?", r"Tensor", r"nn\..*", r"np\..*", r"numpy(\..*)?", r"pd\..*", r"pandas(\..*)?",
    r"scipy(\..*)?", r"matplotlib(\..*)?", r"plt\..*", r"tinydb(\..*)?", r"filelock(\..*)?",
    r"jinja2(\..*)?", r"distributed(\..*)?", r"dask(\..*)?", r"dask_jobqueue(\..*)?", r"psutil(\..*)?",
    r"typing(\..*)?", r"typing_extensions(\..*)?", r"collections(\..*)?", r"collections\.abc\..*",
    r"abc\..*", r"enum\..*", r"dataclasses\..*", r"pathlib(\..*)?", r"os(\..*)?", r"io\..*",
    r"argparse(\..*)?", r"re(\..*)?", r"json(\..*)?", r"logging(\..*)?", r"subprocess(\..*)?",
    r"threading(\..*)?", r"multiprocessing(\..*)?", r"concurrent(\..*)?", r"signal(\..*)?",
    r"contextlib(\..*)?", r"types(\..*)?", r"datetime(\..*)?", r"random(\..*)?", r"hashlib(\..*)?",
    r"socket(\..*)?", r"ssl(\..*)?", r"functools(\..*)?", r"queue(\..*)?",
    # the rest of the standard library
    r"(difflib|shlex|shutil|tempfile|textwrap|itertools|math|warnings|inspect|importlib|pickle|urllib|http"
    r"|gzip|zipfile|struct|time|sys|copy|weakref|traceback|platform|uuid|string|operator|heapq|bisect"
    r"|statistics|numbers|codecs|errno|selectors|asyncio|tomllib|csv|html|base64|hashlib|secrets|ctypes"
    r"|resource|fcntl|glob|fnmatch|stat|pkgutil|zlib|lzma|bz2|tarfile)(\..*)?",
    r"Path", r"PathLike", r"Any", r"Callable", r"Iterable", r"Iterator", r"Sequence", r"Mapping",
    r"MutableMapping", r"Optional", r"Union", r"Literal", r"Type", r"Dict", r"List", r"Tuple",
    r"Set", r"FrozenSet", r"Generator", r"TypeVar", r"Protocol", r"ClassVar", r"Self",
    r"Distribution", r"Module", r"Parameter", r"DataLoader", r"Dataset", r"Generator",
    r"int", r"float", r"str", r"bool", r"bytes", r"object", r"None", r"dict", r"list", r"tuple",
    r"set", r"frozenset", r"type", r"callable", r"Exception", r"ValueError", r"TypeError",
    r"KeyError", r"RuntimeError", r"OSError", r"FileNotFoundError", r"IndexError",
    r"NotImplementedError", r"AssertionError", r"ImportError", r"TimeoutError",
    r"KeyboardInterrupt", r"SystemExit", r"PermissionError", r"BaseException",
    r"array_like", r"optional", r"default.*",
]
nitpick_ignore_regex = [(kind, pattern) for kind in ("py:class", "py:exc", "py:obj", "py:func",
                                                     "py:meth", "py:mod", "py:data", "py:attr")
                        for pattern in _EXTERNAL]
nitpick_ignore_regex += [(kind, r"cloudpickle(\..*)?") for kind in ("py:func", "py:mod", "py:class")]


# -- the project's docstring conventions ------------------------------------------------------------
def _prose_attribute_docstring(self):  # type: ignore[no-untyped-def]
    r"""Napoleon reads an attribute's docstring ``"text: more"`` as ``"type: description"``; the
    project's attribute and property docstrings are prose (the type is the annotation), so keep
    them as written."""
    return list(self._consume_to_end())


from sphinx.ext.napoleon import docstring as _napoleon_docstring  # noqa: E402

_napoleon_docstring.GoogleDocstring._parse_attribute_docstring = _prose_attribute_docstring


def _public_bases(app, name, obj, options, bases):  # type: ignore[no-untyped-def]
    r"""``Bases:`` lists public classes: a private base (``_Name``, not documented) is replaced by
    its own public bases, recursively."""
    out = []

    def add(cls):  # type: ignore[no-untyped-def]
        if cls.__name__.startswith("_") and cls.__module__.startswith("ovis"):
            for base in cls.__bases__:
                add(base)
        elif cls not in out:
            out.append(cls)

    for base in list(bases):
        add(base)
    bases[:] = out


def _resolve_ovis_reference(app, env, node, contnode):  # type: ignore[no-untyped-def]
    r"""Resolve a Python reference to an ovis object that Sphinx's exact lookup missed, only when
    it names exactly one documented object:

    * a re-exported name (``ovis.datasets.DataSplits``) -> where the object is defined and
      documented (``ovis.datasets.core.DataSplits``);
    * a short name written in a docstring (``DataSplits``, ``DiscreteVAE.forward``) -> the one
      documented ovis object whose full name ends with it, preferring the current module.

    A target that names no documented object, or several, stays unresolved, so the build fails
    (nitpicky) on a broken or ambiguous reference.
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if not target or target.startswith(("torch", "numpy", "pandas")):
        return None
    domain = env.get_domain("py")
    objects = domain.objects
    candidates: list[str] = []
    if target.startswith("ovis."):  # a re-export: find where the object is defined
        import importlib

        parts = target.split(".")
        for i in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                break
            module = getattr(obj, "__module__", None)
            qualname = getattr(obj, "__qualname__", None)
            if module and qualname and f"{module}.{qualname}" in objects:
                candidates = [f"{module}.{qualname}"]
            break
    else:
        suffix = "." + target.lstrip(".~")
        matches = [name for name in objects if name.endswith(suffix) and name.startswith("ovis.")]
        context = node.get("py:module") or ""
        local = [name for name in matches if context and name.startswith(context + ".")]
        candidates = local if len(local) == 1 else matches
    if len(candidates) != 1:
        return None
    new = candidates[0]
    builder = app.builder
    return domain.resolve_xref(env, node.get("refdoc", ""), builder, node.get("reftype"), new,
                               node, contnode)


def _skip_namedtuple_field_aliases(app, what, name, obj, skip, options):  # type: ignore[no-untyped-def]
    r"""A ``NamedTuple``'s fields carry Python's generated docstring ("Alias for field number 0");
    the class docstring's ``Attributes:`` section documents them, once."""
    doc = getattr(obj, "__doc__", None)
    if isinstance(doc, str) and doc.startswith("Alias for field number "):
        return True
    return None


def setup(app):  # type: ignore[no-untyped-def]
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("autodoc-skip-member", _skip_namedtuple_field_aliases)
    app.connect("missing-reference", _resolve_ovis_reference)
