"""rajax.io.hf: load safetensors / sharded / .bin / hub-style keys, save for transformers, the value
head (docs/paper.md §2.3), one-line errors, a hub id from the offline cache."""
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from rajax.io import hf, hf_gpt2
from rajax.models import gpt2
from rajax.models.base import init_value_head

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=64)
OTHER = dict(n_layer=1, n_embd=24, n_head=3, vocab_size=50, n_positions=32, layer_norm_epsilon=1e-4,
             resid_pdrop=0.2)


def _torch_gpt2(seed, **kw):
    torch.manual_seed(seed)
    v = kw["vocab_size"] - 1
    m = transformers.GPT2LMHeadModel(transformers.GPT2Config(bos_token_id=v, eos_token_id=v, **kw)).eval()
    with torch.no_grad():  # make LN params and biases non-trivial
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Tiny torch GPT-2s: save_pretrained (safetensors), a legacy pytorch_model.bin (torch.save of
    the state dict, as older transformers wrote it; v5 always writes safetensors), a second shape."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name, seed, kw, safe in (("st", 0, TINY, True), ("bin", 1, TINY, False), ("other", 2, OTHER, True)):
        m = _torch_gpt2(seed, **kw)
        if safe:
            m.save_pretrained(root / name)
        else:
            m.config.save_pretrained(root / name)
            torch.save(m.state_dict(), root / name / "pytorch_model.bin")
        out[name] = (root / name, m)
    assert (root / "bin" / "pytorch_model.bin").is_file()
    assert not (root / "bin" / "model.safetensors").exists()
    return out


def _sd(m):
    return {k: v.detach().numpy() for k, v in m.state_dict().items()}


def _assert_params_equal_torch(params, m, n_layer):
    sd = _sd(m)
    np.testing.assert_array_equal(params["wte"]["embedding"], sd["transformer.wte.weight"])
    np.testing.assert_array_equal(params["wpe"]["embedding"], sd["transformer.wpe.weight"])
    np.testing.assert_array_equal(params["ln_f"]["scale"], sd["transformer.ln_f.weight"])
    for i in range(n_layer):
        blk = params["h"][i]
        np.testing.assert_array_equal(blk["attn"]["c_attn"]["kernel"], sd[f"transformer.h.{i}.attn.c_attn.weight"])
        np.testing.assert_array_equal(blk["mlp"]["c_proj"]["bias"], sd[f"transformer.h.{i}.mlp.c_proj.bias"])
        np.testing.assert_array_equal(blk["ln_2"]["bias"], sd[f"transformer.h.{i}.ln_2.bias"])


def _torch_logits(m, ids):
    with torch.no_grad():
        return m(input_ids=torch.tensor(np.asarray(ids))).logits.numpy()


@pytest.mark.parametrize("name", ["st", "bin"])
def test_load_equals_torch_weights(ckpts, name):
    d, m = ckpts[name]
    cfg, params = hf.load(d)
    assert cfg == gpt2.GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    _assert_params_equal_torch(params, m, 2)
    # Same pytree structure and dtypes as gpt2.init, so optimisers/checkpoints see one layout.
    chex.assert_trees_all_equal_shapes_and_dtypes(params, jax.eval_shape(lambda k: gpt2.init(cfg, k), jax.random.key(0)))


def test_second_shape_logits_match_torch(ckpts):
    d, m = ckpts["other"]
    cfg, params = hf.load(d, dtype="bfloat16")
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.n_positions) == (1, 24, 3, 50, 32)
    assert cfg.layer_norm_epsilon == 1e-4 and cfg.dropout == 0.2 and cfg.dtype == "bfloat16"
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    ids = np.random.default_rng(0).integers(0, 50, (2, 10))
    ours = jax.jit(gpt2.apply, static_argnums=0)(cfg.replace(dtype="float32"), params, jnp.asarray(ids)).logits
    assert np.abs(np.asarray(ours) - _torch_logits(m, ids)).max() <= 1e-4


def test_hub_style_keys_sharded_and_buffers(ckpts, tmp_path):
    """The hub's `gpt2` stores keys without `transformer.` plus `h.L.attn.bias` buffers; large models
    are sharded with an index. Both load to the same params; a tied lm_head.weight is accepted."""
    d, m = ckpts["st"]
    sd = _sd(m)
    bare = {k.removeprefix("transformer."): v for k, v in sd.items() if k != "lm_head.weight"}
    for i in range(2):
        bare[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
        bare[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    keys = sorted(bare)
    half = len(keys) // 2
    out = tmp_path / "sharded"
    out.mkdir()
    (out / "config.json").write_text((d / "config.json").read_text())
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for fname, ks in shards.items():
        save_file({k: np.ascontiguousarray(bare[k]) for k in ks}, out / fname, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    _, params = hf.load(out)
    _assert_params_equal_torch(params, m, 2)
    # Tied lm_head (== wte) is fine; from_state_dict is the in-memory entry point.
    p2 = hf.from_state_dict(gpt2.GPT2Config(**{k: TINY[k] for k in TINY}), sd)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, {k: p2[k] for k in ("h", "wte", "wpe", "ln_f")}),
                                jax.tree.map(np.asarray, {k: params[k] for k in ("h", "wte", "wpe", "ln_f")}))


def test_value_head_fresh_init_and_trl_keys(ckpts):
    d, m = ckpts["st"]
    cfg, p0 = hf.load(d)
    _, p0b = hf.load(d)
    _, p1 = hf.load(d, value_head_seed=1)
    # Fresh init = init_value_head(seed), U(-1/sqrt(E), 1/sqrt(E)); seeded, so reproducible.
    chex.assert_trees_all_equal(p0["v_head"], init_value_head(cfg.hidden_size, jax.random.key(0)))
    chex.assert_trees_all_equal(p0["v_head"], p0b["v_head"])
    assert not np.allclose(p0["v_head"]["kernel"], p1["v_head"]["kernel"])
    assert np.abs(np.asarray(p0["v_head"]["kernel"])).max() <= 32 ** -0.5
    # TRL checkpoints: v_head.summary.weight [1, E] (nn.Linear) in the same state dict -> transposed.
    sd = _sd(m)
    w = np.arange(32, dtype=np.float32)[None] / 100
    sd["v_head.summary.weight"], sd["v_head.summary.bias"] = w, np.array([0.5], np.float32)
    p = hf.from_state_dict(cfg, sd)
    np.testing.assert_array_equal(p["v_head"]["kernel"], w.T)
    np.testing.assert_array_equal(p["v_head"]["bias"], [0.5])


def _random_params(cfg, seed):
    """Random params in gpt2.init's layout, every tensor non-trivial (built in NumPy: no compiles)."""
    rng = np.random.default_rng(seed)
    sd = {k: rng.normal(0, 0.3, shape).astype(np.float32) for k, shape in
          (("transformer." + hk, hf_gpt2._expected_shapes(cfg)[path]) for hk, path in hf_gpt2._key_map(cfg).items())}
    sd["v_head.summary.weight"] = rng.normal(0, 0.3, (1, cfg.n_embd)).astype(np.float32)
    sd["v_head.summary.bias"] = rng.normal(0, 0.3, (1,)).astype(np.float32)
    return hf.from_state_dict(cfg, sd)


def test_save_loads_in_transformers_and_round_trips(tmp_path):
    cfg = gpt2.GPT2Config(**TINY, dropout=0.05)
    params = _random_params(cfg, 7)
    chex.assert_trees_all_equal_shapes_and_dtypes(params, jax.eval_shape(lambda k: gpt2.init(cfg, k),
                                                                          jax.random.key(0)))
    out = hf.save(tmp_path / "ckpt", cfg, params)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                     "value_head.safetensors"]
    stored = load_file(out / "model.safetensors")
    # tied head not stored; the value head rides along under TRL's names (transformers ignores them)
    assert "lm_head.weight" not in stored and all(k.startswith(("transformer.", "v_head.summary.")) for k in stored)
    assert stored["v_head.summary.weight"].shape == (1, cfg.n_embd)
    tm = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    assert tm.config.n_layer == 2 and tm.config.resid_pdrop == 0.05
    ids = np.random.default_rng(1).integers(0, 97, (3, 16))
    ours = jax.jit(gpt2.apply, static_argnums=0)(cfg, params, jnp.asarray(ids)).logits
    assert np.abs(np.asarray(ours) - _torch_logits(tm, ids)).max() <= 1e-4
    # ... and back: identical params, value head included.
    cfg2, back = hf.load(out, value_head_seed=123)
    assert cfg2 == cfg
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, back), jax.tree.map(np.asarray, params))
    # Saving again over the same path replaces it cleanly (no temp dirs left behind).
    hf.save(out, cfg, back)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_save_with_tokenizer(shared_data, tmp_path):
    from rajax.io.tokenizer import load_tokenizer

    tok = load_tokenizer(shared_data / "gpt2-tokenizer")
    cfg = gpt2.GPT2Config(**TINY)
    out = hf.save(tmp_path / "ckpt", cfg, _random_params(cfg, 0), tokenizer=tok)
    tok2 = transformers.AutoTokenizer.from_pretrained(out)
    assert tok2("Hello world").input_ids == [15496, 995]


def _one_line(e):
    s = str(e.value)
    assert "\n" not in s and s.strip() == s
    return s


def test_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        hf.load(tmp_path / "nope", what="--policy")
    assert _one_line(e).startswith("--policy ") and "no such directory" in str(e.value)
    # A hub id with HF_HUB_OFFLINE=1 (conftest) and nothing cached.
    with pytest.raises(ValueError) as e:
        hf.load("someone/not-a-cached-model-xyz")
    assert "hub is unreachable (offline); pass a local checkpoint directory" in _one_line(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json") as e:
        hf.load(tmp_path / "empty")
    _one_line(e)
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    with pytest.raises(ValueError, match="no model.safetensors") as e:
        hf.load(tmp_path / "empty")
    _one_line(e)
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(ValueError, match="supported: gpt2, llama, qwen2, gptj") as e:
        hf.load(tmp_path / "empty", what="--ref")
    assert _one_line(e).startswith("--ref '")


def test_hub_id_from_offline_cache(ckpts, tmp_path, monkeypatch):
    """A hub id resolves through huggingface_hub's cache when HF_HUB_OFFLINE=1 (as on the GPU box
    with a pre-populated cache): a hand-built cache entry models--someone--tiny-gpt2."""
    import huggingface_hub.constants

    d, m = ckpts["st"]
    repo = tmp_path / "models--someone--tiny-gpt2"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for f in ("config.json", "model.safetensors"):
        (snap / f).write_bytes((d / f).read_bytes())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    cfg, params = hf.load("someone/tiny-gpt2")
    assert cfg.n_layer == 2
    _assert_params_equal_torch(params, m, 2)


def test_value_head_provenance(tmp_path):
    """model.value_head=auto: a head marked initial (an SFT output) or absent is drawn from the run's
    seed; a trained one (after PPO), or an unmarked one (TRL, older exports), is loaded."""
    cfg = gpt2.GPT2Config(**TINY)
    params = _random_params(cfg, 3)
    sft = hf.save(tmp_path / "sft", cfg, params, value_head="initial")
    ppo = hf.save(tmp_path / "ppo", cfg, params)  # default: trained
    assert hf.stored_value_head(sft) == "initial" and hf.stored_value_head(ppo) == "trained"
    assert hf.value_head_choice(sft) == "seed" and hf.value_head_choice(ppo) == "checkpoint"
    assert hf.value_head_choice(ppo, "seed") == "seed" and hf.value_head_choice(sft, "checkpoint") == "checkpoint"
    heads = {s: hf.load(sft, value_head_seed=s, value_head="auto")[1]["v_head"] for s in (1, 2)}
    assert not np.allclose(heads[1]["kernel"], heads[2]["kernel"])  # one head per PPO seed
    chex.assert_trees_all_equal(heads[1], init_value_head(cfg.n_embd, jax.random.key(1)))
    chex.assert_trees_all_equal(hf.load(ppo, value_head_seed=1, value_head="auto")[1]["v_head"], params["v_head"])
    # A plain transformers directory has no head: drawn; "checkpoint" then refuses in one line.
    plain = tmp_path / "plain"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=97,
                                                         n_positions=32)).save_pretrained(plain)
    assert hf.stored_value_head(plain) is None and hf.value_head_choice(plain) == "seed"
    with pytest.raises(ValueError, match=r"has no value head to load \(model.value_head=checkpoint\)"):
        hf.value_head_choice(plain, "checkpoint", what="--policy")
    # A TRL-style checkpoint: v_head keys inside model.safetensors, no rajax record -> loaded.
    trl = tmp_path / "trl"
    trl.mkdir()
    sd = _sd(transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=97,
                                                                  n_positions=32)))
    sd["v_head.summary.weight"], sd["v_head.summary.bias"] = np.ones((1, 16), np.float32), np.zeros(1, np.float32)
    save_file(sd, trl / "model.safetensors", metadata={"format": "pt"})
    (trl / "config.json").write_text((plain / "config.json").read_text())
    assert hf.stored_value_head(trl) == "unmarked" and hf.value_head_choice(trl) == "checkpoint"
    with pytest.raises(ValueError, match="value_head='bogus'"):
        hf.value_head_choice(trl, "bogus")


class _Scripted:
    """A logits processor that makes step i's only possible token ``script[i]``: the export's model
    then emits a known sequence, and what is tested is where ``generate()`` stops in it."""

    def __init__(self, prompt_len, script):
        self.prompt_len, self.script = prompt_len, script

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_len
        out = torch.full_like(scores, -float("inf"))
        out[:, self.script[min(step, len(self.script) - 1)]] = 0.0
        return out


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generate_on_an_export_stops_at_the_tokenizers_eos(family, tiny_causal_lm, tmp_path):
    """The synthetic world's tokenizer has EOS 0 (``<|endoftext|>``, its first token): GPT-2's export
    named vocab_size − 1 (a word piece, so ``generate()`` stopped inside a text), and Llama's turned
    the source's 0/0/0 into transformers' defaults 2/1/None (so it never stopped)."""
    from tiny import SENTENCES, bpe_tokenizer
    from tiny_lms import make

    from rajax.io.tokenizer import load_tokenizer

    tok_dir = tmp_path / "tok"
    bpe_tokenizer(SENTENCES).save_pretrained(str(tok_dir))
    tok = load_tokenizer(str(tok_dir))
    eos, V = tok.eos_token_id, len(tok)
    assert eos == 0 and V > 10
    if family == "gpt2":
        cfg = gpt2.GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4)
        params, source = _random_params(cfg, 3), None
    else:
        source = tmp_path / "llama"
        make("llama", source, vocab_size=V, bos_token_id=0, eos_token_id=0, pad_token_id=0)
        cfg, params = hf.load(source)
    out = hf.save(tmp_path / "export", cfg, params, tokenizer=tok, source=source)
    tm = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    prompt = torch.tensor([tok("the cat sat on the mat").input_ids])
    P = prompt.shape[1]
    # The tokens a policy might emit: V − 1 (what GPT-2's export called EOS) before the real EOS.
    script = [5, V - 1, 7, eos, 9, 9, 9, 9]
    with torch.no_grad():
        got = tm.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=len(script),
                          do_sample=False, logits_processor=[_Scripted(P, script)])
    assert got[0, P:].tolist() == [5, V - 1, 7, eos]
    assert tm.generation_config.eos_token_id == eos
    for f in ("config.json", "generation_config.json"):
        raw = json.loads((out / f).read_text())
        assert (raw["eos_token_id"], raw["bos_token_id"], raw["pad_token_id"]) == (eos, eos, eos), f


def test_special_ids_come_from_the_source_without_a_tokenizer(tiny_causal_lm, tmp_path):
    """No tokenizer given: the source checkpoint's ids, written as the source has them (nulls included,
    so transformers does not substitute its class defaults)."""
    from tiny_lms import make

    source = tmp_path / "llama"
    make("llama", source, bos_token_id=3, eos_token_id=4, pad_token_id=None)
    cfg, params = hf.load(source)
    out = hf.save(tmp_path / "export", cfg, params, source=source)
    tm = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert (tm.config.bos_token_id, tm.config.eos_token_id, tm.config.pad_token_id) == (3, 4, None)
    assert (tm.generation_config.bos_token_id, tm.generation_config.eos_token_id) == (3, 4)
    # Neither: GPT-2's own vocabulary keeps 50256; any other vocabulary names no EOS rather than a wrong one.
    assert json.loads((hf.save(tmp_path / "g", gpt2.GPT2Config(**TINY), _random_params(gpt2.GPT2Config(**TINY), 0))
                       / "config.json").read_text())["eos_token_id"] is None
