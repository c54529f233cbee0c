"""A user's own code named by a string: ``module:attribute`` or ``path/to/file.py:attribute``.

This is how a config file and the command line reach the Python extension points (a risk measure,
an optimizer, a reward): ``--set ppo.risk_measure=my_measures:soft_cvar``. A spec is a plain string,
so it goes through YAML, ``--set`` and a run's saved ``config.yaml`` unchanged, and ``--resume``
loads the same object again. Host-side only: nothing here is traced.

Why specs rather than an entry-point group: a spec needs no packaging (a file next to the run
works), and a loaded object is what a registry holds anyway (``rajax.core.risk.register``).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pathlib
import sys
from typing import Any

from rajax.core.errors import InvalidInput, MissingInput

FORMS = "module:function or path/to/file.py:function"

# Files loaded by path, once per process: a second load would make new function objects, and the jit
# caches key on the function (a new object compiles again).
_FILES: dict[pathlib.Path, Any] = {}


def is_spec(text) -> bool:
    """Whether ``text`` has the form of a spec (something on both sides of its last ``:``)."""
    if not isinstance(text, str):
        return False
    module, sep, attr = text.rpartition(":")
    return bool(sep and module.strip() and attr.strip())


def _module(name: str, spec: str, what: str):
    if name.endswith(".py"):
        path = pathlib.Path(name).expanduser().resolve()
        if path in _FILES:
            return _FILES[path]
        if not path.is_file():
            raise MissingInput(f"{what}={spec!r}: no such file {name}")
        loader_spec = importlib.util.spec_from_file_location(f"rajax_user_{path.stem}", path)
        mod = importlib.util.module_from_spec(loader_spec)
        try:
            loader_spec.loader.exec_module(mod)
        except (ImportError, SyntaxError) as e:
            raise InvalidInput(f"{what}={spec!r}: {name} does not import ({type(e).__name__}: {e})") from None
        _FILES[path] = mod
        return mod
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        top, cwd = name.split(".")[0], os.getcwd()
        here = pathlib.Path(cwd) / top
        # `python -m rajax` has the working directory on sys.path, the `rajax` console script does
        # not: a module beside the run is found either way.
        if e.name == top and cwd not in sys.path and (here.with_suffix(".py").is_file() or here.is_dir()):
            sys.path.insert(0, cwd)
            return _module(name, spec, what)
        missing = f"no module named {e.name!r}" if e.name else str(e)
        raise InvalidInput(f"{what}={spec!r}: {missing} (give {FORMS}; a module must be importable, e.g. "
                           "in the working directory or installed)") from None
    except (ImportError, SyntaxError) as e:
        raise InvalidInput(f"{what}={spec!r}: module {name} does not import ({type(e).__name__}: {e})") from None


def load(spec: str, *, what: str) -> Any:
    """The object ``spec`` names. ``what`` (e.g. ``"ppo.risk_measure"``) starts every error message.

    A module is imported as Python imports it (so the same object comes back each time); a ``.py``
    path is loaded once per process. A missing module, file or attribute, or a module that does not
    import, is an ``InvalidInput``/``MissingInput`` (one ``rajax: error:`` line); any other exception
    raised by the user's module keeps its traceback (it is a bug in that module)."""
    if not is_spec(spec):
        raise InvalidInput(f"{what}={spec!r}: expected {FORMS}")
    name, _, attr = spec.rpartition(":")
    obj = _module(name.strip(), spec, what)
    for part in attr.strip().split("."):
        if not hasattr(obj, part):
            raise InvalidInput(f"{what}={spec!r}: {name.strip()} has no attribute {attr.strip()!r}")
        obj = getattr(obj, part)
    return obj


def load_callable(spec: str, *, what: str) -> Any:
    """:func:`load`, and a one-line error unless the object is callable."""
    obj = load(spec, what=what)
    if not callable(obj):
        raise InvalidInput(f"{what}={spec!r} is a {type(obj).__name__}, not a function")
    return obj
