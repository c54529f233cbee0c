"""The package as users get it: the wheel ships the presets and the console script, `rajax train` runs
from another directory, `rajax train --help` lists every config key, and every third-party import of
rajax/ is a declared dependency (or an extra)."""
import ast
import importlib.metadata
import os
import pathlib
import re
import subprocess
import sys
import sysconfig
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _declared() -> set[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"]) + [r for extra in meta["optional-dependencies"].values() for r in extra]
    return {re.split(r"[\[<>=!~;\s]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_every_import_is_a_declared_dependency():
    stdlib = set(sys.stdlib_module_names)
    dists = importlib.metadata.packages_distributions()
    imported = set()
    for f in (ROOT / "rajax").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    third = sorted(m for m in imported if m not in stdlib and m not in ("rajax", "__future__"))
    declared = _declared()
    missing = [m for m in third if not {d.lower().replace("_", "-") for d in dists.get(m, [m])} & declared]
    assert not missing, f"imported by rajax/ but not declared in pyproject.toml: {missing}"
    assert {"jax", "flax", "optax", "orbax-checkpoint", "scipy", "huggingface-hub"} <= declared
    # The evaluation's CSV is written with the csv module: pandas is no longer a dependency of rajax.
    assert "pandas" not in declared and "pandas" not in third


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from this checkout, installed into a fresh virtual environment outside it. The
    environment borrows the test environment's dependencies through a plain path entry (no editable
    rajax: the .pth files of that site-packages are not processed), so only the wheel provides rajax."""
    tmp = tmp_path_factory.mktemp("pkg")
    dist = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("rajax-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    pathlib.Path(site, "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return wheel, venv


def test_the_wheel_runs_from_another_directory(installed, synthetic_assets, tmp_path):
    import zipfile

    wheel, venv = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert {"rajax/configs/synthetic.yaml", "rajax/configs/rtp.yaml"} <= set(names)
    assert any(n.endswith("entry_points.txt") for n in names)
    rajax = venv / "bin" / "rajax"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([venv / "bin" / "python", "-c", "import rajax; print(rajax.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, env=env, check=True).stdout
    assert str(venv) in where and str(ROOT) not in where  # the wheel's rajax, not the checkout's
    helptext = subprocess.run([rajax, "train", "--help"], cwd=elsewhere, capture_output=True, text=True, env=env,
                              timeout=300)
    assert helptext.returncode == 0, helptext.stderr[-2000:]
    from rajax.cli import options

    assert all(f"--{k}" in helptext.stdout for k in options.keys()[1:])
    a = synthetic_assets[0]
    paths = ["--policy", a.policy, "--tokenizer", a.tokenizer, "--reward-model", a.reward_model, "--data", a.data]
    out = elsewhere / "run"
    train = subprocess.run([rajax, "train", "--task", "synthetic", "--iterations", "4", "--out", str(out),
                            "--quiet", "--batch-size", "16", "--set", "eval.test_size=16", *paths],
                           cwd=elsewhere, capture_output=True, text=True, env=env, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (out / "model" / "model.safetensors").is_file() and (out / "eval" / "metrics.md").is_file()
    ev = subprocess.run([rajax, "evaluate", "--task", "synthetic", "--policy", f"init={a.policy}", "--policy",
                         f"trained={out / 'model'}", "--out", str(elsewhere / "ev"), "--no-progress",
                         "--test-size", "16", "--tokenizer", a.tokenizer, "--reward-model", a.reward_model,
                         "--data", a.data], cwd=elsewhere, capture_output=True, text=True, env=env, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "| trained |" in ev.stdout
