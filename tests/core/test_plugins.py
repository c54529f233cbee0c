"""rajax.core.plugins: a user's function from a module:function or file.py:function spec."""
import sys

import pytest

from rajax.core import plugins
from rajax.core.errors import InvalidInput, MissingInput


def test_module_and_file_specs_load_the_same_object_each_time(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # the loader may add the working directory
    (tmp_path / "rajax_test_plugin_mod.py").write_text("def f(x):\n    return x + 1\nVALUE = 3\n")
    monkeypatch.chdir(tmp_path)  # not on sys.path: found as `python -m` would find it
    f = plugins.load("rajax_test_plugin_mod:f", what="k")
    assert f(1) == 2 and plugins.load("rajax_test_plugin_mod:f", what="k") is f
    g = plugins.load(f"{tmp_path / 'rajax_test_plugin_mod.py'}:f", what="k")
    assert g(1) == 2 and plugins.load(f"{tmp_path / 'rajax_test_plugin_mod.py'}:f", what="k") is g
    assert plugins.is_spec("a.b:c") and not plugins.is_spec("cvar") and not plugins.is_spec("a:")
    with pytest.raises(InvalidInput, match=r"k='rajax_test_plugin_mod:VALUE' is a int, not a function"):
        plugins.load_callable("rajax_test_plugin_mod:VALUE", what="k")


@pytest.mark.parametrize("spec, err, needle", [
    ("no_such_module_xyz:f", InvalidInput, "no module named 'no_such_module_xyz'"),
    ("json:no_such_function", InvalidInput, "json has no attribute 'no_such_function'"),
    ("/no/such/file.py:f", MissingInput, "no such file /no/such/file.py"),
    ("justaname", InvalidInput, "expected module:function or path/to/file.py:function"),
])
def test_bad_specs_are_one_line_errors(spec, err, needle):
    with pytest.raises(err, match=needle) as e:
        plugins.load(spec, what="ppo.risk_measure")
    assert str(e.value).startswith(f"ppo.risk_measure={spec!r}") and "\n" not in str(e.value)
