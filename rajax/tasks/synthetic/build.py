"""Building the synthetic task's assets once and caching them: a byte-level BPE tokenizer, a tiny GPT-2
pretrained on the world's texts (the task's "SFT" starting policy) and a tiny BERT reward classifier
(one logit, label ``toxic``; reward = -logit, like toxic-bert), under ``$RAJAX_CACHE/synthetic-v1``.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np
import optax

from rajax import sft
from rajax.io import hf, hf_bert
from rajax.models import bert, gpt2
from rajax.rewards import RewardModel
from rajax.tasks.synthetic.world import EOS, generate, ground_truth_score

# Bump whenever the generator, the sizes or the model recipes change: a cache with another stamp is rebuilt.
VERSION = "synthetic-v1.1"  # 1.1: 4,096 more RL prompts (drawn last), policy config dropout 0.1, head marked initial

# ``full`` is what ``bin/train --task synthetic`` uses; ``small`` is for tests (seconds, not a minute).
SIZES = {
    # n_train_extra (v1.1, docs/study.md): RL prompts drawn after every other split, so that a run of
    # the paper's proportions (batch 64, 96 iterations) is one pass while the first 2,048 prompts, the
    # test split, the tokenizer, the policy and the classifier stay exactly those of v1.0.
    "full": dict(n_train=2048, n_test=256, n_lm=3072, n_clf=3072, lm_epochs=2, clf_epochs=3, n_train_extra=4096),
    "small": dict(n_train=256, n_test=64, n_lm=256, n_clf=1536, lm_epochs=1, clf_epochs=3, n_train_extra=0),
}
# dropout 0.1 is GPT-2's (and the paper's SFT models'): it is only in config.json, since pretraining
# runs without dropout and PPO passes are deterministic (docs/paper.md #11); it matters only with
# generation.rollout_dropout=true (quirk #10), which the world's v1.0 policy could not express.
POLICY = dict(n_positions=128, n_embd=64, n_layer=2, n_head=2, dropout=0.1)
CLASSIFIER = dict(hidden=64, layers=2, heads=2, intermediate=128, max_position=128)
TOKENIZER_VOCAB = 1024  # byte-level BPE: 256 bytes + merges; with ~350 words nearly every word is one token
LM_MAX_TOKENS = 48      # documents are <= ~50 tokens; truncating the few longer ones keeps steps cheap
LM_LR, LM_MICRO_BATCH = 3e-3, 32
CLF_LR, CLF_BATCH = 2e-3, 64
CLF_WIDTH = 64          # classifier inputs while building: one padded width -> one compile per function


class Assets(NamedTuple):
    """Paths of the prepared task. ``tokenizer`` is the policy's (no BOS, pad = EOS); ``reward_model``
    holds its own copy that prepends ``<|endoftext|>`` as a [CLS] token."""

    root: str
    tokenizer: str
    policy: str
    reward_model: str
    data: str


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"synthetic: {msg}", file=sys.stderr, flush=True)


def _train_tokenizer(texts: Sequence[str]):
    """A byte-level BPE over ``texts`` as a transformers fast tokenizer (EOS = pad = unk = <|endoftext|>),
    GPT-2 style: no BOS is added and no prefix space."""
    from tokenizers import ByteLevelBPETokenizer, Tokenizer
    from transformers import PreTrainedTokenizerFast  # heavy: imported only when building

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(texts), vocab_size=TOKENIZER_VOCAB, min_frequency=2,
                            special_tokens=[EOS], show_progress=False)
    core = Tokenizer.from_str(bpe._tokenizer.to_str())
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, bos_token=EOS, unk_token=EOS,
                                   pad_token=EOS, model_max_length=POLICY["n_positions"])


def _with_cls_prefix(tokenizer):
    """The same vocabulary/merges with the [CLS]-like ``<|endoftext|>`` prefix (for the classifier)."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast  # heavy: imported only when building

    core = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    eos = core.token_to_id(EOS)
    core.post_processor = processors.TemplateProcessing(
        single=f"{EOS} $A", pair=f"{EOS} $A $B", special_tokens=[(EOS, eos)])
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, bos_token=EOS, unk_token=EOS,
                                   pad_token=EOS, model_max_length=CLASSIFIER["max_position"])


def _pretrain_policy(tokenizer, texts: Sequence[str], *, epochs: int, seed: int, progress: bool):
    """The tiny GPT-2 pretrained on the corpus with ``rajax.sft.train_lm`` (the task's "SFT" model)."""
    ids, attn, labels = sft.tokenize_for_sft(tokenizer, texts, LM_MAX_TOKENS)
    cfg = gpt2.GPT2Config(vocab_size=len(tokenizer), **POLICY)
    params = gpt2.init(cfg, jax.random.key(seed))
    losses: list[float] = []
    params = sft.train_lm(cfg, params, ids, attn, label_mask=labels, epochs=epochs, lr=LM_LR,
                          micro_batch=LM_MICRO_BATCH, grad_accum=1, seed=seed, dropout=False,
                          progress=progress, log_fn=lambda step, m: losses.append(m["loss"]))
    return cfg, params, losses


def encode_for_classifier(tokenizer, texts: Sequence[str], width: int | None = None):
    """Right-padded ``(ids [n, W], mask [n, W])`` int32 with the tokenizer's special tokens (the [CLS]
    prefix), truncated at the classifier's ``max_position``; W = ``width`` or the longest, rounded to 16."""
    enc = tokenizer(list(texts), truncation=True, max_length=CLASSIFIER["max_position"])["input_ids"]
    longest = max(len(e) for e in enc)
    w = width or min(CLASSIFIER["max_position"], -(-longest // 16) * 16)
    ids = np.full((len(enc), w), tokenizer.pad_token_id, np.int32)
    mask = np.zeros((len(enc), w), np.int32)
    for i, e in enumerate(enc):
        e = e[:w]
        ids[i, :len(e)] = e
        mask[i, :len(e)] = 1
    return ids, mask


def toxic_target(texts: Sequence[str]) -> np.ndarray:
    """The classifier's soft label P(toxic) = sigmoid(-ground_truth_score): its BCE optimum is the logit
    ``-ground_truth_score``, so the reward ``-logit`` learns the ground truth's scale (like toxic-bert's)."""
    return (1.0 / (1.0 + np.exp(ground_truth_score(texts).astype(np.float64)))).astype(np.float32)


def _train_classifier(tokenizer, texts: Sequence[str], *, epochs: int, seed: int, progress: bool):
    """A tiny BERT (one logit, label ``toxic``) fit with sigmoid BCE to :func:`toxic_target`."""
    ids, mask = encode_for_classifier(tokenizer, texts, width=CLF_WIDTH)
    y = toxic_target(texts)
    cfg = bert.BertConfig(arch="bert", vocab_size=len(tokenizer), type_vocab_size=2, num_labels=1,
                          **CLASSIFIER)
    params = bert.init(cfg, jax.random.key(seed + 1))
    n = len(ids)
    steps = epochs * (n // CLF_BATCH)
    tx = optax.adamw(optax.cosine_decay_schedule(CLF_LR, max(steps, 1)), weight_decay=0.01)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, ids, mask, y):
        def loss_fn(p):
            logit = bert.apply(cfg, p, ids, mask)[:, 0]
            return optax.sigmoid_binary_cross_entropy(logit, y).mean()

        loss, g = jax.value_and_grad(loss_fn)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, loss

    rng = np.random.default_rng(seed + 1)
    losses = []
    for _ in range(epochs):
        perm = rng.permutation(n)
        for s in range(0, n - CLF_BATCH + 1, CLF_BATCH):  # drop the last partial batch: one compile
            b = perm[s:s + CLF_BATCH]
            params, opt, loss = step(params, opt, ids[b], mask[b], y[b])
            losses.append(float(loss))
    _log(progress, f"classifier: {steps} steps, loss {losses[0]:.3f} -> {np.mean(losses[-10:]):.3f}")
    return cfg, jax.device_get(params), losses


# ------------------------------------------------------------------------------------------------
# Building and caching the assets
# ------------------------------------------------------------------------------------------------
STAMP = "VERSION.json"


def default_cache_dir(small: bool = False) -> pathlib.Path:
    """``$RAJAX_CACHE/synthetic-v1`` (default ``~/.cache/rajax/synthetic-v1``; ``-small`` for tests)."""
    base = os.environ.get("RAJAX_CACHE") or os.path.join("~", ".cache", "rajax")
    return pathlib.Path(base).expanduser() / ("synthetic-v1-small" if small else "synthetic-v1")


def _stamp(seed: int, size: str) -> dict:
    return {"version": VERSION, "seed": int(seed), "size": size, "sizes": SIZES[size], "policy": POLICY,
            "classifier": CLASSIFIER, "tokenizer_vocab": TOKENIZER_VOCAB}


def _assets(root: pathlib.Path) -> Assets:
    return Assets(str(root), str(root / "tokenizer"), str(root / "policy"), str(root / "reward"),
                  str(root / "data"))


def _is_built(root: pathlib.Path, stamp: dict) -> bool:
    try:
        return json.loads((root / STAMP).read_text()).get("build") == stamp
    except (OSError, ValueError):
        return False


def _write_jsonl(path: pathlib.Path, rows: Sequence[dict]) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def read_jsonl(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _build(out: pathlib.Path, seed: int, size: str, progress: bool) -> dict:
    """Write every asset into ``out`` (a fresh directory); returns the build report."""
    t0 = time.time()
    sz = SIZES[size]
    c = generate(seed, n_train=sz["n_train"], n_test=sz["n_test"], n_lm=sz["n_lm"], n_clf=sz["n_clf"],
                 n_train_extra=sz["n_train_extra"])
    data = out / "data"
    data.mkdir(parents=True)
    _write_jsonl(data / "train.jsonl", [{"text": t, "label": int(l)} for t, l in zip(c.train, c.train_labels)])
    _write_jsonl(data / "test.jsonl", [{"text": t, "label": int(l)} for t, l in zip(c.test, c.test_labels)])
    _write_jsonl(data / "sft.jsonl", [{"text": t} for t in c.lm])
    report: dict[str, Any] = {"counts": {"train": len(c.train), "test": len(c.test), "sft": len(c.lm),
                                         "classifier": len(c.clf)}}

    t = time.time()
    tok = _train_tokenizer(c.lm + c.train[:sz["n_train"]] + c.clf)  # v1.0's texts: the same tokenizer
    tok.save_pretrained(str(out / "tokenizer"))
    report["tokenizer"] = {"vocab": len(tok), "eos_id": tok.eos_token_id, "seconds": round(time.time() - t, 2)}
    _log(progress, f"tokenizer: byte-level BPE, {len(tok)} tokens ({time.time() - t:.1f}s)")

    t = time.time()
    pcfg, pparams, lm_losses = _pretrain_policy(tok, c.lm, epochs=sz["lm_epochs"], seed=seed, progress=progress)
    hf.save(out / "policy", pcfg, pparams, tokenizer=tok, value_head="initial")  # SFT: head never trained
    report["policy"] = {"steps": len(lm_losses), "loss_first": lm_losses[0],
                        "loss_last": float(np.mean(lm_losses[-10:])), "seconds": round(time.time() - t, 2)}
    _log(progress, f"policy: GPT-2 {pcfg.n_layer}x{pcfg.n_embd} pretrained, {len(lm_losses)} steps, "
                   f"loss {lm_losses[0]:.2f} -> {report['policy']['loss_last']:.2f} ({time.time() - t:.1f}s)")

    t = time.time()
    ctok = _with_cls_prefix(tok)
    # A few texts end in a literal <|endoftext|>, as EOS-terminated responses do (quirk #13).
    rng = np.random.default_rng(seed + 2)
    clf_texts = [x + EOS if rng.random() < 0.1 else x for x in c.clf]
    ccfg, cparams, clf_losses = _train_classifier(ctok, clf_texts, epochs=sz["clf_epochs"], seed=seed,
                                                  progress=progress)
    hf_bert.save_classifier(str(out / "reward"), ccfg, cparams, ["toxic"], tokenizer=ctok)
    # The report scores through the same inference path as training rewards.
    scorer = RewardModel(ccfg, cparams, ["toxic"], ctok, index=0)
    logit = scorer.logits(c.test)[:, 0]
    gt = ground_truth_score(c.test)
    prompt_logit = scorer.logits([tok.decode(tok.encode(x)[:8]) for x in c.test])[:, 0]
    report["classifier"] = {
        "steps": len(clf_losses), "loss_last": float(np.mean(clf_losses[-10:])),
        # test texts: predicted toxic (logit > 0) vs the ground truth's sign, and vs the document class
        "test_accuracy": float(np.mean((logit > 0) == (gt < 0))),
        "test_accuracy_doc_label": float(np.mean((logit > 0) == (c.test_labels == 1))),
        "test_corr_reward_vs_ground_truth": float(np.corrcoef(-logit, gt)[0, 1]),
        "prompt8_accuracy_doc_label": float(np.mean((prompt_logit > 0) == (c.test_labels == 1))),
        "seconds": round(time.time() - t, 2),
    }
    _log(progress, "classifier: test accuracy {test_accuracy:.3f} (doc label {test_accuracy_doc_label:.3f}), "
                   "corr(-logit, ground truth) {test_corr_reward_vs_ground_truth:.3f}".format(**report["classifier"])
         + f" ({time.time() - t:.1f}s)")
    report["seconds"] = round(time.time() - t0, 2)
    return report


def prepare(cache_dir=None, *, seed: int = 0, force: bool = False, progress: bool = True,
            small: bool = False) -> Assets:
    """Build (once) and return the synthetic task's assets: data, tokenizer, policy, reward model.

    Cached under ``cache_dir`` or :func:`default_cache_dir`; ``VERSION.json`` records the generator
    version, seed and sizes, and any mismatch (or ``force``) rebuilds. The build happens in a temporary
    sibling directory that is renamed into place, so an interrupted build never leaves a half cache and
    concurrent builders end with one complete copy. ``small`` builds the tiny test-sized variant.
    """
    size = "small" if small else "full"
    root = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(small)
    stamp = _stamp(seed, size)
    if not force and _is_built(root, stamp):
        return _assets(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    _log(progress, f"building the synthetic task ({size}, seed {seed}) in {root} ...")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        report = _build(tmp, seed, size, progress)
        (tmp / STAMP).write_text(json.dumps({"build": stamp, "report": report}, indent=2) + "\n")
        old = None
        if root.exists():
            if not force and _is_built(root, stamp):  # another process finished first: keep its copy
                shutil.rmtree(tmp, ignore_errors=True)
                return _assets(root)
            old = root.with_name(f".{root.name}.old-{os.getpid()}")
            root.rename(old)
        try:
            tmp.rename(root)
        except OSError:
            if not _is_built(root, stamp):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # lost a race to an identical build
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _log(progress, f"ready in {report['seconds']:.0f}s: {root}")
    return _assets(root)


def build_report(assets: Assets) -> dict:
    """The numbers recorded when the assets were built (timings, LM loss, classifier accuracy)."""
    return json.loads((pathlib.Path(assets.root) / STAMP).read_text())["report"]


