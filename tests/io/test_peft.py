"""rajax.io.peft: a LoRA policy's adapters written in PEFT's format load with ``peft`` on the
transformers base model and give rajax's logits; they read back into rajax unchanged."""
import json

import jax
import numpy as np
import pytest
from tiny_lms import padded_batch, torch_logits

from rajax.io import hf
from rajax.io import peft as rpeft
from rajax.models import lora

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


@pytest.mark.parametrize("kind,targets", [("llama", ("q_proj", "v_proj", "o_proj", "up_proj")),
                                          ("gptj", ("q_proj", "v_proj", "fc_in"))])
def test_peft_loads_our_adapter_with_the_same_logits(tiny_causal_lm, jit_lm, tmp_path, kind, targets):
    d, _ = tiny_causal_lm(kind)
    base_cfg, params = hf.load(d)
    cfg = base_cfg.replace(lora=lora.LoRA(rank=4, alpha=8.0, targets=targets))
    ad = lora.init(cfg, params, jax.random.key(1))
    # As after training: B away from zero (a fresh adapter would compare equal trivially).
    params["lora"] = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(2), x.shape), ad)
    out = rpeft.save_adapter(tmp_path / "adapter", cfg, params, base_model=str(d))
    conf = json.loads((out / "adapter_config.json").read_text())
    assert (conf["r"], conf["lora_alpha"], conf["target_modules"]) == (4, 8.0, sorted(targets))
    base = transformers.AutoModelForCausalLM.from_pretrained(str(d), attn_implementation="eager").eval()
    model = peft.PeftModel.from_pretrained(base, str(out)).eval()
    ids, mask = padded_batch([10, 7, 3], 10, side="left")
    ref = torch_logits(model, ids, mask)
    ours = np.asarray(jit_lm(cfg, params, ids, mask)[0])
    real = mask.astype(bool)
    err = np.abs(ours - ref)[real].max()
    assert err <= 1e-4, err
    assert np.abs(ours - np.asarray(jit_lm(base_cfg, params, ids, mask)[0]))[real].max() > 1e-2  # adapters matter
    cfg2, params2 = rpeft.load_adapter(out, base_cfg, {k: v for k, v in params.items() if k != "lora"})
    assert cfg2 == cfg
    for a, b in zip(jax.tree.leaves(params2["lora"]), jax.tree.leaves(params["lora"])):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(params2["v_head"]["kernel"], params["v_head"]["kernel"])


def test_refusals(tmp_path, tiny_causal_lm):
    d, _ = tiny_causal_lm("llama")
    cfg, params = hf.load(d)
    with pytest.raises(ValueError, match="needs a LoRA policy"):
        rpeft.save_adapter(tmp_path / "a", cfg, params)
    with pytest.raises(ValueError, match="not a PEFT adapter directory"):
        rpeft.load_adapter(tmp_path, cfg, params)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "use_dora": True}))
    with pytest.raises(ValueError, match="no rsLoRA/DoRA"):
        rpeft.load_adapter(tmp_path, cfg, params)


@pytest.mark.parametrize("targets", [("c_attn",), ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")])
def test_gpt2_adapter_loads_in_peft_with_the_same_logits(tmp_path, jit_lm, targets):
    """GPT-2 (the paper's policy): adapters on its Conv1D projections, PEFT's names (attn.c_proj and
    mlp.c_proj are one module each), loaded by peft on transformers' GPT2LMHeadModel."""
    from tiny_lms import VOCAB

    torch.manual_seed(0)
    d = tmp_path / "gpt2"
    tm = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32,
                                                              n_layer=2, n_head=4))
    with torch.no_grad():
        for p in tm.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    tm.save_pretrained(str(d))
    base_cfg, params = hf.load(d)
    cfg = base_cfg.replace(lora=lora.LoRA(rank=4, alpha=8.0, targets=targets))
    ad = lora.init(cfg, params, jax.random.key(1))
    params["lora"] = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(2), x.shape), ad)
    out = rpeft.save_adapter(tmp_path / "adapter", cfg, params, base_model=str(d))
    conf = json.loads((out / "adapter_config.json").read_text())
    assert conf["fan_in_fan_out"] and conf["target_modules"] == sorted(targets)
    base = transformers.AutoModelForCausalLM.from_pretrained(str(d), attn_implementation="eager").eval()
    model = peft.PeftModel.from_pretrained(base, str(out)).eval()
    adapted = sorted({n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A" in n})
    assert len(adapted) == 2 * len(targets), adapted  # two layers; attn.c_proj did not also take mlp.c_proj
    ids, mask = padded_batch([10, 7, 3], 10, side="left")
    ref = torch_logits(model, ids, mask)
    ours = np.asarray(jit_lm(cfg, params, ids, mask)[0])
    real = mask.astype(bool)
    err = np.abs(ours - ref)[real].max()
    assert err <= 1e-4, err
    print(f"GPT-2 {targets}: max |Δ logits| PEFT vs rajax {err:.2e}")
    assert np.abs(ours - np.asarray(jit_lm(base_cfg, params, ids, mask)[0]))[real].max() > 1e-2
    # PEFT's merge (fan_in_fan_out: the Conv1D layout) gives our merged export.
    merged = model.merge_and_unload()
    err_m = np.abs(torch_logits(merged, ids, mask) - ours)[real].max()
    assert err_m <= 1e-4, err_m
    mcfg, mparams = lora.merge(cfg, params)
    np.testing.assert_allclose(np.asarray(jit_lm(mcfg, mparams, ids, mask)[0])[real], ours[real], atol=1e-4)
    cfg2, params2 = rpeft.load_adapter(out, base_cfg, {k: v for k, v in params.items() if k != "lora"})
    assert cfg2 == cfg
    for a, b in zip(jax.tree.leaves(params2["lora"]), jax.tree.leaves(params["lora"])):
        np.testing.assert_array_equal(a, b)
