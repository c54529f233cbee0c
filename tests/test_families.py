"""The trainer with a policy of another family (docs/models.md): a GPT-J policy trained against a GPT-2
reference that shares its tokenizer (the paper's GPT-J run used the GPT-2 IMDB SFT model), with the
GPT-J scripts' options (reward on the response alone, responses sliced as generate(...)[-N:], quirk
#20); the reference's tokenizer is checked at load; the GPT-J preset carries the paper's values."""
import jax
import numpy as np
import pytest
from tiny import TRAIN_TINY

from rajax import config as config_lib
from rajax import trainer as T
from rajax.core import rollout
from rajax.io import hf
from rajax.io.tokenizer import load_tokenizer
from rajax.models import gpt2, gptj


def _cfg(world, policy, ref=None, **over):
    sets = {"model.policy": str(policy), "reward.model": str(world / "reward"), "data.path": str(world / "prompts.jsonl"),
            "risk.alpha": 0.2, "risk.n": 0, "risk.rho": 0.5, "risk.M": 2, "train.iterations": 2, **over}
    if ref is not None:
        sets["model.ref_policy"] = str(ref)
    overrides = [f"{k}={v}" for k, v in sets.items()] + list(TRAIN_TINY)
    return config_lib.load_config("rtp", overrides=overrides)


@pytest.fixture(scope="module")
def gptj_policy(train_world, tmp_path_factory):
    """A tiny random GPT-J over the world's GPT-2-style tokenizer, with 4 padding rows beyond it (as
    GPT-J 6B's 50,400 rows over GPT-2's 50,257 tokens)."""
    tok = load_tokenizer(str(train_world / "policy"))
    cfg = gptj.GPTJConfig(vocab_size=len(tok) + 4, n_positions=64, n_embd=32, n_layer=2, n_head=4, rotary_dim=4)
    params = gptj.init(cfg, jax.random.key(3))
    # A trained GPT-J gives its padding rows no mass; a random head would sample them.
    params["lm_head"]["bias"] = params["lm_head"]["bias"].at[len(tok):].set(-1e4)
    d = tmp_path_factory.mktemp("families") / "gptj"
    hf.save(d, cfg, params, tokenizer=tok)
    return d


def test_gptj_policy_with_a_gpt2_reference(train_world, gptj_policy, tmp_path):
    cfg = _cfg(train_world, gptj_policy, train_world / "policy",
               **{"reward.response_only": "true", "generation.gptj_slice": "true"})
    t = T.Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    assert isinstance(t.policy, gptj.GPTJConfig) and isinstance(t.reference, gpt2.GPT2Config)
    assert t.policy.vocab_size == t.reference.vocab_size + 4
    metrics, (prompts, responses, scores) = t.iteration(0)
    # gptj_slice: every response is the last N tokens of prompt + response; the reward read it alone.
    assert metrics["tokens/responses_len_mean"] == cfg.generation.max_new_tokens
    np.testing.assert_allclose(scores, t.reward.inner.score_texts(responses), rtol=1e-6)
    assert not np.allclose(scores, t.reward.inner(prompts, responses))
    assert np.isfinite(metrics["objective/kl"]) and metrics["objective/kl"] != 0.0
    # The reference pass ran the GPT-2 handle on the policy's ids: compare with GPT-2 itself.
    ids = np.random.default_rng(0).integers(0, t.reference.vocab_size, (8, 14)).astype(np.int32)
    mask = np.ones_like(ids)
    full = t.full_params()
    _, _, ref_logp = rollout.policy_and_reference(t.policy, full, t.ref_params, ids, mask, prompt_width=8,
                                                  reference=t.reference)
    want = t.reference.forward(t.ref_params, ids, mask, 8)[0]
    np.testing.assert_allclose(np.asarray(ref_logp), np.asarray(want), atol=1e-6)
    # A policy that samples a row the reference does not have stops with a line that says so.
    bias = t.state.params["lm_head"]["bias"]
    t.state = t.state._replace(params={**t.state.params, "lm_head": {**t.state.params["lm_head"],
                                                                     "bias": bias.at[-4:].set(1e4)}})
    with pytest.raises(T.NonFinite, match=r"sampled token id 30\d at iteration 1, beyond the 30\d embedding rows"):
        t.iteration(1)
    t.close()


def test_a_reference_with_other_token_ids_is_refused(train_world, gptj_policy, tmp_path):
    """A reference whose tokenizer maps the probe texts to other ids: one line at load time."""
    from tiny import bpe_tokenizer

    other = bpe_tokenizer(["completely different words here", "zebra quartz jumps"] * 20)
    d = tmp_path / "ref"
    cfg = gpt2.GPT2Config(vocab_size=len(load_tokenizer(str(train_world / "policy"))), n_positions=64, n_embd=16,
                          n_layer=1, n_head=2)
    hf.save(d, cfg, gpt2.init(cfg, jax.random.key(0)), tokenizer=other)
    with pytest.raises(ValueError, match=r"--ref-policy .*: its tokenizer encodes .* the KL needs the same token ids"):
        T.Trainer(_cfg(train_world, gptj_policy, d), tmp_path / "run", progress=False, log=lambda *_: None)


def test_gptj_preset_has_the_papers_values():
    c = config_lib.load_config("imdb_gptj")
    m = c.model
    assert (m.policy, m.lora_rank, m.lora_alpha, m.lora_targets, m.base_dtype) == \
        ("EleutherAI/gpt-j-6b", 16, 16.0, ("q_proj", "v_proj"), "bfloat16")
    assert (c.ppo.learning_rate, c.train.batch_size, c.ppo.mini_batch_size) == (2.94e-5, 8, 8)
    assert (c.risk.alpha, c.risk.n, c.risk.rho, c.risk.M) == (0.2, 300, 0.95, 3601)
    assert m.ref_policy and c.reward.response_only and not c.generation.gptj_slice
    assert (c.generation.prompt_tokens, c.generation.max_new_tokens) == (64, 48)


def test_sharded_parameters_through_the_trainer(train_world, gptj_policy, tmp_path):
    """parallel.shard_params=true: parameters and Adam state start and stay FSDP-sharded over the 8 devices
    through an iteration (tests/core/test_parallel.py shows sharded == replicated numerically)."""
    t = T.Trainer(_cfg(train_world, gptj_policy, **{"parallel.shard_params": "true"}), tmp_path / "run",
                  progress=False, log=lambda *_: None)
    specs = lambda: (t.state.params["wte"]["embedding"].sharding.spec,  # noqa: E731
                     t.state.opt_state[0].mu["h"][0]["mlp"]["fc_in"]["kernel"].sharding.spec)
    assert specs() == (jax.sharding.PartitionSpec("data", None), jax.sharding.PartitionSpec(None, "data"))
    metrics, _ = t.iteration(0)
    assert np.isfinite(metrics["ppo/loss/total"]) and specs()[0] == jax.sharding.PartitionSpec("data", None)
    t.close()
