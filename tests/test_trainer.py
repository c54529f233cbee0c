"""rajax.trainer.Trainer: a non-finite reward stops the run with the last good checkpoint, nothing
recompiles after the first iteration, and a user's optimizer is the one that trains."""
import jax
import numpy as np
import optax
import pytest
from tiny import train_args

from rajax import trainer as T
from rajax.cli.train import build_parser, config_from_args
from rajax.core import parallel, ppo, rollout
from rajax.io.checkpoint import Checkpointer


def _trainer(train_world, out, iterations=3, **kw):
    cfg = config_from_args(build_parser().parse_args(train_args(train_world, out, iterations=iterations)))
    return T.Trainer(cfg, out, progress=False, log=lambda *_: None, **kw)


def test_non_finite_reward_stops_and_keeps_last_good_checkpoint(train_world, tmp_path):
    trainer = _trainer(train_world, tmp_path / "nan")
    calls = {"n": 0}

    def broken_classifier(prompts, responses):  # e.g. a reward model whose weights went bad
        calls["n"] += 1
        return np.full(len(prompts), np.nan if calls["n"] == 2 else 1.0, np.float32)

    trainer.reward = broken_classifier
    with pytest.raises(T.NonFinite, match=r"iteration 1.*last good checkpoint is iteration 1"):
        trainer.run()
    assert Checkpointer(tmp_path / "nan" / "checkpoints").latest_step() == 1


def test_nothing_recompiles_after_the_first_iteration(train_world, tmp_path):
    trainer = _trainer(train_world, tmp_path / "rc")
    fns = (rollout.sample, rollout.policy_and_reference, ppo._ppo_step_jit, trainer.reward.fn)

    def sizes():
        return [f._cache_size() for f in fns]

    trainer.iteration(0)
    after_first = sizes()
    trainer.iteration(1)  # α′ changes from 8 to 2 here: traced, so no new program
    trainer.iteration(2)
    assert sizes() == after_first


def test_a_users_optimizer_trains(train_world, tmp_path):
    """Trainer(tx=...) uses the given optax chain for the state and every step: a zero schedule keeps the
    policy exactly where it started, while the default Adam moves it."""
    frozen = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(optax.constant_schedule(0.0)))
    t = _trainer(train_world, tmp_path / "frozen", iterations=2, tx=frozen)
    before = t.host_params()
    t.iteration(0)
    t.iteration(1)
    assert t.tx is frozen
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(t.host_params())):
        np.testing.assert_array_equal(a, b)
    d = _trainer(train_world, tmp_path / "default", iterations=2)
    d.iteration(0)
    assert d.tx is ppo.default_optimizer(d.cfg.ppo)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(d.host_params())))
    assert bool(parallel.to_host(parallel.all_finite(d.state.params)))


def test_a_warm_start_past_M_is_accepted_with_a_notice(train_world, tmp_path):
    """risk.n >= risk.M: the original accepts it (α′ = B while m <= n, then ⌈αB⌉), and so do we, saying so."""
    lines = []
    argv = train_args(train_world, tmp_path / "run", iterations=3) + ["--risk-n", "5", "--risk-M", "3"]
    cfg = config_from_args(build_parser().parse_args(argv))
    t = T.Trainer(cfg, tmp_path / "run", progress=False, log=lines.append)
    b = cfg.train.batch_size
    assert [t.alpha_prime(m) for m in range(7)] == [b] * 6 + [int(np.ceil(cfg.risk.alpha * b))]
    notice = [x for x in lines if x.startswith("notice: risk.n=5 >= risk.M=3")]
    assert len(notice) == 1 and "RLHF throughout" in notice[0], lines
    t.close()


def test_each_seed_draws_its_value_head_from_an_sft_model(train_world, tmp_path):
    """From an SFT directory (head marked initial) every PPO seed starts from its own head, as the
    original's set_seed before loading; the run's config records the case (docs/paper.md #28)."""
    import shutil

    from rajax.io import hf
    from rajax.models.base import init_value_head

    cfg0, params = hf.load(train_world / "policy")
    sft = hf.save(tmp_path / "sft", cfg0, params, value_head="initial")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        if (train_world / "policy" / f).is_file():
            shutil.copy(train_world / "policy" / f, sft / f)
    heads = {}
    for seed in (1, 2):
        out = tmp_path / f"run{seed}"
        argv = train_args(train_world, out, iterations=1) + ["--policy", str(sft), "--seed", str(seed)]
        t = T.Trainer(config_from_args(build_parser().parse_args(argv)), out, progress=False, log=lambda *_: None)
        heads[seed] = jax.device_get(t.state.params["v_head"])
        assert t.cfg.model.value_head == "seed"  # what bin/train writes into config.yaml
        t.close()
    np.testing.assert_array_equal(heads[1]["kernel"], init_value_head(cfg0.n_embd, jax.random.key(1))["kernel"])
    assert not np.allclose(heads[1]["kernel"], heads[2]["kernel"])
    # A trained head (the default of hf.save, e.g. a PPO export) is loaded whatever the seed.
    out = tmp_path / "run3"
    t = T.Trainer(config_from_args(build_parser().parse_args(train_args(train_world, out, iterations=1))), out,
                  progress=False, log=lambda *_: None)
    np.testing.assert_array_equal(jax.device_get(t.state.params["v_head"])["kernel"], params["v_head"]["kernel"])
    assert t.cfg.model.value_head == "checkpoint"
    t.close()


def test_tail_metrics_say_where_the_mask_puts_the_update():
    """risk/kept_tail_frac: the share of kept episodes whose prompt is in the tail (prompt score below
    eval.tail_threshold); env/tail_reward_mean: the tail prompts' mean reward."""
    from types import SimpleNamespace

    from rajax.rewards import PythonReward

    reward = PythonReward(lambda t: -1.0 if "bad" in t else 1.0)
    fake = SimpleNamespace(reward=reward, cfg=SimpleNamespace(eval=SimpleNamespace(tail_threshold=0.0,
                                                                                   tail_inclusive=False)))
    prompts = ["bad a", "good b", "bad c", "good d"]
    scores = np.array([-2.0, 3.0, 0.5, 1.0])
    keep = np.array([True, False, True, True])
    m = T.Trainer.tail_metrics(fake, prompts, scores, keep)
    assert m["risk/tail_frac"] == 0.5 and m["risk/kept_tail_frac"] == pytest.approx(2 / 3)
    assert m["env/tail_reward_mean"] == pytest.approx(-0.75)
    none = T.Trainer.tail_metrics(fake, ["good"] * 4, scores, keep)
    assert none["risk/tail_frac"] == 0.0 and "env/tail_reward_mean" not in none
    assert T.Trainer.tail_metrics(SimpleNamespace(reward=lambda p, r: 0.0), prompts, scores, keep) == {}


def test_a_run_made_from_python_is_a_run_directory_the_cli_resumes(train_world, tmp_path):
    """Trainer(cfg, out) without the CLI: config.yaml from the start, and after run() and finish() the
    curves, the model and the evaluation, all in the manifest; `rajax train --resume` continues it."""
    import json

    from rajax.cli import train
    from rajax.io.rundir import MANIFEST

    out = tmp_path / "lib"
    t = _trainer(train_world, out, iterations=1)
    assert (out / "config.yaml").is_file()
    t.run()
    done = t.finish()
    t.close()
    assert done["eval"] == out / "eval" and (out / "eval" / "report.md").is_file()
    assert (out / "curves.png").is_file() and (out / "model" / "config.json").is_file()
    entries = json.loads((out / MANIFEST).read_text())["entries"]
    assert {"config.yaml", "curves.png", "metrics.jsonl"} <= set(entries)
    assert any(e.startswith("checkpoints/") for e in entries)  # the manifest lists files, not folders
    assert "eval/report.md" in entries and "model/config.json" in entries
    assert train.main(["--resume", str(out), "--iterations", "2", "--quiet", "--no-eval"]) == 0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in recs] == [0, 1]


def test_the_console_rate_is_recent_and_leaves_out_the_compiling_iteration():
    """Iterations of 17.3 s (compiling), then 0.5, 0.4, 0.45 s: 0.45 s/it, not the cumulative 4.66;
    the compile time is said once."""
    pace = T.Pace(window=10)
    pace.tick(17.3)
    assert pace.rate() == 17.3 and pace.compile_note() is None  # nothing to compare with yet
    for s in (0.5, 0.4, 0.45):
        pace.tick(s)
    assert pace.rate() == pytest.approx(0.45)
    assert pace.eta(100) == "00:45"
    note = pace.compile_note()
    assert "17.3 s" in note and "16.8 s" in note and pace.compile_note() is None
    for _ in range(10):
        pace.tick(1.0)
    assert pace.rate() == pytest.approx(1.0)  # only the last 10


def test_progress_lines_show_the_recent_rate_and_the_compile_time_once(train_world, tmp_path):
    lines = []
    cfg = config_from_args(build_parser().parse_args(train_args(train_world, tmp_path / "p", iterations=3)))
    t = T.Trainer(cfg, tmp_path / "p", progress=True, log=lines.append, report_to=())
    t.run()
    t.close()
    progress = [x for x in lines if x.startswith("RA-RLHF ")]
    assert [x.split()[1] for x in progress] == ["1/3", "2/3", "3/3"]
    assert sum("compiling the jitted steps" in x for x in lines) == 1
    assert all(x.endswith(" s/it)") for x in progress)  # Pace's rate (its values: the test above)


def test_a_reward_passed_to_the_trainer_scores_the_rollouts(train_world, tmp_path):
    """Trainer(reward=...) is the reward of every iteration (docs/architecture.md, "Where new things go")."""
    from rajax.rewards import PythonReward

    reward = PythonReward(lambda text: float(len(text)))
    t = _trainer(train_world, tmp_path / "r", iterations=1, reward=reward)
    assert t.reward is reward
    _, (prompts, responses, scores) = t.iteration(0)
    np.testing.assert_array_equal(scores, [len(p + r) for p, r in zip(prompts, responses)])
    t.close()


def test_a_library_trainer_refuses_wandb_without_wandb_before_loading(train_world, tmp_path, monkeypatch):
    """The check comes first in Trainer too: nothing is loaded and no run directory is made."""
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)
    cfg = config_from_args(build_parser().parse_args(train_args(train_world, tmp_path / "run")))
    called = []
    monkeypatch.setattr(T.tasks, "prepare", lambda *a, **k: called.append(1))
    with pytest.raises(ValueError, match=r"--report-to wandb needs the wandb package"):
        T.Trainer(cfg, tmp_path / "run", report_to=("wandb",))
    assert not called and not (tmp_path / "run").exists()
