"""bench/summary.py on a recorded results.jsonl (tests/bench/data: `MODEL=tiny bash bench/gpu.sh` on the
2-core CPU machine, 2026-12-04). Every expected number is read from the recording, not written here."""
import importlib.util
import json
import pathlib
import statistics

import pytest

_HERE = pathlib.Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_summary", _HERE.parents[1] / "bench" / "summary.py")
S = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(S)
RECORDED = _HERE / "data" / "gpu_tiny_results.jsonl"


@pytest.fixture
def rows():
    return S.load(RECORDED.read_text().splitlines())


def section(md: str, name: str) -> list[str]:
    lines = md.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith(f"### {name}"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("### ")), len(lines))
    return lines[start:end]


def cells(lines: list[str], label: str) -> list[str]:
    row = next(x for x in lines if x.startswith(f"| {label} |"))
    return [c.strip() for c in row.strip("|").split("|")]


def result(rows, step, key):
    return next(r for r in reversed(rows) if r["step"] == step and key in r)


def test_each_pair_has_both_sides_and_the_speed_up(rows):
    md = S.summary(rows, "abc1234")
    assert md.startswith("## bench/gpu.sh at abc1234")
    for pair in ("imdb_bf16", "imdb_f32", "rtp_bf16"):
        ours = result(rows, f"rajax_{pair}", "median_s")["median_s"]
        peer = result(rows, f"peer_{pair}", "peer")["median_s"]
        sec = section(md, pair)
        for label, mine, theirs in S.PHASES:
            if not all(k in peer for k in theirs):
                continue
            c = cells(sec, label.rstrip())
            p = sum(peer[k] for k in theirs)
            assert float(c[1]) == pytest.approx(ours[mine], abs=1e-3)
            assert float(c[2]) == pytest.approx(p, abs=1e-3)
            assert float(c[3].rstrip("x")) == pytest.approx(p / ours[mine], rel=1e-2)
        # The chunked generation ran in the bf16 imdb pair only (--chunked-iters 0 elsewhere).
        assert any(x.startswith("|   peer: TRL 0.7 chunks") for x in sec) == (pair == "imdb_bf16")


def test_mfu_is_against_the_matmul_rate_of_the_same_dtype(rows):
    md = S.summary(rows)
    rates = {r["dtype"]: r["tflop_per_s"] for r in rows if r.get("bench") == "matmul"}
    assert set(rates) == {"bfloat16", "float32"}
    for pair, dt in (("imdb_bf16", "bfloat16"), ("imdb_f32", "float32")):
        tf = result(rows, f"rajax_{pair}", "median_s")["ppo_tflop_per_s"]
        line = next(x for x in section(md, pair) if x.startswith("- PPO update"))
        assert f"MFU {100 * tf / rates[dt]:.0f}% of the measured {dt} matmul rate" in line
        assert "FLOPs = 3 x epochs x" in line


def test_the_historical_anchor_is_in_the_imdb_tables(rows):
    md = S.summary(rows)
    for pair in ("imdb_bf16", "imdb_f32"):
        c = cells(section(md, pair), "paper's runs (TRL 0.7 fork, V100/A100; 52 min / 194 iterations)")
        assert float(c[2]) == pytest.approx(52 * 60 / 194, abs=0.05)
    assert not any(x.startswith("| paper's") for x in section(md, "rtp_bf16"))


def test_every_step_is_listed_with_its_exit_status(rows):
    md = S.summary(rows)
    ends = [r for r in rows if "rc" in r]
    assert {e["step"] for e in ends} >= {"prepare", "env", "matmul", "rajax_imdb_bf16", "peer_imdb_bf16",
                                         "rajax_imdb_f32", "peer_imdb_f32", "rajax_rtp_bf16", "peer_rtp_bf16",
                                         "sampler_bf16", "decode_hlo"}
    steps = section(md, "Steps")
    for e in ends:
        c = cells(steps, e["step"])
        assert (int(c[1]), int(c[2]), int(c[3])) == (e["rc"], e["wall_s"], e["limit_s"])


def test_a_step_killed_by_its_timeout_is_summarised_from_its_progress(rows):
    cut = [r for r in rows if not (r["step"] == "rajax_imdb_bf16" and ("median_s" in r or "rc" in r))]
    cut.append({"step": "rajax_imdb_bf16", "rc": 124, "wall_s": 180, "limit_s": 180})
    its = [r for r in cut if r["step"] == "rajax_imdb_bf16" and r.get("progress") == "iter"]
    assert its
    md = S.summary(cut)
    sec = section(md, "imdb_bf16")
    assert f"(rajax partial: {len(its)} iterations before the kill)" in sec[0]
    c = cells(sec, "iteration (peer: torch best)")
    assert float(c[1]) == pytest.approx(statistics.median(r["total"] for r in its), abs=1e-3)
    assert cells(section(md, "Steps"), "rajax_imdb_bf16")[4] == "timed out after progress iter"


def test_a_killed_peer_says_how_many_iterations_it_ran(rows):
    cut = [r for r in rows if not (r["step"] == "peer_imdb_f32" and ("peer" in r or "rc" in r))]
    cut.append({"step": "peer_imdb_f32", "rc": 124, "wall_s": 90, "limit_s": 90})
    its = [r for r in cut if r["step"] == "peer_imdb_f32" and r.get("warmup") is False]
    md = S.summary(cut)
    assert f"(peer partial: {len(its)} iterations)" in section(md, "imdb_f32")[0]
    last = max(r["iter"] for r in its)
    assert cells(section(md, "Steps"), "peer_imdb_f32")[4] == f"timed out after peer iteration {last}"


def test_skipped_steps_and_a_line_cut_by_a_kill(rows):
    text = RECORDED.read_text()
    text += json.dumps({"step": "rajax_rtp_f32", "skipped": "budget", "left_s": 12, "min_s": 50}) + "\n"
    text += '{"step": "peer_rtp_f32", "progress": "se'  # the kill cut the last line
    md = S.summary(S.load(text.splitlines()))
    assert cells(section(md, "Steps"), "rajax_rtp_f32")[4] == "skipped: budget"
    assert "peer_rtp_f32" not in md


def test_targets_use_the_measured_ratios(rows):
    md = S.summary(rows)
    ours = result(rows, "rajax_imdb_bf16", "median_s")
    peer = result(rows, "peer_imdb_bf16", "peer")["median_s"]
    tg = section(md, "Targets")
    c = cells(tg, ">= 8x the bf16 peer's iteration_torch_best")
    r = peer["iteration_torch_best"] / ours["median_s"]["total"]
    assert float(c[1]) == pytest.approx(r, abs=0.01) and c[2] == ("yes" if r >= 8 else "no")
    c = cells(tg, "imdb iteration <= 0.15 s")
    assert c[2] == ("yes" if ours["median_s"]["total"] <= 0.15 else "no")
    grew = max(result(rows, f"rajax_{p}", "median_s")["compile_s_in_timed_iters"]
               for p in ("imdb_bf16", "imdb_f32", "rtp_bf16"))
    assert cells(tg, "no compile inside a timed iteration")[2] == ("yes" if grew == 0 else "no")


def test_the_command_line_prints_the_same(rows, capsys):
    S.main([str(RECORDED), "--rev", "r1"])
    assert capsys.readouterr().out == S.summary(rows, "r1")


def test_a_pair_with_no_results_says_so(rows):
    cut = [r for r in rows if r["step"] not in ("rajax_rtp_bf16", "peer_rtp_bf16") or "rc" in r]
    sec = section(S.summary(cut), "rtp_bf16")
    assert sec[0] == "### rtp_bf16: no results from either side (the Steps table says why)"
    assert not any(x.startswith("| sampling") for x in sec)
