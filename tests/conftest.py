"""Test setup: CPU only, 8 fake devices, offline hub, persistent compilation cache.

Everything here must run before jax is imported anywhere.
"""
import os
import pathlib

_ROOT = pathlib.Path(__file__).resolve().parents[1]
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_ROOT / ".jax_cache"))
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

SHARED_DATA = _ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    """Path to ../shared/data (real offline reference data); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (reference data exists only on development machines)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bert_ckpts(tmp_path_factory):
    """Tiny BERT / DistilBERT / legacy-named classifier checkpoints (tests/tiny.py)."""
    from tiny import build_checkpoints

    return build_checkpoints(tmp_path_factory.mktemp("bert_ckpts"))


@pytest.fixture(scope="session")
def jit_apply():
    """One jitted BERT classifier shared by every test (configs are static arguments)."""
    import jax

    from rajax.models import bert

    return jax.jit(bert.apply, static_argnums=0)


@pytest.fixture(scope="session")
def synthetic_assets(tmp_path_factory):
    """The offline task's assets at test size, built once per session: ``(Assets, seconds)``."""
    import time

    from rajax.tasks.synthetic import build

    root = tmp_path_factory.mktemp("syn") / "cache"
    t = time.time()
    a = build.prepare(root, small=True, progress=False)
    return a, time.time() - t


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """Two tiny random GPT-2s (torch and rajax), their tokenizer (docstring of tests/tiny.py)."""
    from tiny import make_gpt2, make_gpt2_tokenizer

    root = tmp_path_factory.mktemp("tiny_eval")
    tok = make_gpt2_tokenizer(str(root / "tok"))
    tm = make_gpt2(str(root / "gpt2"), tok).eval()  # a fresh torch module is in train mode (dropout on)
    from rajax.io import hf
    from rajax.io.tokenizer import load_tokenizer

    cfg, params = hf.load(str(root / "gpt2"))
    return dict(root=root, torch_model=tm, tok=load_tokenizer(str(root / "gpt2")), cfg=cfg, params=params)


@pytest.fixture(scope="session")
def eval_run(tiny_lm):
    """bin/evaluate (in-process main) on two tiny random policies, a tiny BERT reward and a CSV."""
    import contextlib
    import io

    from tiny import TEST_ROWS, make_bert_classifier, make_gpt2, write_text_label_csv

    from rajax.cli import evaluate as cli_evaluate

    root = tiny_lm["root"]
    make_gpt2(str(root / "gpt2b"), tiny_lm["tok"], seed=1)
    make_bert_classifier(str(root / "bert"))
    write_text_label_csv(root / "train.csv", TEST_ROWS)
    write_text_label_csv(root / "test.csv", TEST_ROWS)
    out = root / "eval"
    argv = ["--task", "jigsaw", "--policy", f"a={root / 'gpt2'}", "--policy", f"b={root / 'gpt2b'}",
            "--reward-model", str(root / "bert"), "--data", str(root / "train.csv"),
            "--test-path", str(root / "test.csv"), "--test-size", "9", "--out", str(out), "--seed", "3",
            "--no-progress",
            "--set", "data.source=file", "--set", "data.label_column=label",
            "--set", "generation.prompt_tokens=4", "--set", "generation.max_new_tokens=5",
            "--set", "generation.min_length=6", "--set", "eval.batch_size=4", "--set", "eval.ppl_num_texts=5",
            "--set", "eval.ppl_max_chars=30", "--set", "eval.cvar_alphas=[0.2,0.5]"]
    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        rc = cli_evaluate.main(argv)
    assert rc == 0, se.getvalue()
    return out, so.getvalue()


@pytest.fixture(scope="session")
def train_world(tmp_path_factory):
    """Tokenizer + random GPT-2 policy + random BERT classifier + an RTP-format prompts.jsonl."""
    import json

    import jax
    import numpy as np
    from tiny import TRAIN_WORDS, bpe_tokenizer

    from rajax.io import hf, hf_bert
    from rajax.models import bert, gpt2

    root = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(TRAIN_WORDS, size=rng.integers(5, 14))) for _ in range(400)]
    tok = bpe_tokenizer(sentences)
    cfg = gpt2.GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2)
    hf.save(root / "policy", cfg, gpt2.init(cfg, jax.random.key(0)), tokenizer=tok)
    bcfg = bert.BertConfig(vocab_size=len(tok), hidden=32, layers=1, heads=2, intermediate=37,
                           max_position=128, num_labels=2)
    hf_bert.save_classifier(str(root / "reward"), bcfg, bert.init(bcfg, jax.random.key(1)),
                            ["toxic", "severe_toxic"], tokenizer=tok)
    with (root / "prompts.jsonl").open("w") as f:
        for s in sentences:
            tox = 0.9 if rng.random() < 0.25 else 0.1
            f.write(json.dumps({"prompt": {"text": s, "toxicity": tox}, "continuation": {"text": "x"}}) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory):
    """``get(kind) -> (dir, torch model)``: a tiny random Llama (GQA, llama3 rope), Qwen2 (q/k/v bias,
    tied) or GPT-J (partial rotary) that transformers built and saved, once per session (tests/tiny_lms.py)."""
    from tiny_lms import make

    root = tmp_path_factory.mktemp("tiny_lms")
    built = {}

    def get(kind):
        if kind not in built:
            built[kind] = (root / kind, make(kind, root / kind))
        return built[kind]

    return get


@pytest.fixture(scope="session")
def jit_lm():
    """Jitted ``cfg.apply`` (full pass or cached decode) shared by the model-family tests: the config is
    static, so each family and shape compiles once per session."""
    import jax

    def run(cfg, params, ids, mask, cache=None):
        out = cfg.apply(params, ids, mask, cache=cache)
        return out.logits, out.values, out.cache

    return jax.jit(run, static_argnums=0)
