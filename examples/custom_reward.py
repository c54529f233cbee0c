"""RA-RLHF with your own reward, written against the rajax library (no bin/train).

    python examples/custom_reward.py --iterations 20

Uses the offline synthetic task's tokenizer, policy and prompts (built on first use) and, instead of
its BERT classifier, a plain Python function as the reward: the generator's own ground-truth score
(or anything `list[str] -> list[float]`). Each iteration: sample -> score ->
policy/reference passes -> α′ from the soft-risk schedule -> one jitted PPO step with the CVaR mask
-> adaptive KL update.
"""
import argparse

import jax
import numpy as np

from rajax import config, kl, ppo, risk, sampling, synthetic, tasks
from rajax.models import hf
from rajax.rewards import PythonReward
from rajax.tokenizer import load_tokenizer


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--cache", help="synthetic asset cache (default: $RAJAX_CACHE/synthetic-v1)")
    ap.add_argument("--small", action="store_true", help="the test-sized synthetic assets")
    args = ap.parse_args(argv)

    cfg = synthetic.resolve(config.load_config("synthetic"), cache_dir=args.cache, small=args.small)
    tok = load_tokenizer(cfg.model.tokenizer)
    model_cfg, params = hf.load(cfg.model.policy)
    _, ref_params = hf.load(cfg.model.policy)
    prompts = tasks.load_task_data(cfg, tok).train
    reward = PythonReward(synthetic.ground_truth_score, batched=True)  # any texts -> floats
    pcfg = ppo.PPOConfig(learning_rate=3e-4, mini_batch_size=args.batch)
    tx = ppo.make_optimizer(pcfg)
    opt_state, klc = tx.init(params), kl.init(0.2)
    P, N, B = cfg.generation.prompt_tokens, cfg.generation.max_new_tokens, args.batch
    rng, key = np.random.default_rng(0), jax.random.key(0)
    for m in range(args.iterations):
        idx = rng.choice(len(prompts), B, replace=False)
        ids, mask = tasks.left_pad([prompts.ids[i] for i in idx], P, tok.pad_token_id)
        k_sample, k_ppo = jax.random.split(jax.random.fold_in(key, m))
        s = sampling.sample(model_cfg, params, ids, mask, k_sample, max_new_tokens=N, eos_id=tok.eos_token_id)
        responses = tasks.decode_all(tok, [t[r > 0] for t, r in zip(np.asarray(s.tokens), np.asarray(s.mask))])
        scores = reward([prompts.texts[i] for i in idx], responses)
        seq, attn = sampling.sequences(ids, mask, s)
        logp, values = ppo.forward(model_cfg, params, seq, attn, P)[:2]
        ref_logp = ppo.forward(model_cfg, ref_params, seq, attn, P)[0]
        rollout = ppo.Rollout(seq, attn, s.mask, logp, ref_logp, values, scores)
        a = risk.soft_risk_level(m, batch_size=B, alpha=args.alpha, n=2, rho=0.8, M=args.iterations)
        params, opt_state, stats, keep = ppo.ppo_step(model_cfg, pcfg, params, opt_state, rollout, klc.beta, a, k_ppo)
        klc = kl.update(klc, stats["objective/kl"], n_steps=B)
        print(f"iter {m:3d}  reward {scores.mean():.3f}  α′ {a:3d}  kept {int(keep.sum()):3d}  "
              f"KL {float(stats['objective/kl']):.3f}  β {float(klc.beta):.4f}")
    return float(scores.mean())


if __name__ == "__main__":
    main()
