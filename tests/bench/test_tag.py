"""bench/tag.py: a step's output passes through whole, and its JSON lines are kept, tagged."""
import importlib.util
import io
import json
import pathlib

_PATH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "tag.py"
_spec = importlib.util.spec_from_file_location("bench_tag", _PATH)
tag = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tag)


def test_json_lines_are_tagged_and_everything_is_echoed():
    lines = ['warning: not json\n', '{"progress": "setup", "s": 1.5}\n', '== {"not": json\n', '[1, 2]\n',
             '{"median_s": {"ppo": 0.25}}\n']
    out, echo = io.StringIO(), io.StringIO()
    n = tag.tag("rajax_imdb_bf16", lines, out, echo, t0=0.0)
    assert echo.getvalue() == "".join(lines)
    kept = [json.loads(x) for x in out.getvalue().splitlines()]
    assert n == len(kept) == 2
    assert all(k["step"] == "rajax_imdb_bf16" and k["t_s"] >= 0 for k in kept)
    assert kept[0]["s"] == 1.5 and kept[1]["median_s"] == {"ppo": 0.25}
