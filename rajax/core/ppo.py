"""PPO with the RA-RLHF risk mask, and the adaptive KL controller: one jitted step per iteration.

The second half of an iteration (docs/paper.md §1.4-§1.6): per-token KL-penalised rewards, GAE, the
per-episode statistic, the CVaR keep mask over the global batch (``rajax.core.risk``), whitening over
kept tokens, ``ppo_epochs`` x minibatches of the clipped losses inside ``lax.scan``, then the KL
statistic the controller observes and the controller's update. ``docs/algorithm.md`` lists every
detail with its option.

Layout: every per-token array lives on the response axis [B, N]: column i is response token i,
predicted at sequence position P-1+i, and ``values[:, i] = V(h_{P-1+i})``. So the original code's
``returns[j, len(q_j)-1]`` is ``returns[:, 0]`` here (quirk #2).

The model is an argument: ``policy`` is any hashable object with ``forward(params, ids, mask,
prompt_width) -> (logp, values, entropy)`` (``rajax.core.rollout.Policy``), and the optimizer is any
optax transformation (``default_optimizer`` is the original code's Adam).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from rajax.core import parallel, plugins, risk
from rajax.core.errors import InvalidInput
from rajax.core.rollout import Rollout

KL_PENALTIES = ("kl", "abs", "mse", "full")
KL_STATS = ("diluted", "kept_mean", "all")  # what the KL controller observes (kl_statistic)


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO hyper-parameters (TRL 0.7.2 ``PPOConfig`` + the scripts' overrides, docs/paper.md §2.1).

    Frozen and hashable: it is a static argument of the jitted ``ppo_step``.
    """

    learning_rate: float = 1.41e-5  # Adam step size (the default optimizer)
    ppo_epochs: int = 4  # passes over each batch
    mini_batch_size: int = 128  # = batch size: one full-batch minibatch per epoch (4 Adam steps)
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE lambda
    cliprange: float = 0.2  # policy ratio clip
    cliprange_value: float = 0.2  # value clip around the old values
    vf_coef: float = 0.1  # weight of the value loss
    ratio_threshold: float = 10.0  # skip a minibatch whose mean ratio exceeds this (TRL)
    max_grad_norm: float | None = None  # global-norm gradient clipping (None = off, the original code)
    kl_penalty: str = "kl"  # "kl" | "abs" | "mse" | "full"
    whiten_advantages: bool = True  # whiten advantages over the kept tokens
    adam_b1: float = 0.9  # Adam beta1
    adam_b2: float = 0.999  # Adam beta2
    adam_eps: float = 1e-8  # Adam epsilon
    risk_stat: str = "gae_return"  # "gae_return" (code) | "mc_return" (paper text) | "env_score"
    kl_stat: str = "diluted"  # "diluted" (code) | "kept_mean" (paper Eq. 12) | "all"
    risk_measure: str = "cvar"  # "cvar" (code: 0/1 mask) | "cvar_pg" (paper Eq. 7 weights) | a registered name | module:function
    optimizer: str = "adam"  # "adam" (the original code's, default_optimizer) | module:function, a function (PPOConfig) -> optax transformation

    def __post_init__(self):
        checks = [
            (self.kl_penalty in KL_PENALTIES, f"kl_penalty={self.kl_penalty!r}; choose one of {KL_PENALTIES}"),
            (self.risk_stat in risk.EPISODE_STATS, f"risk_stat={self.risk_stat!r}; choose one of {risk.EPISODE_STATS}"),
            (self.kl_stat in KL_STATS, f"kl_stat={self.kl_stat!r}; choose one of {KL_STATS}"),
            (self.ppo_epochs >= 1, f"ppo_epochs must be >= 1, got {self.ppo_epochs}"),
            (self.mini_batch_size >= 1, f"mini_batch_size must be >= 1, got {self.mini_batch_size}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InvalidInput(f"invalid PPOConfig: {msg}")
        # A registered name or a user's module:function (loaded here, so a bad spec fails at config time).
        risk.measure(self.risk_measure)
        if self.optimizer != "adam":
            if not plugins.is_spec(self.optimizer):
                raise InvalidInput(f"invalid PPOConfig: optimizer={self.optimizer!r}; give adam or {plugins.FORMS}")
            plugins.load_callable(self.optimizer, what="ppo.optimizer")

    def replace(self, **kw) -> "PPOConfig":
        return dataclasses.replace(self, **kw)


@functools.lru_cache(maxsize=None)
def default_optimizer(cfg: PPOConfig) -> optax.GradientTransformation:
    """Adam as ``torch.optim.Adam(lr)`` (docs/paper.md §2.1): bias-corrected, eps outside the sqrt, no decay.

    Cached per config, so equal configs give the same object (a static jit argument of ``ppo_step``).

    optax.adam has exactly PyTorch's update rule. Global-norm clipping only if ``max_grad_norm``
    (TRL's default None = no clipping, as every paper run).
    """
    adam = optax.adam(cfg.learning_rate, b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps)
    if cfg.max_grad_norm is None:
        return adam
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adam)


@functools.lru_cache(maxsize=None)
def make_optimizer(cfg: PPOConfig) -> optax.GradientTransformation:
    """The optimizer ``cfg.optimizer`` names: ``default_optimizer(cfg)`` for ``"adam"``, else the
    user's ``module:function`` called with ``cfg`` (it reads ``learning_rate`` etc. from there).

    Cached per config like ``default_optimizer``: the transformation is a static argument of the
    jitted step, so one config must give one object."""
    if cfg.optimizer == "adam":
        return default_optimizer(cfg)
    tx = plugins.load_callable(cfg.optimizer, what="ppo.optimizer")(cfg)
    if not isinstance(tx, optax.GradientTransformation):
        raise InvalidInput(f"ppo.optimizer={cfg.optimizer!r} returned a {type(tx).__name__}, not an optax "
                           "GradientTransformation")
    return tx


# --------------------------------------------------------------------------------------------
# masked statistics (TRL core.py; docs/paper.md §1.6)
# --------------------------------------------------------------------------------------------
def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    """Σ x·m / Σ m. An empty mask gives 0 (TRL would give NaN; only reachable with no kept tokens)."""
    n = mask.sum(axis)
    return jnp.where(n > 0, (x * mask).sum(axis) / jnp.where(n > 0, n, 1.0), 0.0)


def masked_var(x: jax.Array, mask: jax.Array, unbiased: bool = True) -> jax.Array:
    """Masked variance; ``unbiased`` applies Bessel's n/(n-1) with n = Σ mask (TRL core.py)."""
    mean = masked_mean(x, mask)
    var = masked_mean(jnp.square(x - mean), mask)
    if unbiased:
        n = mask.sum()
        var = var * jnp.where(n > 1, n / jnp.where(n > 1, n - 1, 1.0), 1.0)
    return var


def masked_whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True) -> jax.Array:
    """(x - mean)·rsqrt(var + 1e-8) over the mask (unbiased var), TRL ``masked_whiten``.

    Same flag semantics as TRL: ``shift_mean=True`` (the default TRL and the paper use) leaves the
    result centred, i.e. the mean is NOT added back; ``shift_mean=False`` adds it back.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    w = (x - mean) * jax.lax.rsqrt(var + 1e-8)
    return w if shift_mean else w + mean


# --------------------------------------------------------------------------------------------
# rewards and GAE (docs/paper.md §1.4, §1.6, quirk #14)
# --------------------------------------------------------------------------------------------
def kl_penalty(logp: jax.Array, ref_logp: jax.Array, kind: str = "kl", logits=None, ref_logits=None):
    """Per-token penalty (TRL ``_kl_penalty``): "kl" logp-ref, "abs" |·|, "mse" ½(·)², "full"
    KL(π‖π_ref) over the vocabulary, which needs both full logits [B, N, V]."""
    if kind == "kl":
        return logp - ref_logp
    if kind == "abs":
        return jnp.abs(logp - ref_logp)
    if kind == "mse":
        return 0.5 * jnp.square(logp - ref_logp)
    if kind == "full":
        if logits is None or ref_logits is None:
            raise InvalidInput("kl_penalty='full' needs logits and ref_logits [B, N, V]; pass them or use 'kl'")
        lp, lr = jax.nn.log_softmax(logits, -1), jax.nn.log_softmax(ref_logits, -1)
        return (jnp.exp(lp) * (lp - lr)).sum(-1)
    raise InvalidInput(f"unknown kl_penalty {kind!r}; choose one of {KL_PENALTIES}")


def last_index(mask_BxN: jax.Array) -> jax.Array:
    """Index of each row's last response token (the last nonzero mask entry)."""
    n = mask_BxN.shape[1]
    return n - 1 - jnp.argmax(mask_BxN[:, ::-1] > 0, axis=1)


def compute_rewards(scores_B, logp, ref_logp, mask, beta, kl_penalty_kind: str = "kl", *,
                    logits=None, ref_logits=None):
    """(rewards_BxN, kl_BxN): r̄ = -β·kl at every position, + score at the episode's last response
    token (docs/paper.md §1.6, quirk #14). Not multiplied by the mask (GAE masks it, as TRL)."""
    kl = kl_penalty(logp, ref_logp, kl_penalty_kind, logits, ref_logits)
    rewards = -beta * kl
    last = jax.nn.one_hot(last_index(mask), mask.shape[1], dtype=rewards.dtype)
    has = (mask.sum(-1) > 0).astype(rewards.dtype)  # an all-zero row gets no score (TRL's guard)
    return rewards + last * (scores_B * has)[:, None], kl


def gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95):
    """(advantages, returns) by a reverse ``lax.scan`` (docs/paper.md §1.4, §7).

    values·mask and rewards·mask as the original code, bootstrap 0 after the last token;
    returns = advantages + values·mask.
    """
    v, r = values * mask, rewards * mask
    next_v = jnp.concatenate([v[:, 1:], jnp.zeros_like(v[:, :1])], axis=1)
    delta_NxB = (r + gamma * next_v - v).T

    def step(last, d):
        last = d + gamma * lam * last
        return last, last

    _, adv_NxB = jax.lax.scan(step, jnp.zeros_like(delta_NxB[0]), delta_NxB, reverse=True)
    adv = adv_NxB.T
    return adv, adv + v


# --------------------------------------------------------------------------------------------
# losses (docs/paper.md §1.6, TRL ``PPOTrainer.loss``)
# --------------------------------------------------------------------------------------------
def policy_loss(logp, old_logp, adv, mask, cliprange: float = 0.2):
    """Clipped surrogate: masked_mean(max(-A·r, -A·clip(r, 1±ε))) -> (loss, clipfrac, ratio)."""
    ratio = jnp.exp(logp - old_logp)
    l1 = -adv * ratio
    l2 = -adv * jnp.clip(ratio, 1.0 - cliprange, 1.0 + cliprange)
    return masked_mean(jnp.maximum(l1, l2), mask), masked_mean((l2 > l1).astype(jnp.float32), mask), ratio


def value_loss(vpred, old_values, returns, mask, cliprange_value: float = 0.2):
    """Clipped value loss: ½·masked_mean(max((v-R)², (clip(v, v_old±ε)-R)²)) -> (loss, clipfrac)."""
    vclip = jnp.clip(vpred, old_values - cliprange_value, old_values + cliprange_value)
    l1, l2 = jnp.square(vpred - returns), jnp.square(vclip - returns)
    return 0.5 * masked_mean(jnp.maximum(l1, l2), mask), masked_mean((l2 > l1).astype(jnp.float32), mask)


def ppo_loss(cfg: PPOConfig, logp, entropy, vpred, old_logp, old_values, adv, returns, mask):
    """pg + vf_coef·vf with TRL's ratio-threshold skip, and TRL's per-minibatch statistics.

    If masked_mean(ratio) > ratio_threshold the whole loss (and its logged parts) is zeroed; the
    optimizer still steps with zero gradients (Adam momentum), as the original code.
    """
    pg, pg_clipfrac, ratio = policy_loss(logp, old_logp, adv, mask, cfg.cliprange)
    vf, vf_clipfrac = value_loss(vpred, old_values, returns, mask, cfg.cliprange_value)
    skip = masked_mean(ratio, mask) > cfg.ratio_threshold
    pg, vf = jnp.where(skip, 0.0, pg), jnp.where(skip, 0.0, vf)
    total = pg + cfg.vf_coef * vf
    stats = {
        "ppo/loss/policy": pg,
        "ppo/loss/value": cfg.vf_coef * vf,  # TRL logs the vf_coef-scaled value loss
        "ppo/loss/total": total,
        "ppo/policy/entropy": masked_mean(entropy, mask),
        "ppo/policy/approxkl": 0.5 * masked_mean(jnp.square(logp - old_logp), mask),
        "ppo/policy/policykl": masked_mean(old_logp - logp, mask),
        "ppo/policy/clipfrac": pg_clipfrac,
        "ppo/policy/advantages_mean": masked_mean(adv, mask),
        "ppo/policy/ratio_mean": masked_mean(ratio, mask),
        "ppo/returns/mean": masked_mean(returns, mask),
        "ppo/returns/var": masked_var(returns, mask),
        "ppo/val/vpred": masked_mean(vpred, mask),
        "ppo/val/error": masked_mean(jnp.square(vpred - returns), mask),
        "ppo/val/clipfrac": vf_clipfrac,
        "ppo/val/mean": masked_mean(old_values, mask),
        "ppo/val/var": masked_var(old_values, mask),
        "ppo/skipped": skip.astype(jnp.float32),
    }
    return total, stats


# --------------------------------------------------------------------------------------------
# the KL coefficient β (docs/paper.md §1.6, §2.1; quirk #4)
# --------------------------------------------------------------------------------------------
class KLState(NamedTuple):
    """Controller state (a pytree, so it can be checkpointed): the current coefficient β."""

    beta: jax.Array  # float32 scalar


def kl_init(init_kl_coef: float = 0.2) -> KLState:
    """β₀ (``init_kl_coef``, default 0.2, docs/paper.md §2.1)."""
    if init_kl_coef < 0:
        raise InvalidInput(f"init_kl_coef must be >= 0, got {init_kl_coef}")
    return KLState(jnp.asarray(init_kl_coef, jnp.float32))


def kl_update(state: KLState, observed_kl, *, target: float = 6.0, horizon: float = 10000.0,
              n_steps: int, adaptive: bool = True) -> KLState:
    """One controller update, run once per iteration after the PPO epochs (docs/paper.md §1.6).

    Adaptive (TRL ``AdaptiveKLController``): e = clip(KL_obs/target - 1, -0.2, 0.2);
    β ← β·(1 + e·n_steps/horizon), with n_steps = the batch size (K_β = 128/10000 = 0.0128).
    Fixed (``adaptive=False``): β is unchanged.
    """
    if not adaptive:
        return state
    if target <= 0 or horizon <= 0:
        raise InvalidInput(f"KL target and horizon must be > 0, got target={target}, horizon={horizon}")
    e = jnp.clip(jnp.asarray(observed_kl, jnp.float32) / target - 1.0, -0.2, 0.2)
    return KLState(state.beta * (1.0 + e * n_steps / horizon))


def kl_statistic(kl_BxN: jax.Array, rmask_BxN: jax.Array, mask_BxN: jax.Array, keep_B: jax.Array,
                 kind: str = "diluted") -> jax.Array:
    """The episode KL the controller sees (``objective/kl``), kl = logπ - logπ_ref per token.

    * ``"diluted"`` (original code, faithful default): (1/B)·Σ_{j kept} Σ_t kl·rmask; dropped
      episodes count as 0 in a mean over all B (the in-place mask of quirk #4).
    * ``"kept_mean"`` (PAPER Eq. 12): mean over kept episodes of Σ_t kl·mask.
    * ``"all"``: mean over all B episodes with the unmasked response mask (plain-PPO view).
    """
    per_ep = (kl_BxN * mask_BxN).sum(-1)
    if kind == "diluted":
        return (kl_BxN * rmask_BxN).sum(-1).mean()
    if kind == "kept_mean":
        keep = keep_B.astype(kl_BxN.dtype)
        return (per_ep * keep).sum() / jnp.maximum(keep.sum(), 1.0)
    if kind == "all":
        return per_ep.mean()
    raise InvalidInput(f"unknown kl_stat {kind!r}; choose one of {KL_STATS}")


# --------------------------------------------------------------------------------------------
# the step
# --------------------------------------------------------------------------------------------
def with_frozen(params, frozen):
    """The whole parameter tree of a policy trained on a subset: ``frozen`` (e.g. LoRA base weights)
    with ``params`` (the trainable subtrees) merged in, key by key. Only references are combined: no
    array is copied, so under jit the frozen weights stay one buffer."""
    if frozen is None:
        return params
    if not isinstance(params, dict) or not isinstance(frozen, dict):
        raise InvalidInput("with_frozen merges nested dicts of parameters")
    out = dict(frozen)
    for k, v in params.items():
        out[k] = with_frozen(v, frozen[k]) if isinstance(v, dict) and isinstance(frozen.get(k), dict) else v
    return out


def _ppo_step(policy, cfg: PPOConfig, tx, params, opt_state, rollout: Rollout, beta, alpha_prime, key,
              frozen=None, measure=None):
    b, n = rollout.mask.shape
    p = rollout.input_ids.shape[1] - n
    mask = rollout.mask.astype(jnp.float32)
    beta = jnp.asarray(beta, jnp.float32)
    old_logp = rollout.logp.astype(jnp.float32)
    ref_logp = rollout.ref_logp.astype(jnp.float32)

    # 1. rewards and GAE with the ORIGINAL mask, for every episode (§1.6 rows 1-2).
    rewards, klpen = compute_rewards(rollout.scores.astype(jnp.float32), old_logp, ref_logp, mask, beta,
                                     cfg.kl_penalty)
    adv, returns = gae(rewards, rollout.values.astype(jnp.float32), mask, cfg.gamma, cfg.lam)
    old_values = rollout.values * mask

    # 2. risk mask (§1.4-1.5): statistic -> weights over the GLOBAL batch -> rmask.
    stat = risk.episode_statistic(cfg.risk_stat, returns_BxN=returns, rewards_BxN=rewards, mask_BxN=mask,
                                  scores_B=rollout.scores)
    k = jnp.clip(jnp.asarray(alpha_prime, jnp.int32), 1, b)
    w, q = (risk.measure(cfg.risk_measure) if measure is None else measure)(stat, k)
    w = w / jnp.maximum(w.max(), 1e-30)  # 0/1 weights stay 0/1; see risk.RiskMeasure
    keep = w > 0
    rmask = mask * w[:, None]

    # 3. whitening over kept tokens only (§1.6, quirk #5).
    if cfg.whiten_advantages:
        adv = masked_whiten(adv, rmask)

    batch = dict(ids=rollout.input_ids, am=rollout.attention_mask, old_logp=old_logp, old_values=old_values,
                 adv=adv, returns=returns, rmask=rmask)
    mbs = min(cfg.mini_batch_size, b)
    nmb = b // mbs

    def loss_fn(params_, mb):
        # Gradients w.r.t. the trainable tree only; frozen weights enter as constants of the pass.
        logp, vpred, ent = policy.forward(with_frozen(params_, frozen), mb["ids"], mb["am"], p)
        return ppo_loss(cfg, logp, ent, vpred, mb["old_logp"], mb["old_values"], mb["adv"], mb["returns"],
                        mb["rmask"])

    def minibatch(carry, mb):
        params_, opt_state_ = carry
        grads, stats = jax.grad(loss_fn, has_aux=True)(params_, mb)
        updates, opt_state_ = tx.update(grads, opt_state_, params_)
        return (optax.apply_updates(params_, updates), opt_state_), stats

    def epoch(carry, key_e):
        if nmb == 1:  # one full-batch minibatch: order is irrelevant (all losses are masked means)
            mbs_tree = jax.tree.map(lambda x: x[None], batch)
        else:  # TRL shuffles the batch each epoch (np.random.permutation) and slices minibatches
            perm = jax.random.permutation(key_e, b)[: nmb * mbs].reshape(nmb, mbs)
            mbs_tree = jax.tree.map(lambda x: x[perm], batch)
        return jax.lax.scan(minibatch, carry, mbs_tree)

    keys = jax.random.split(key, cfg.ppo_epochs)
    (params, opt_state), stats = jax.lax.scan(epoch, (params, opt_state), keys)
    stats = {name: v.mean() for name, v in stats.items()}  # mean over epochs x minibatches (TRL)
    stats["ppo/val/var_explained"] = 1.0 - stats["ppo/val/error"] / stats["ppo/returns/var"]

    # 4. step-level statistics under the risk mask (record_step_stats, §1.6).
    kl_tok = old_logp - ref_logp
    stats.update({
        "objective/kl": kl_statistic(kl_tok, rmask, mask, keep, cfg.kl_stat),
        "objective/kl_kept_mean": kl_statistic(kl_tok, rmask, mask, keep, "kept_mean"),
        "objective/kl_all": kl_statistic(kl_tok, rmask, mask, keep, "all"),
        "objective/kl_coef": beta,
        "objective/entropy": (-old_logp * rmask).sum(-1).mean(),  # diluted like objective/kl
        "objective/logprobs": masked_mean(old_logp, rmask),
        "objective/ref_logprobs": masked_mean(ref_logp, rmask),
        "ppo/mean_non_score_reward": masked_mean(-beta * klpen, rmask),
        "ppo/mean_scores": rollout.scores.mean(),
        "ppo/std_scores": rollout.scores.std(ddof=1) if b > 1 else jnp.zeros(()),
        "tokens/queries_len_mean": rollout.attention_mask[:, :p].sum(-1).mean(),
        "tokens/responses_len_mean": mask.sum(-1).mean(),
        "risk/alpha_prime": k.astype(jnp.float32),
        "risk/quantile": q,
        "risk/kept": keep.sum().astype(jnp.float32),
        "risk/kept_frac": keep.mean(),
        "risk/stat_mean": stat.mean(),
        "risk/stat_kept_mean": masked_mean(stat, keep.astype(jnp.float32)),
    })
    stats = {name: jnp.asarray(v, jnp.float32) for name, v in stats.items()}
    return params, opt_state, stats, keep


# ``measure`` (the risk measure's function) is static beside ``cfg``: the cache is then keyed on the
# function, so registering another function under the same name compiles the new one.
_ppo_step_jit = jax.jit(_ppo_step, static_argnums=(0, 1, 2), static_argnames=("measure",), donate_argnums=(3, 4))


def ppo_step(policy, ppo_cfg: PPOConfig, params, opt_state, rollout: Rollout, beta, alpha_prime, key, *,
             tx: optax.GradientTransformation | None = None, frozen=None):
    """One RA-RLHF iteration's PPO update (jitted; params and opt_state are DONATED).

    rewards → GAE → episode statistic → CVaR keep mask (k = ``alpha_prime``, traced, so a new α′ does
    not recompile) → rmask = mask·keep → whitening over rmask → ``ppo_epochs`` × minibatches in
    ``lax.scan`` → statistics over rmask. ``alpha_prime = B`` is exactly plain PPO (the RLHF baseline).
    ``policy`` is a hashable model handle (``rajax.core.rollout.Policy``, e.g. a ``GPT2Config``). ``tx``
    is the optimizer (any optax transformation; ``opt_state`` must come from its ``init``); the
    default is ``make_optimizer(ppo_cfg)``: Adam as the original code unless ``ppo_cfg.optimizer``
    names another. Pass the same ``tx``
    object every step: it is a static argument, so a new one recompiles. When ``rollout`` is on a mesh
    (``rollout.collect``'s is), ``params``, ``opt_state``, ``beta`` and ``frozen`` are placed on it
    first (``parallel.on_mesh``), so unplaced ones (``hf.load``, ``tx.init``, ``kl_init``) compile once.
    ``frozen`` (default None: every parameter trains) is a tree of weights that are read but not
    trained nor donated, e.g. a LoRA policy's base weights: ``params`` is then the trainable subset
    (adapters and value head) and ``policy.forward`` sees ``with_frozen(params, frozen)``.
    Returns ``(params, opt_state, stats: dict[str, f32 scalar], keep_B)``.
    """
    if ppo_cfg.kl_penalty == "full":
        raise InvalidInput("kl_penalty='full' needs full-vocabulary reference logits, which a Rollout does not "
                         "carry; use 'kl', 'abs' or 'mse' in ppo_step (compute_rewards supports 'full')")
    b, n = rollout.mask.shape
    shapes = {"logp": rollout.logp.shape, "ref_logp": rollout.ref_logp.shape, "values": rollout.values.shape}
    bad = [name for name, s in shapes.items() if s != (b, n)]
    if bad or rollout.scores.shape != (b,) or rollout.input_ids.shape != rollout.attention_mask.shape \
            or rollout.input_ids.shape[0] != b or rollout.input_ids.shape[1] <= n:
        raise InvalidInput(f"inconsistent Rollout shapes: mask {(b, n)}, input_ids {rollout.input_ids.shape}, "
                         f"attention_mask {rollout.attention_mask.shape}, scores {rollout.scores.shape}, {shapes}")
    mbs = min(ppo_cfg.mini_batch_size, b)
    if b % mbs:
        raise InvalidInput(f"batch size {b} is not a multiple of mini_batch_size {ppo_cfg.mini_batch_size}")
    try:
        k = int(alpha_prime)
    except (TypeError, jax.errors.ConcretizationTypeError):
        k = None  # traced by an outer jit: clipped into [1, B] inside
    if k is not None and not 1 <= k <= b:
        raise InvalidInput(f"alpha_prime={k} must be an episode count in [1, {b}]")
    # Fixed dtypes (not weak Python scalars) so a float/array beta or an int/np alpha' hit one cache entry.
    beta = jnp.asarray(beta, jnp.float32)
    sharding = getattr(rollout.input_ids, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        # And one mesh: the step returns params, opt_state and (through kl_update) β on the rollout's
        # mesh, so inputs that a caller did not place (a loader's params, tx.init's state, kl_init's β)
        # would make a second cache entry at the next iteration (parallel.on_mesh).
        params, opt_state, beta, frozen = parallel.on_mesh((params, opt_state, beta, frozen), sharding.mesh)
    tx = make_optimizer(ppo_cfg) if tx is None else tx
    return _ppo_step_jit(policy, ppo_cfg, tx, params, opt_state, rollout, beta,
                         jnp.asarray(alpha_prime, jnp.int32), key, frozen, measure=risk.measure(ppo_cfg.risk_measure))
