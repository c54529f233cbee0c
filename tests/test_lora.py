"""A LoRA RA-RLHF run of a tiny Llama policy, and one of the world's own GPT-2, on the synthetic world (docs/models.md, "LoRA"), across the
trainer, the core and the exporters: only the adapters and the value head train; the reference pass is
the base with adapters off and holds no second copy of the weights (shown by the compiled program's
memory analysis); the PEFT adapter, loaded by ``peft`` on the transformers model, gives our logits."""
import jax
import numpy as np
import pytest
from tiny_lms import torch_logits

from rajax import config as config_lib
from rajax import trainer as T
from rajax.core import ppo, rollout
from rajax.io import hf
from rajax.models import lora

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def llama_policy(synthetic_assets, tmp_path_factory):
    """A tiny random Llama over the synthetic world's tokenizer (1024-token byte-level BPE, no BOS)."""
    from rajax.io.tokenizer import load_tokenizer

    a, _ = synthetic_assets
    tok = load_tokenizer(a.tokenizer)
    d = tmp_path_factory.mktemp("lora_world") / "llama"
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                   tie_word_embeddings=False)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


def _cfg(a, policy, **over):
    sets = {"model.policy": str(policy), "model.tokenizer": a.tokenizer, "reward.model": a.reward_model,
            "data.path": a.data, "model.lora_rank": 4, "model.lora_alpha": 8, "model.lora_targets": "[q_proj,v_proj]",
            "train.batch_size": 8, "ppo.mini_batch_size": 8, "ppo.learning_rate": 1e-2, "train.iterations": 2,
            "risk.alpha": 0.5, "risk.n": 0, "risk.M": 2, "generation.max_new_tokens": 8, "generation.min_length": 0,
            "train.sample_every": 0, "train.checkpoint_every": 0, **over}
    return config_lib.load_config("synthetic", overrides=sets)


@pytest.fixture(scope="module")
def run(synthetic_assets, llama_policy, tmp_path_factory):
    a, _ = synthetic_assets
    out = tmp_path_factory.mktemp("lora_run") / "run"
    t = T.Trainer(_cfg(a, llama_policy), out, progress=False, log=lambda *_: None)
    base = {k: np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(t.frozen)[0]}
    summary = t.run()
    return t, out, base, summary


def test_only_adapters_and_value_head_train(run, llama_policy):
    t, _, base, summary = run
    assert summary["iterations_done"] == 2 and summary["finished"]
    assert t.policy.lora == lora.LoRA(rank=4, alpha=8.0, targets=("q_proj", "v_proj"))
    assert sorted(t.state.params) == ["lora", "v_head"]
    n_trainable = lora.num_params(t.state.params)
    assert n_trainable == 2 * (32 * 4 + 4 * 32 + 32 * 4 + 4 * 16) + 32 + 1  # q [32->32], v [32->16] x 2 layers, value head
    # Adam's moments cover the trainable subset only (+ its step count).
    assert lora.num_params(t.state.opt_state) == 2 * n_trainable + 1
    # The frozen base did not move; the adapters did.
    after = {k: np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(t.frozen)[0]}
    assert after.keys() == base.keys() and all(np.array_equal(after[k], base[k]) for k in base)
    assert max(float(np.abs(np.asarray(x["b"])).max()) for layer in t.state.params["lora"].values()
               for x in layer.values()) > 1e-3
    # The reference is the base with adapters off, read from the policy's own tree.
    assert t.ref_params is None and t.reference == t.policy.replace(lora=None)
    assert np.isfinite(summary["last"]["objective/kl"]) and summary["last"]["risk/alpha_prime"] < 8  # CVaR mask on


def test_reference_pass_allocates_no_second_weight_copy(run):
    """The compiled policy + reference program of the LoRA run takes the base weights once (the adapters-off
    reference reads them from the policy's tree); a separate reference tree would add a whole copy."""
    t, *_ = run
    full = t.host_params()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), full)
    ids = jax.ShapeDtypeStruct((8, 16), np.int32)

    def args_bytes(ref_params):
        c = rollout.policy_and_reference.lower(t.policy, abstract, ref_params, ids, ids, prompt_width=8,
                                               reference=t.reference).compile()
        return c.memory_analysis().argument_size_in_bytes

    base_bytes = sum(x.nbytes for x in jax.tree.leaves(t.frozen))  # float32 base
    shared = args_bytes(None)
    copied = args_bytes({k: v for k, v in abstract.items() if k != "lora"})
    assert shared < 1.1 * base_bytes + lora.num_params(t.state.params) * 4 + 2048, (shared, base_bytes)
    assert copied - shared >= 0.95 * base_bytes, (copied, shared, base_bytes)


def test_exports_load_in_transformers_and_peft_with_our_logits(run, llama_policy):
    t, out, *_ = run
    model_dir = t.export()
    assert (model_dir / "adapter" / "adapter_config.json").is_file()
    params = t.host_params()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, t.policy.vocab_size, (3, 12))
    mask = (np.arange(12)[None] >= np.array([0, 4, 9])[:, None]).astype(np.int64)  # left-padded
    ours = np.asarray(jax.jit(t.policy.logits)(params, ids, mask))
    real = mask.astype(bool)
    base = transformers.AutoModelForCausalLM.from_pretrained(str(llama_policy), attn_implementation="eager").eval()
    with_adapter = peft.PeftModel.from_pretrained(base, str(model_dir / "adapter")).eval()
    err_peft = np.abs(torch_logits(with_adapter, ids, mask) - ours)[real].max()
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    err_merged = np.abs(torch_logits(merged, ids, mask) - ours)[real].max()
    off = np.asarray(jax.jit(t.reference.logits)(params, ids, mask))
    assert err_peft <= 1e-4 and err_merged <= 1e-4, (err_peft, err_merged)
    assert np.abs(off - ours)[real].max() > 1e-3  # the trained adapters change the logits measurably
    # The exported directory also loads back into rajax as the merged (adapter-free) policy.
    cfg2, params2 = hf.load(model_dir)
    assert cfg2.lora is None and "lora" not in params2


def test_bfloat16_base_and_refusals(synthetic_assets, llama_policy, train_world, tmp_path):
    a, _ = synthetic_assets
    t = T.Trainer(_cfg(a, llama_policy, **{"model.base_dtype": "bfloat16"}), tmp_path / "bf", progress=False,
                  log=lambda *_: None)
    assert {x.dtype.name for x in jax.tree.leaves(t.frozen)} == {"bfloat16"}
    assert {x.dtype.name for x in jax.tree.leaves(t.state.params)} == {"float32"}
    assert ppo.with_frozen(t.state.params, t.frozen)["lora"] is t.state.params["lora"]
    t.close()
    with pytest.raises(ValueError, match=r"LoRA targets \['q_proj', 'v_proj'\] are not projections of GPT-2"):
        T.Trainer(_cfg(a, train_world / "policy", **{"model.tokenizer": str(train_world / "policy")}),
                  tmp_path / "gpt2", progress=False, log=lambda *_: None)
    with pytest.raises(ValueError, match="model.base_dtype applies to LoRA base weights only"):
        _cfg(a, llama_policy, **{"model.lora_rank": 0, "model.base_dtype": "bfloat16"})


def test_a_lora_checkpoint_exports_over_its_base(run, tmp_path):
    """A LoRA checkpoint holds the adapters and the value head; ``rajax export`` / ``evaluate --policy
    RUN/checkpoints/STEP`` put them back over the run's base model."""
    from rajax.cli import export as cli_export
    from rajax.io import export
    from rajax.io.checkpoint import Checkpointer

    t, *_ = run
    run_dir = tmp_path / "run"
    ckpt = Checkpointer(run_dir / "checkpoints", log=lambda *_: None)
    t.save(ckpt, 2)
    ckpt.close()
    step = run_dir / "checkpoints" / "2"
    cfg, params = export.policy_from_checkpoint(step)
    assert cfg.lora is not None and cfg.lora == t.policy.lora and "lora" in params
    ids = np.random.default_rng(1).integers(0, t.policy.vocab_size, (2, 10))
    mask = np.ones_like(ids)
    want = np.asarray(jax.jit(t.policy.logits)(t.host_params(), ids, mask))
    np.testing.assert_allclose(np.asarray(jax.jit(cfg.logits)(params, ids, mask)), want, atol=1e-5)
    assert cli_export.main([str(step), str(tmp_path / "merged")]) == 0
    cfg2, params2 = hf.load(tmp_path / "merged")
    assert cfg2.lora is None
    np.testing.assert_allclose(np.asarray(jax.jit(cfg2.logits)(params2, ids, mask)), want, atol=1e-4)


def test_gpt2_lora_run_on_the_offline_task(synthetic_assets, tmp_path):
    """GPT-2, the paper's model, with ``model.lora_rank=4`` and no targets named (GPT-2's PEFT default,
    c_attn) on the offline task's own policy: only the adapters and the value head train, and the
    PEFT adapter on transformers' GPT2LMHeadModel and the merged export give our logits."""
    a, _ = synthetic_assets
    cfg = _cfg(a, a.policy, **{"model.lora_targets": "[]", "model.tokenizer": None})
    assert cfg.model.lora_targets == ()
    t = T.Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    try:
        base = {k: np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(t.frozen)[0]}
        summary = t.run()
        assert summary["finished"] and np.isfinite(summary["last"]["objective/kl"])
        assert t.policy.lora == lora.LoRA(rank=4, alpha=8.0, targets=("c_attn",))
        assert t.cfg.model.lora_targets == ("c_attn",)  # the config the run saves names what was used
        assert sorted(t.state.params) == ["lora", "v_head"] and t.ref_params is None
        after = {k: np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(t.frozen)[0]}
        assert all(np.array_equal(after[k], base[k]) for k in base)
        model_dir = t.export()
        params = t.host_params()
    finally:
        t.close()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, t.policy.vocab_size, (3, 12))
    mask = (np.arange(12)[None] >= np.array([0, 4, 9])[:, None]).astype(np.int64)
    ours = np.asarray(jax.jit(t.policy.logits)(params, ids, mask))
    real = mask.astype(bool)
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(str(a.policy), attn_implementation="eager").eval()
    with_adapter = peft.PeftModel.from_pretrained(hf_base, str(model_dir / "adapter")).eval()
    err_peft = np.abs(torch_logits(with_adapter, ids, mask) - ours)[real].max()
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    err_merged = np.abs(torch_logits(merged, ids, mask) - ours)[real].max()
    off = np.asarray(jax.jit(t.reference.logits)(params, ids, mask))
    print(f"GPT-2 LoRA run: PEFT {err_peft:.2e}, merged {err_merged:.2e}, adapters move logits by "
          f"{np.abs(off - ours)[real].max():.2e}")
    assert err_peft <= 1e-4 and err_merged <= 1e-4, (err_peft, err_merged)
    assert np.abs(off - ours)[real].max() > 1e-4  # the trained adapters change the logits
