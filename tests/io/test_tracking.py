"""rajax.io.tracking: metrics.jsonl and TensorBoard events, sample CSVs, the curves figure."""
import csv
import json

import numpy as np

from rajax.io import tracking


def _events(tb_dir):
    """{tag: [(step, value)]} from the TensorBoard event files: TFRecord framing (length, crc, Event
    protobuf, crc) decoded with tensorboardX's own Event message."""
    import struct

    from tensorboardX.proto import event_pb2

    out = {}
    for f in sorted(tb_dir.glob("events.out.tfevents.*")):
        data, i = f.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                out.setdefault(v.tag, []).append((ev.step, round(v.simple_value, 6)))
    return out


def test_metrics_jsonl_and_tensorboard_hold_the_same_scalars(tmp_path):
    w = tracking.MetricsWriter(tmp_path)
    for m in range(3):
        w.write(m, {"env/reward_mean": 0.5 * m, "objective/kl": np.float32(m + 1), "bad": float("nan")})
    w.close()
    recs = tracking.read_metrics(tmp_path)
    assert [r["iteration"] for r in recs] == [0, 1, 2]
    assert recs[2]["env/reward_mean"] == 1.0 and recs[1]["objective/kl"] == 2.0
    assert recs[0]["bad"] is None  # strict JSON: NaN is written as null, never carried as NaN
    json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    ev = _events(tmp_path / "tb")
    assert ev["env/reward_mean"] == [(0, 0.0), (1, 0.5), (2, 1.0)]
    assert "bad" not in ev


def test_resume_truncates_to_one_trajectory(tmp_path):
    w = tracking.MetricsWriter(tmp_path)
    for m in range(4):
        w.write(m, {"x": m})
    w.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"iteration": 4, "x": ')  # a line cut by a kill mid-write
    w = tracking.MetricsWriter(tmp_path, start_iteration=2)  # resumed from checkpoint 2
    w.write(2, {"x": 20})
    w.close()
    assert [(r["iteration"], r["x"]) for r in tracking.read_metrics(tmp_path)] == [(0, 0), (1, 1), (2, 20)]


def test_samples_csv_and_curves_png(tmp_path):
    path = tmp_path / "samples" / "iter_00003.csv"
    tracking.write_samples(path, ["p1, with comma", "p2"], [' r1 "quoted"\nline', "r2"], [1.5, -2.25],
                           {"ground_truth": np.array([3.0, 4.0])})
    rows = list(csv.reader(path.open(newline="")))
    assert rows[0] == ["prompt", "response", "reward", "ground_truth"]
    assert rows[1] == ["p1, with comma", ' r1 "quoted"\nline', "1.5", "3"] and rows[2][2] == "-2.25"
    w = tracking.MetricsWriter(tmp_path, tensorboard=False)
    for m in range(5):
        w.write(m, {"env/reward_mean": m, "env/reward_cvar": m - 1, "objective/kl": 1.0,
                    "objective/kl_coef": 0.2, "risk/alpha_prime": 8 - m})
    w.close()
    from matplotlib.image import imread

    png = tracking.plot_curves(tmp_path)
    img = imread(png)
    assert png.name == "curves.png" and img.ndim == 3 and img.shape[1] > 4 * img.shape[0] / 2 and img.std() > 0


def test_wandb_offline_logs_the_same_tags_and_the_config(tmp_path, monkeypatch):
    pytest = __import__("pytest")
    pytest.importorskip("wandb")
    from tiny import wandb_offline_records

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    w = tracking.MetricsWriter(tmp_path, tensorboard=False, wandb=True, config={"risk": {"alpha": 0.2}},
                               run_name="run-x")
    for m in range(3):
        w.write(m, {"env/reward_mean": 0.5 * m, "objective/kl": 1.0, "risk/alpha_prime": 8 - m, "bad": float("nan")})
    w.close()
    hist, cfg = [], {}
    records = wandb_offline_records(tmp_path)
    kinds = [r.WhichOneof("record_type") for r in records]
    for kind, r in zip(kinds, records):
        if kind == "history":
            hist.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
        elif kind == "run":
            cfg = {i.key: json.loads(i.value_json) for i in r.run.config.update}
    assert [h["env/reward_mean"] for h in hist] == [0.0, 0.5, 1.0] and [h["_step"] for h in hist] == [0, 1, 2], kinds
    assert all(h["objective/kl"] == 1.0 and "bad" not in h for h in hist)  # NaN is not sent
    assert cfg["risk"] == {"alpha": 0.2}
    assert [r["iteration"] for r in tracking.read_metrics(tmp_path)] == [0, 1, 2]  # metrics.jsonl as always


def test_wandb_run_id_is_the_one_given_and_fresh_ids_differ(tmp_path, monkeypatch):
    """Two runs whose directories share a name get two W&B runs: the id is drawn per run, not derived
    from the name (the old sha1(basename) merged every user's default run into one)."""
    pytest = __import__("pytest")
    pytest.importorskip("wandb")
    from tiny import wandb_offline_records

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    ids = [tracking.new_run_id() for _ in range(2)]
    assert ids[0] != ids[1] and all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    for d, run_id in zip(("a", "b"), ids):
        w = tracking.MetricsWriter(tmp_path / d / "run", tensorboard=False, wandb=True, run_name="run", run_id=run_id)
        w.write(0, {"x": 1.0})
        w.close()
        wandb_offline_records(tmp_path / d / "run")
    got = [p.name.rsplit("-", 1)[-1] for d in ("a", "b") for p in (tmp_path / d / "run" / "wandb").glob("offline-run-*")]
    assert got == ids
