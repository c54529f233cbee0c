"""Time one full RA-RLHF iteration, phase by phase, at the paper's shapes.

    python bench/iteration.py --task imdb --dtype bfloat16            # GPT-2 small, 128 x (64+48)
    python bench/iteration.py --task all --model tiny --iters 3       # CPU smoke run
    python bench/iteration.py --task imdb --model gpt2-xl --remat     # scale

Random weights (no downloads): a GPT-2 policy (and a frozen copy as the reference) and a BERT-base
shaped reward classifier (toxic-bert's shape, 6 labels) with a WordPiece tokenizer trained here on
pseudo-words. The GPT-2 ids are decoded through a pseudo-word vocabulary of GPT-2's size, so the
host-side detokenise/retokenise work is of realistic size. The tokenizer is trained on every
pseudo-word, so a text of P+N GPT-2 tokens is about P+N+4 BERT tokens, as many as the PyTorch peer's
P+N random ids (bench/torch_peer.py); `reward_tokens_mean` / `reward_width` in the output say what the
classifier ran on. Every row generates all N new tokens
(min_new_tokens = N), the worst case for sampling.

Phases (medians over --iters after one warm-up iteration, which also compiles the reward model at
the length buckets next to the one the warm-up used, so a width that moves by a bucket does not compile
inside a timed iteration): sampling, reward (decode + tokenize +
classifier), forward (policy log-probs/values + reference log-probs), ppo (4 epochs of the full-batch
PPO update with the CVaR mask), total. Also: sampling tokens/s, PPO-update model TFLOP/s, peak device
memory, the number of compilations of each jitted phase (it must not grow after warm-up), and the
precision (compute dtype, float32 masters, JAX's default matmul precision: on NVIDIA GPUs the default
lets XLA run float32 dots in TF32). Output: JSON lines on stdout (and `$BENCH_JSON_DIR/iteration_<task>.json` when that is set), progress as it goes (`"progress"`:
setup, warm-up with its compile seconds, each iteration with its phase times and reward widths, so a
run killed by a timeout still says how far it got), then one result object per task.

The trained WordPiece tokenizer is cached across processes in $RAJAX_BENCH_CACHE (default
~/.cache/rajax-bench), keyed by its vocabulary size and a hash of its pseudo-words: training it takes
30-40 s on a 2-core CPU, once instead of in every run.

`--undo FIX` puts back, for this run only, the code one of the CPU fixes of bench/NOTES.md (issue 16)
replaced, to measure what that fix is worth in the same benchmark: `barrier` (no residual-gradient
barrier), `logprob` (log-prob gathered from the full log-softmax, entropy computed apart), `buckets` (power-of-two BERT
length buckets), `cls` (BERT's last layer computes every row, not only [CLS]). The KV-cache layout is not undoable here; compare
against an older checkout for it (bench/cpu_vs_torch.sh's RAJAX_ROOT).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rajax.core import parallel, ppo, rollout  # noqa: E402
from rajax.models import base as model_base  # noqa: E402
from rajax.models import bert, gpt2  # noqa: E402
from rajax.rewards import RewardModel  # noqa: E402

TASKS = {"imdb": (64, 48), "jigsaw": (8, 32), "rtp": (32, 32)}
TINY_GPT2 = dict(vocab_size=512, n_positions=128, n_embd=64, n_layer=2, n_head=2)
TINY_BERT = dict(vocab_size=1000, hidden=64, layers=2, heads=2, intermediate=128, max_position=512)


class PseudoWords:
    """Decodes token ids to pseudo-words (one per id), standing in for the GPT-2 tokenizer offline."""

    def __init__(self, vocab: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        syl = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
        self.words = [" " + "".join(rng.choice(syl, size=rng.integers(1, 4))) for _ in range(vocab)]
        self.eos_token_id = vocab - 1
        self.pad_token_id = vocab - 1

    def batch_decode(self, ids_list, **_):
        return ["".join(self.words[i] for i in ids) for ids in ids_list]


def _train_wordpiece(words, vocab_size):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, show_progress=False,
                                        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    rng = np.random.default_rng(1)
    corpus = ("".join(rng.choice(words, size=64)) for _ in range(2000))
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]",
                                            special_tokens=[("[CLS]", tok.token_to_id("[CLS]")),
                                                            ("[SEP]", tok.token_to_id("[SEP]"))])
    return tok


def bert_tokenizer(words, vocab_size, cache_dir=None):
    """A BERT WordPiece tokenizer trained on ``words``, loaded from ``cache_dir`` when a run with the
    same words and vocabulary size already trained it (the file name holds both, hashed)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    cache_dir = pathlib.Path(cache_dir or os.environ.get("RAJAX_BENCH_CACHE")
                             or pathlib.Path.home() / ".cache" / "rajax-bench")
    digest = hashlib.sha1("\n".join(words).encode()).hexdigest()[:16]
    path = cache_dir / f"wordpiece_v{vocab_size}_{digest}.json"
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception:  # absent or unreadable: train, then save atomically for the next process
        tok = _train_wordpiece(words, vocab_size)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tok.save(str(tmp))
            os.replace(tmp, path)
        except OSError as e:  # a read-only home still runs, only slower next time
            print(json.dumps({"progress": "tokenizer_cache_unwritable", "error": str(e)}), flush=True)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", model_max_length=512)


def logprobs_full_softmax(logits_BxTxV, tokens_BxT):
    """The log-prob as rajax computed it before issue 16: gathered from the full log-softmax."""
    logp = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens_BxT[..., None], axis=-1)[..., 0]


def entropy_before(logits):
    """The entropy as rajax computed it before issue 16: softmax and logsumexp, each on its own."""
    x = logits.astype(jnp.float32)
    return jax.nn.logsumexp(x, axis=-1) - (jax.nn.softmax(x, axis=-1) * x).sum(-1)


@contextlib.contextmanager
def undone(fixes):
    """Put back the code each named fix replaced while the body runs (and traces); restored on exit.

    Each patch replaces a module attribute that must exist, so a fix whose code moved fails here
    instead of silently measuring nothing."""
    patches = []
    if "barrier" in fixes:
        patches.append((gpt2, "residual_grad_barrier", lambda x: x))
    if "logprob" in fixes:
        patches.append((model_base, "logprobs_and_entropy",
                        lambda x, t: (logprobs_full_softmax(x, t), entropy_before(x))))
    if "cls" in fixes:
        full = bert.Layer.__call__
        patches.append((bert.Layer, "__call__", lambda self, x, key_mask, cls_only=False: full(self, x, key_mask)))
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return out, time.perf_counter() - t


def peak_memory():
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:
        return None
    return stats.get("peak_bytes_in_use")


def ppo_flops(cfg: gpt2.GPT2Config, b: int, p: int, n: int, epochs: int) -> float:
    """Model FLOPs of the PPO update: epochs x (forward + backward = 3 x forward) on B x (P+N) tokens,
    the LM head on the N response positions only (that is all rajax computes)."""
    e, l, v, t = cfg.n_embd, cfg.n_layer, cfg.vocab_size, p + n
    fwd = 2 * b * t * 12 * l * e * e + 2 * b * n * v * e + 4 * b * l * t * t * e  # blocks, LM head, attention
    return 3.0 * epochs * fwd


def progress(stage, **kw):
    """One progress line on stdout, so that a run killed by its timeout still says how far it got."""
    print(json.dumps({"progress": stage, **kw}), flush=True)


class CompileClock:
    """Seconds JAX spends tracing, lowering and compiling (its own monitoring events), summed."""

    def __init__(self):
        self.s = {}
        jax.monitoring.register_event_duration_secs_listener(self._add)

    def _add(self, event, secs, **_):
        if event.startswith("/jax/core/compile/"):
            name = event.rsplit("/", 1)[-1]
            self.s[name] = self.s.get(name, 0.0) + secs

    def total(self):
        return round(sum(self.s.values()), 3)


def precision(dtype):
    """What the run's matmuls compute in. JAX's default matmul precision (None = XLA's default) lets
    XLA run float32 dots in TF32 on NVIDIA GPUs; on the CPU float32 dots are full float32."""
    mp = jax.config.jax_default_matmul_precision
    return {"compute": dtype, "params": "float32", "adam": "float32", "backend": jax.default_backend(),
            "jax_default_matmul_precision": None if mp is None else str(mp),
            "f32_dots": ("tf32" if jax.default_backend() == "gpu" and mp in (None, "default", "tensorfloat32")
                         else "float32")}


def warm_neighbour_widths(reward, chunks):
    """Compile the classifier at the buckets next to each width the warm-up used: at batch 128 the
    rtp texts move between widths 72 and 80 from one iteration to the next."""
    widths = []
    for ids, _, _ in chunks:
        i = reward.buckets.index(ids.shape[1])
        for j in (i - 1, i + 1):
            if 0 <= j < len(reward.buckets):
                w = reward.buckets[j]
                z = np.zeros((ids.shape[0], w), np.int32)
                jax.block_until_ready(reward.fn(reward.params, z, np.ones_like(z)))
                widths.append(w)
    return sorted(set(widths))


def bert_vocab(model):
    return TINY_BERT["vocab_size"] if model == "tiny" else 30522


def prepare(model):
    """Train and cache the WordPiece tokenizer a run of ``model`` uses, and nothing else (no device
    work): bench/gpu.sh runs this beside its first steps, so no timed step waits for the training."""
    vocab = TINY_GPT2["vocab_size"] if model == "tiny" else gpt2.GPT2Config.from_name(model).vocab_size
    t = time.perf_counter()
    bert_tokenizer(PseudoWords(vocab).words, bert_vocab(model))
    progress("tokenizer", model=model, seconds=round(time.perf_counter() - t, 2))


def bench_task(task, args, clock):
    t_setup = time.perf_counter()
    p_len, n_new = TASKS[task]
    b = args.batch
    if args.model == "tiny":
        cfg = gpt2.GPT2Config(**TINY_GPT2, dtype=args.dtype, remat=args.remat)
        bcfg = bert.BertConfig(**TINY_BERT, num_labels=6, dtype=args.dtype)
    else:
        cfg = gpt2.GPT2Config.from_name(args.model, dtype=args.dtype, remat=args.remat)
        bcfg = bert.BertConfig(num_labels=6, dtype=args.dtype)
    key = jax.random.key(0)
    mesh = parallel.make_mesh(b)
    params = parallel.replicate(gpt2.init(cfg, key), mesh)
    ref_params = jax.tree.map(jnp.copy, params)
    pcfg = ppo.PPOConfig(mini_batch_size=b)
    tx = ppo.default_optimizer(pcfg)
    opt_state = parallel.replicate(tx.init(params), mesh)
    words = PseudoWords(cfg.vocab_size)
    t_tok0 = time.perf_counter()
    tokenizer = bert_tokenizer(words.words, bert_vocab(args.model))
    t_tokenizer = time.perf_counter() - t_tok0
    reward = RewardModel(bcfg, bert.init(bcfg, jax.random.key(1)), [f"l{i}" for i in range(6)], tokenizer,
                         index=0, sign=-1, batch_size=b,
                         **({"buckets": (32, 64, 128, 256, 512)} if "buckets" in args.undo else {}))
    rng = np.random.default_rng(0)
    prompt_ids = rng.integers(0, cfg.vocab_size - 1, (b, p_len)).astype(np.int32)
    prompt_mask = np.ones((b, p_len), np.int32)
    prompt_texts = words.batch_decode(prompt_ids)
    # Every row generates all N new tokens (min_length_mode new_tokens = N): the worst case for sampling.
    settings = rollout.SampleSettings(max_new_tokens=n_new, eos_id=words.eos_token_id, min_length=n_new,
                                      min_length_mode="new_tokens")
    jax.block_until_ready((params, opt_state))
    setup_s = time.perf_counter() - t_setup
    progress("setup", task=task, model=args.model, dtype=args.dtype, batch=b, setup_s=round(setup_s, 2),
             tokenizer_s=round(t_tokenizer, 2), backend=jax.default_backend())
    times = {k: [] for k in ("sampling", "reward", "tokenize", "forward", "ppo", "total")}
    compiles, per_iter, warmup = [], [], {}
    for it in range(args.iters + 1):
        k = jax.random.fold_in(key, it)
        c0 = clock.total()
        # The trainer's rollout, phase by phase (overlap=False waits between phases to time each).
        got = rollout.collect(cfg, params, ref_params, prompt_ids, prompt_mask, prompt_texts, k, reward=reward,
                              decode=words.batch_decode, settings=settings, mesh=mesh, overlap=False)
        t1 = time.perf_counter()
        chunks = reward.encode([a + r for a, r in zip(prompt_texts, got.responses)])
        t_tok = time.perf_counter() - t1
        bert_tokens = [int(m[:n].sum(-1).mean()) for _, m, n in chunks]
        bert_width = [int(ids.shape[1]) for ids, _, _ in chunks]
        alpha_prime = b if it % 2 else max(1, b // 5)  # alternate: α′ must not recompile
        # The last PPO update, as a Perfetto trace, with --profile.
        trace = (jax.profiler.trace(args.profile, create_perfetto_trace=True) if args.profile and it == args.iters
                 else contextlib.nullcontext())
        with trace:
            (params, opt_state, stats, keep), t_p = timed(
                lambda: ppo.ppo_step(cfg, pcfg, params, opt_state, got.rollout, 0.2, alpha_prime, k, tx=tx))
        tm = got.timings
        row = {"sampling": tm["time/sampling"], "reward": tm["time/reward"], "tokenize": t_tok,
               "forward": tm["time/forward"], "ppo": t_p}
        row["total"] = row["sampling"] + row["reward"] + row["forward"] + row["ppo"]
        row = {k_: round(v, 5) for k_, v in row.items()}
        if it == 0:  # warm-up: compilation, then the neighbouring reward widths
            t_w = time.perf_counter()
            extra = warm_neighbour_widths(reward, chunks)
            warmup = {**row, "reward_width": bert_width, "neighbour_widths": extra,
                      "neighbour_widths_s": round(time.perf_counter() - t_w, 3), "compile_s": round(clock.total() - c0, 3)}
            progress("warmup", task=task, **warmup)
            continue
        for name in times:
            times[name].append(row[name])
        compiles.append({"sampling": rollout.sample._cache_size(),
                         "forward": rollout.policy_and_reference._cache_size(),
                         "ppo": ppo._ppo_step_jit._cache_size(), "reward": reward.fn._cache_size()})
        per_iter.append({"i": it, **row, "reward_width": bert_width, "reward_tokens_mean": bert_tokens,
                         "compile_s": round(clock.total() - c0, 3)})
        progress("iter", task=task, **per_iter[-1])
    med = {k: statistics.median(v) for k, v in times.items()}
    flops = ppo_flops(cfg, b, p_len, n_new, pcfg.ppo_epochs)
    return {
        "task": task, "model": args.model, "undone": sorted(args.undo), "dtype": args.dtype, "remat": args.remat, "batch": b,
        "prompt": p_len, "new_tokens": n_new, "device": str(jax.devices()[0].device_kind),
        "n_devices": len(jax.devices()), "jax": jax.__version__, "precision": precision(args.dtype),
        "median_s": {k: round(v, 5) for k, v in med.items()},
        "sampling_tokens_per_s": round(b * n_new / med["sampling"], 1),
        "tokenize_share_of_reward": round(med["tokenize"] / med["reward"], 3),
        # What the classifier ran on in the last iteration: mean real tokens per text, and the padded
        # width (length bucket); "iters" has them for every timed iteration.
        "reward_tokens_mean": bert_tokens, "reward_width": bert_width,
        "setup_s": round(setup_s, 2), "warmup": warmup, "iters": per_iter,
        "compile_s_total": clock.total(),
        "compile_s_in_timed_iters": round(sum(r["compile_s"] for r in per_iter), 3),
        "ppo_model_tflop": round(flops / 1e12, 3),
        # The formula, so a reader can check the TFLOP/s: see ppo_flops.
        "ppo_flop_formula": "3 x epochs x (2*B*T*12*L*E^2 + 2*B*N*V*E + 4*B*L*T^2*E), T = P + N",
        "ppo_tflop_per_s": round(flops / med["ppo"] / 1e12, 2),
        "peak_device_bytes": peak_memory(),
        "compilations": compiles[-1],
        "compilations_grew_after_warmup": compiles[0] != compiles[-1],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="imdb", choices=[*TASKS, "all"])
    ap.add_argument("--model", default="gpt2", choices=["tiny", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--remat", action="store_true", help="rematerialise each block in the backward pass")
    ap.add_argument("--profile", metavar="DIR", help="write a jax.profiler (Perfetto) trace of the last PPO update to DIR")
    ap.add_argument("--undo", action="append", default=[], choices=["barrier", "logprob", "buckets", "cls"],
                    help="put back the code a CPU fix replaced, to measure that fix (repeatable)")
    ap.add_argument("--prepare", action="store_true", help="only train and cache the tokenizer, then exit")
    args = ap.parse_args(argv)
    if args.prepare:
        return prepare(args.model)
    results, clock = [], CompileClock()
    for task in (TASKS if args.task == "all" else [args.task]):
        with undone(args.undo):
            r = bench_task(task, args, clock)
        results.append(r)
        print(json.dumps(r), flush=True)
        # A file per task for bench/cpu_vs_torch.sh; bench/gpu.sh keeps only the stdout lines.
        if os.environ.get("BENCH_JSON_DIR"):
            pathlib.Path(os.environ["BENCH_JSON_DIR"], f"iteration_{task}.json").write_text(json.dumps(r, indent=1))
    return results


if __name__ == "__main__":
    main()
