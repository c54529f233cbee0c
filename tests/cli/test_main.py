"""rajax.cli.main: the one console script and python -m rajax."""
import subprocess
import sys

import pytest

from rajax import __version__
from rajax.cli import main as cli_main


def test_usage_version_and_dispatch(capsys):
    assert cli_main.main([]) == 2
    assert "commands:" in capsys.readouterr().out
    assert cli_main.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("train", "sft", "evaluate", "study", "export"))
    assert cli_main.main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"rajax {__version__}"
    assert cli_main.main(["fly"]) == 2
    assert capsys.readouterr().err.strip() == ("rajax: error: unknown command 'fly'; choose one of train, sft, "
                                               "evaluate, study, export")
    with pytest.raises(SystemExit) as e:
        cli_main.main(["train", "--help"])
    assert e.value.code == 0 and "--ppo.kl-stat" in capsys.readouterr().out


def test_python_dash_m_rajax():
    p = subprocess.run([sys.executable, "-m", "rajax", "--version"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == f"rajax {__version__}", p.stderr
