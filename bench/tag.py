"""Pass a step's output through, and append its JSON lines, tagged with the step, to a results file.

    some-command 2>&1 | python bench/tag.py STEP results.jsonl

Every line is echoed to stdout (bench/gpu.sh's log); every line that is a JSON object is also appended
to the results file as ``{"step": STEP, "t_s": seconds since the step started, ...}`` and flushed at
once, so a step killed by its timeout keeps every line it printed.
"""
import json
import sys
import time


def tag(step: str, lines, out, echo, t0: float) -> int:
    n = 0
    for line in lines:
        echo.write(line)
        echo.flush()
        s = line.strip()
        if not s.startswith("{"):
            continue
        try:
            obj = json.loads(s)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.write(json.dumps({"step": step, "t_s": round(time.monotonic() - t0, 2), **obj}) + "\n")
            out.flush()
            n += 1
    return n


if __name__ == "__main__":
    with open(sys.argv[2], "a") as f:
        tag(sys.argv[1], sys.stdin, f, sys.stdout, time.monotonic())
