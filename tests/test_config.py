"""rajax.config: presets carry the paper's values (docs/paper.md §2-§4), overrides coerce, errors are one line."""
import dataclasses

import pytest
import yaml

from rajax import config as C
from rajax.core.ppo import PPOConfig


def one_line_error(exc_type, fn, *args, match=None, **kw):
    with pytest.raises(exc_type, match=match) as ei:
        fn(*args, **kw)
    msg = str(ei.value)
    assert msg and "\n" not in msg, msg
    return msg


# --- presets (docs/paper.md §2.1, §1.3, §3, §4.1-4.2) ---------------------------------------------------
def test_imdb_preset():
    c = C.load_config("imdb")
    assert c.task == "imdb" and c.data.source == "imdb"
    assert (c.generation.prompt_tokens, c.generation.max_new_tokens, c.generation.min_length) == (64, 48, 48)
    assert c.ppo.learning_rate == pytest.approx(1.41e-5)
    assert (c.risk.alpha, c.risk.n, c.risk.rho, c.risk.M, c.risk.scheduler) == (0.4, 30, 0.95, None, "new")
    assert (c.reward.model, c.reward.kind) == ("lvwerra/distilbert-imdb", "positive")
    assert (c.eval.tail_threshold, c.eval.tail_inclusive, c.eval.test_size) == (-2.5, True, 5000)
    assert (c.eval.ppl_num_texts, c.eval.ppl_max_chars) == (5000, 1000)
    assert c.train.seed == 42


def test_jigsaw_preset_and_its_M_comment():
    c = C.load_config("jigsaw")
    assert (c.generation.prompt_tokens, c.generation.max_new_tokens, c.generation.min_length) == (8, 32, 32)
    assert c.ppo.learning_rate == pytest.approx(1.41e-5)
    assert (c.risk.alpha, c.risk.n, c.risk.rho, c.risk.M) == (0.2, 30, 0.95, None)
    assert (c.reward.model, c.reward.kind) == ("unitary/toxic-bert", "toxic")
    assert (c.eval.tail_threshold, c.eval.tail_inclusive, c.eval.test_size) == (5.0, True, None)
    assert (c.eval.ppl_num_texts, c.eval.ppl_max_chars) == (None, 500)
    assert c.train.seed == 4
    text = (C.preset_dir() / "jigsaw.yaml").read_text()
    assert "264" in text and "288" in text  # the as-run M (quirk #7) and the paper's table


def test_rtp_preset():
    c = C.load_config("rtp")
    assert (c.generation.prompt_tokens, c.generation.max_new_tokens, c.generation.min_length) == (32, 32, 32)
    assert c.ppo.learning_rate == pytest.approx(2.82e-5)
    assert (c.risk.alpha, c.risk.n, c.risk.rho, c.risk.M) == (0.2, 30, 0.95, 452)
    assert (c.eval.tail_threshold, c.eval.tail_inclusive, c.eval.test_size) == (5.0, False, None)
    assert c.data.revision.startswith("f2162971")
    assert c.train.seed == 4


@pytest.mark.parametrize("task", ["imdb", "jigsaw", "rtp"])
def test_presets_share_the_trl_ppo_values(task):
    c = C.load_config(task)
    p = c.ppo
    assert (p.ppo_epochs, p.mini_batch_size, p.gamma, p.lam, p.cliprange, p.cliprange_value, p.vf_coef) == (
        4, 128, 1.0, 0.95, 0.2, 0.2, 0.1)
    assert (p.ratio_threshold, p.max_grad_norm, p.kl_penalty, p.risk_stat, p.kl_stat) == (
        10.0, None, "kl", "gae_return", "diluted")
    assert (c.kl.adaptive, c.kl.init_coef, c.kl.target, c.kl.horizon) == (True, 0.2, 6.0, 10000)
    assert (c.train.batch_size, c.generation.top_k, c.generation.top_p, c.generation.temperature) == (128, 0, 1.0, 1.0)
    assert c.model.policy == "gpt2" and c.generation.min_length_mode == "trl"
    assert isinstance(c.ppo, PPOConfig)
    # every key of the preset file is a real field (no silently ignored typos)
    raw = yaml.safe_load((C.preset_dir() / f"{task}.yaml").read_text())
    assert C.to_dict(C.from_dict(raw)) == C.to_dict(c)


# --- overrides, coercion, user YAML -----------------------------------------------------------
def test_overrides_coerce_strings():
    c = C.load_config("rtp", overrides=["ppo.learning_rate=2e-5", "risk.M=null", "train.eval_at_end=false",
                                        "eval.cvar_alphas=[0.1, 0.3]", "train.iterations=7",
                                        "ppo.max_grad_norm=1", "reward.sign=-1", "model.policy=runs/sft/model"])
    assert c.ppo.learning_rate == 2e-5 and isinstance(c.ppo.learning_rate, float)
    assert c.risk.M is None and c.train.eval_at_end is False and c.train.iterations == 7
    assert c.eval.cvar_alphas == (0.1, 0.3) and c.ppo.max_grad_norm == 1.0 and c.reward.sign == -1
    assert c.model.policy == "runs/sft/model"
    hash(c)  # frozen and hashable


def test_dict_overrides_user_yaml_and_precedence(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("ppo:\n  learning_rate: 3e-5\nrisk:\n  alpha: 0.3\n")  # PyYAML reads 3e-5 as a string
    c = C.load_config("imdb", user_yaml=user, overrides={"risk.alpha": 0.25, "train.seed": "7"})
    assert c.ppo.learning_rate == 3e-5 and c.risk.alpha == 0.25 and c.train.seed == 7
    assert c.risk.n == 30  # untouched preset value survives the section merge
    # positional form (used by rajax.sft) and a Config as the base
    c2 = C.load_config(c, None, ["risk.alpha=1.0"])
    assert c2.risk.alpha == 1.0 and c2.ppo.learning_rate == 3e-5


def test_round_trip_dump_and_load(tmp_path):
    c = C.load_config("jigsaw", overrides=["risk.M=264", "eval.cvar_alphas=[0.2]"])
    path = tmp_path / "run" / "config.yaml"
    text = C.dump_yaml(c, path)
    assert path.read_text() == text and "risk:" in text
    assert C.load_config(str(path)) == c
    assert C.from_dict(C.to_dict(c)) == c


def test_partial_yaml_takes_defaults(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("task: mytask\ndata:\n  source: file\n  path: prompts.csv\n  text_column: body\n")
    c = C.load_config(p)
    assert c.task == "mytask" and c.data.text_column == "body" and c.ppo == PPOConfig()


# --- one-line errors --------------------------------------------------------------------------
def test_unknown_keys_name_the_key_and_the_valid_ones(tmp_path):
    msg = one_line_error(ValueError, C.load_config, "rtp", overrides=["ppo.lr=1e-5"])
    assert "ppo.lr" in msg and "learning_rate" in msg
    msg = one_line_error(ValueError, C.load_config, "rtp", overrides=["optim.lr=1"])
    assert "optim" in msg and "ppo" in msg
    p = tmp_path / "bad.yaml"
    p.write_text("risk:\n  alpha: 0.2\n  beta: 3\n")
    msg = one_line_error(ValueError, C.load_config, "rtp", user_yaml=p)
    assert "risk.beta" in msg and "alpha" in msg
    msg = one_line_error(ValueError, C.load_config, "nosuchtask")
    assert "imdb" in msg and "rtp" in msg
    one_line_error(ValueError, C.load_config, "rtp", overrides=["ppo.learning_rate"])
    one_line_error(FileNotFoundError, C.load_config, "rtp", user_yaml=tmp_path / "missing.yaml")
    msg = one_line_error(ValueError, C.load_config, "rtp", overrides=["ppo.learning_rate=fast"])
    assert "ppo.learning_rate" in msg
    msg = one_line_error(ValueError, C.load_config, "rtp", overrides=["train.batch_size=12.5"])
    assert "train.batch_size" in msg
    msg = one_line_error(ValueError, C.load_config, "rtp", overrides=["train.eval_at_end=maybe"])
    assert "eval_at_end" in msg
    msg = one_line_error(ValueError, C.load_config, "rtp", overrides=["train.seed=null"])
    assert "train.seed" in msg


@pytest.mark.parametrize("override, words", [
    ("risk.alpha=0", "risk.alpha"), ("risk.alpha=1.5", "risk.alpha"), ("risk.rho=0", "risk.rho"),
    ("risk.rho=1.01", "risk.rho"), ("risk.n=-1", "risk.n"), ("eval.samples_per_prompt=0", "samples_per_prompt"),
    ("risk.scheduler=cosine", "risk.scheduler"), ("ppo.mini_batch_size=100", "mini_batch_size"),
    ("generation.max_new_tokens=0", "max_new_tokens"), ("generation.prompt_tokens=0", "prompt_tokens"),
    ("generation.min_length_mode=hf", "min_length_mode"), ("generation.top_p=0", "top_p"),
    ("model.dtype=float16", "model.dtype"), ("reward.kind=funny", "reward.kind"),
    ("ppo.kl_stat=mean", "kl_stat"),
    ("eval.cvar_alphas=[0.1, 2]", "cvar_alphas"), ("train.keep_checkpoints=0", "keep_checkpoints"),
])
def test_validation_errors_are_one_line(override, words):
    msg = one_line_error(ValueError, C.load_config, "rtp", overrides=[override])
    assert words in msg


def test_validate_device_divisibility():
    c = C.load_config("rtp", overrides=["train.batch_size=12", "ppo.mini_batch_size=12", "eval.batch_size=16"])
    C.validate(c, num_devices=4)
    msg = one_line_error(ValueError, C.validate, c, num_devices=8)
    assert "train.batch_size=12" in msg and "8 devices" in msg
    # RLHF baseline (alpha = 1): n >= M is irrelevant and accepted
    C.validate(dataclasses.replace(c, risk=dataclasses.replace(c.risk, alpha=1.0, n=500)))
