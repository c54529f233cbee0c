"""rajax.io.export and `rajax export`: any checkpoint step as an HF model directory that transformers and
TRL's AutoModelForCausalLMWithValueHead load, with rajax's value head (TRL's key layout)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from tiny import train_args

from rajax.cli import evaluate as cli_evaluate
from rajax.cli import export as cli_export
from rajax.cli import train as cli_train
from rajax.io import export, hf
from rajax.io.checkpoint import Checkpointer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def run(train_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "run"
    assert cli_train.main(train_args(train_world, out, "--no-eval", iterations=3)) == 0
    return out


def test_policy_from_any_checkpoint_step(run):
    step = run / "checkpoints" / "2"
    assert export.is_checkpoint(step) and not export.is_checkpoint(run)
    assert export.checkpoint_of(run) == run / "checkpoints" / "3"
    cfg, params = export.policy_from_checkpoint(step)
    state, meta = Checkpointer(run / "checkpoints").restore_raw(2)
    assert meta["iteration"] == 2 and meta["hf_config"]["model_type"] == "gpt2"
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    final_cfg, final = hf.load(run / "model")
    assert cfg == final_cfg and not np.array_equal(np.asarray(params["wte"]["embedding"]),
                                                   np.asarray(final["wte"]["embedding"]))  # step 2, not 3


def _trl_value(d, ids):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    trl_vh = pytest.importorskip("trl.experimental.ppo.modeling_value_head")
    m = trl_vh.AutoModelForCausalLMWithValueHead.from_pretrained(str(d)).eval()
    with torch.no_grad():
        return m(torch.tensor(ids))[2].numpy()


def test_export_loads_in_transformers_and_trl_with_our_value_head(run, tmp_path, capsys):
    out = tmp_path / "step2"
    assert cli_export.main([str(run / "checkpoints" / "2"), str(out)]) == 0
    assert "exported" in capsys.readouterr().out
    cfg, params = export.policy_from_checkpoint(run / "checkpoints" / "2")
    sd = load_file(out / "model.safetensors")
    assert {"v_head.summary.weight", "v_head.summary.bias"} <= set(sd)  # TRL's layout, inside the weights
    ids = np.arange(12)[None] % cfg.vocab_size
    ours = np.asarray(cfg.apply(params, jnp.asarray(ids)).values)
    got = _trl_value(out, ids)
    assert np.abs(got - ours).max() <= 1e-5  # TRL reads rajax's head
    lm = transformers.GPT2LMHeadModel.from_pretrained(str(out)).eval()
    with torch.no_grad():
        logits = lm(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(logits, np.asarray(cfg.logits(params, jnp.asarray(ids))), atol=1e-4)
    # Without the two keys TRL draws a fresh head: the check above is not true by construction.
    save_file({k: v for k, v in sd.items() if not k.startswith("v_head.")}, out / "model.safetensors",
              metadata={"format": "pt"})
    assert np.abs(_trl_value(out, ids) - ours).max() > 1e-3
    # A run directory exports its newest checkpoint; a second export into the same OUT needs --overwrite.
    latest = tmp_path / "latest"
    assert cli_export.main([str(run), str(latest)]) == 0
    np.testing.assert_array_equal(load_file(latest / "model.safetensors")["transformer.wte.weight"],
                                  load_file(run / "model" / "model.safetensors")["transformer.wte.weight"])
    assert cli_export.main([str(run), str(latest)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli_export.main([str(run), str(latest), "--overwrite"]) == 0


def test_evaluate_takes_a_checkpoint_step(run, train_world, tmp_path, capsys):
    ev = tmp_path / "ev"
    argv = ["--task", "rtp", "--policy", f"step1={run / 'checkpoints' / '1'}", "--policy", f"final={run / 'model'}",
            "--reward-model", str(train_world / "reward"), "--data", str(train_world / "prompts.jsonl"),
            "--out", str(ev), "--no-progress", "--test-size", "8", "--set", "generation.prompt_tokens=8",
            "--set", "generation.max_new_tokens=6", "--set", "eval.batch_size=8", "--set", "eval.ppl_num_texts=8"]
    assert cli_evaluate.main(argv) == 0, capsys.readouterr().err
    m = json.loads((ev / "metrics.json").read_text())
    assert set(m["policies"]) == {"step1", "final"} and m["kl_reference"] == "step1"
