"""rajax.cli.options: every config key is a flag with its type, choices, one line of help and the
preset's value; aliases users know; --print-config."""
import dataclasses

import pytest
import yaml

from rajax import config as C
from rajax.cli import options
from rajax.cli import train as cli_train


def test_every_key_is_a_flag_with_help_and_the_presets_value():
    text = cli_train.build_parser(["--task", "rtp"]).format_help()
    for key in options.keys()[1:]:
        assert f"--{key}" in text, key
    for section, cls in C.SECTIONS.items():
        helps = options.field_help(cls)
        for f in dataclasses.fields(cls):
            assert helps.get(f.name), f"{section}.{f.name} has no help comment in its dataclass"
    # The help shows the selected preset's values (RTP's learning rate, M and revision), not the defaults.
    rtp = " ".join(cli_train.build_parser(["--task", "rtp"]).format_help().split())
    assert "[preset: 2.82e-05]" in rtp and "[preset: 452]" in rtp
    syn = " ".join(cli_train.build_parser(["--task", "synthetic"]).format_help().split())
    assert "[preset: 0.0003]" in syn and "{kl,abs,mse,full}" in syn and "{diluted,kept_mean,all}" in syn


def test_flags_aliases_and_set_agree(tmp_path):
    def cfg(*argv):
        p = cli_train.build_parser(list(argv))
        return cli_train.config_from_args(p.parse_args(list(argv)))

    base = ["--task", "rtp"]
    a = cfg(*base, "--ppo.kl-stat", "kept_mean", "--risk.alpha", "0.4", "--lr", "2e-5", "--batch-size", "64")
    b = cfg(*base, "--set", "ppo.kl_stat=kept_mean", "--set", "risk.alpha=0.4", "--set", "ppo.learning_rate=2e-5",
            "--set", "train.batch_size=64", "--set", "ppo.mini_batch_size=64")
    c = cfg(*base, "--ppo.kl_stat", "kept_mean", "--alpha", "0.4", "--ppo.learning-rate", "2e-5",
            "--train.batch_size", "64")
    assert a == b == c and a.ppo.mini_batch_size == 64  # --batch-size also sets the PPO minibatch
    assert cfg(*base, "--set", "risk.alpha=0.3", "--alpha", "0.5").risk.alpha == 0.5  # a flag wins over --set
    assert cfg(*base, "--eval.cvar-alphas", "[0.1,0.3]").eval.cvar_alphas == (0.1, 0.3)
    assert cfg(*base, "--risk.M", "null").risk.M is None
    with pytest.raises(ValueError, match="ppo.kl_stat='mean' is not valid; choose one of diluted, kept_mean, all"):
        cfg(*base, "--ppo.kl-stat", "mean")
    assert options.typed_flag(["--lr", "1"], "ppo.learning_rate") == "--lr"
    assert options.typed_flag(["--ppo.learning-rate=1"], "ppo.learning_rate") == "--ppo.learning-rate"


def test_print_config_prints_the_resolved_yaml(capsys):
    assert cli_train.main(["--task", "rtp", "--alpha", "0.3", "--ppo.kl-stat", "kept_mean", "--print-config"]) == 0
    out = capsys.readouterr().out
    got = C.from_dict(yaml.safe_load(out))
    assert got.risk.alpha == 0.3 and got.ppo.kl_stat == "kept_mean" and got.task == "rtp"
    assert got == C.load_config("rtp", overrides=["risk.alpha=0.3", "ppo.kl_stat=kept_mean"])
