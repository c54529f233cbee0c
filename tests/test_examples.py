"""examples/: the library-level RA-RLHF loop runs and does what the algorithm says."""
import importlib.util
import pathlib

import numpy as np

from rajax.core import risk


def _load(name):
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_custom_reward_example_follows_the_schedule_mask_and_controller(synthetic_assets):
    """examples/custom_reward.py with a Python reward: α′ follows the soft-risk schedule, exactly the
    α′ lowest episodes are kept once it drops, and β follows TRL's adaptive rule from the logged KL."""
    hist = _load("custom_reward").main(["--iterations", "4", "--batch", "8", "--alpha", "0.25",
                                        "--cache", synthetic_assets[0].root, "--small"])
    assert len(hist) == 4
    want = [risk.soft_risk_level(m, batch_size=8, alpha=0.25, n=2, rho=0.8, M=4) for m in range(4)]
    assert [h["alpha_prime"] for h in hist] == want == [8, 8, 8, 5]
    assert [h["kept"] for h in hist] == want  # float returns have no ties
    beta, betas = 0.2, []
    for h in hist:
        beta *= 1 + np.clip(h["kl"] / 6.0 - 1, -0.2, 0.2) * 8 / 10000
        betas.append(beta)
    np.testing.assert_allclose([h["beta"] for h in hist], betas, rtol=1e-6)
    assert all(np.isfinite(h["reward"]) for h in hist)
