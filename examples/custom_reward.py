"""RA-RLHF with your own reward, written against the rajax library (no bin/train).

    python examples/custom_reward.py --iterations 20

Uses the offline synthetic task's tokenizer, policy and prompts (built on first use) and, instead of
its BERT classifier, a plain Python function as the reward: the generator's own ground-truth score
(or anything `list[str] -> list[float]`). Each iteration is the trainer's four calls:
collect (sample -> score -> policy/reference passes) -> α′ from the soft-risk schedule -> one jitted
PPO step with the CVaR mask -> adaptive KL update.
"""
import argparse

import jax
import numpy as np

from rajax import config, tasks
from rajax.core import parallel, ppo, risk, rollout
from rajax.io import hf
from rajax.io.tokenizer import load_tokenizer
from rajax.rewards import PythonReward
from rajax.tasks import synthetic


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--cache", help="synthetic asset cache (default: $RAJAX_CACHE/synthetic-v1)")
    ap.add_argument("--small", action="store_true", help="the test-sized synthetic assets")
    args = ap.parse_args(argv)

    cfg = synthetic.resolve(config.load_config("synthetic"), cache_dir=args.cache, small=args.small)
    tok = load_tokenizer(cfg.model.tokenizer)
    policy, params = hf.load(cfg.model.policy)  # our own Flax GPT-2 with a value head
    _, ref_params = hf.load(cfg.model.policy)
    prompts = tasks.load(cfg, tok).train
    reward = PythonReward(synthetic.ground_truth_score, batched=True)  # any texts -> floats
    pcfg = ppo.PPOConfig(learning_rate=3e-4, mini_batch_size=args.batch)
    tx = ppo.default_optimizer(pcfg)  # or any optax chain, e.g. with a learning-rate schedule
    opt_state, klc = tx.init(params), ppo.kl_init(0.2)
    settings = cfg.generation.sample_settings(tok.eos_token_id, tok.pad_token_id)
    mesh = parallel.make_mesh(args.batch)
    P, B = cfg.generation.prompt_tokens, args.batch
    rng, key = np.random.default_rng(0), jax.random.key(0)
    history = []
    for m in range(args.iterations):
        idx = rng.choice(len(prompts), B, replace=False)
        ids, mask = tasks.left_pad([prompts.ids[i] for i in idx], P, tok.pad_token_id)
        k_sample, k_ppo = jax.random.split(jax.random.fold_in(key, m))
        got = rollout.collect(policy, params, ref_params, ids, mask, [prompts.texts[i] for i in idx], k_sample,
                              reward=reward, decode=lambda rows: tasks.decode_all(tok, rows),
                              settings=settings, mesh=mesh)
        a = risk.soft_risk_level(m, batch_size=B, alpha=args.alpha, n=2, rho=0.8, M=args.iterations)
        params, opt_state, stats, keep = ppo.ppo_step(policy, pcfg, params, opt_state, got.rollout, klc.beta, a,
                                                      k_ppo, tx=tx)
        klc = ppo.kl_update(klc, stats["objective/kl"], n_steps=B)
        row = {"reward": float(got.scores.mean()), "alpha_prime": a, "kept": int(keep.sum()),
               "kl": float(stats["objective/kl"]), "beta": float(klc.beta)}
        history.append(row)
        print(f"iter {m:3d}  reward {row['reward']:.3f}  α′ {a:3d}  kept {row['kept']:3d}  "
              f"KL {row['kl']:.3f}  β {row['beta']:.4f}")
    return history


if __name__ == "__main__":
    main()
