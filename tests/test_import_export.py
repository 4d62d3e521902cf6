"""`wb import tensorboard|jsonl` and `wb export -f parquet|tensorboard`, through the real CLI
entry point (in this process), real SummaryWriter event files, real pyarrow, and
tensorboard's own reader."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import wb_inproc
from workbench.records import DistRecord
from workbench.run_record import RunRecord
from workbench.signals.tails import summarize
from workbench.store import FINITE, NAN, NEG_INF, POS_INF, Batch, Store

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

T0 = 1_700_000_000.0
N_LOSS = 12_000  # > one import batch (10k records), so batches are cut and written


def _dist(step: int, key: str, values: Any, wall: float) -> tuple:
    s = summarize(values)
    return (step, key, s.count, s.min, s.max, s.mean, s.p50, s.p90, s.p99, json.dumps(s.edges),
            json.dumps(s.counts), s.nonfinite, wall)


@pytest.fixture
def source(store_dir: Path) -> dict[str, Any]:
    """A finished run holding every record kind, non-finite values, and flushes that
    interleave kinds (so an import must cut its batches to keep the order)."""
    rng = np.random.default_rng(0)
    with Store(store_dir) as st:
        row = st.create_run(kind="pretrain", name="src", status="running", launcher="sdk",
                            config={"lr": 0.01, "model": {"d": 64}}, total_steps=N_LOSS,
                            spec='kind = "pretrain"\n')
        run_id = row.id
        st.write_batch(Batch(
            run_id,
            [(i, "train/loss", 3.0 / (i + 1), T0 + i * 0.01, FINITE) for i in range(N_LOSS)],
            [_dist(0, "rollout/length", rng.normal(50, 10, 500), T0 + 1.5),
             _dist(1, "staleness", rng.integers(0, 4, 100), T0 + 1.6)],
            [(0, "attn/max_logit_heads", json.dumps([2, 3]), "float32",
              np.arange(6, dtype=np.float32).tobytes(), T0 + 1.7)],
            [(0, "stage", "info", json.dumps({"name": "warmup"}), T0 + 1.8)],
        ))
        st.write_batch(Batch(run_id, events=[
            (5, "loss_spike", "warning", json.dumps({"value": float("nan"), "z": 4.5}),
             T0 + 2.0)]))
        st.write_batch(Batch(
            run_id,
            [(N_LOSS, "train/loss", None, T0 + 200, NAN),
             (N_LOSS, "train/grad_norm", math.inf, T0 + 200, POS_INF),
             (N_LOSS, "train/lr", -math.inf, T0 + 200, NEG_INF)],
            [_dist(N_LOSS, "rollout/length", [], T0 + 200.5)],  # an empty distribution
        ))
        st.update_run(run_id, status="finished", ended=T0 + 201, exit_code=0,
                      last_step=N_LOSS, started=T0)
        return {"id": run_id, "name": "src", "store": store_dir}


def _jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def _records(store_dir: Path, run: str) -> list[dict[str, Any]]:
    """The run's exported records (not the run line), ids removed."""
    lines = _jsonl(wb_inproc("export", run, "--store", str(store_dir), check=True).stdout)
    return [{k: v for k, v in r.items() if k != "id"} for r in lines[1:]]


def _runs(store_dir: Path) -> list[RunRecord]:
    with Store(store_dir) as st:
        return st.runs()


def _error_line(proc: Any) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# -- jsonl: export -> import -> export ------------------------------------------------------


def test_jsonl_round_trip_is_exact(source: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "src.jsonl"
    wb_inproc("export", source["id"], "-o", str(path), check=True)
    assert path.read_text() == wb_inproc("export", source["id"], check=True).stdout  # -o = stdout
    head = _jsonl(path.read_text())[0]
    (imported,) = json.loads(wb_inproc("import", "jsonl", str(path), "--json", check=True).stdout)
    assert imported["name"] == "src-1"  # the name is taken in this store: NAME-N
    assert imported["id"] != source["id"]
    assert (imported["scalars"], imported["dists"], imported["matrices"],
            imported["events"]) == (N_LOSS + 3, 3, 1, 2)
    assert _records(source["store"], imported["id"]) == _records(source["store"], source["id"])
    with Store(source["store"]) as st:
        new = st.get_run(imported["id"])
    assert new.launcher == "import" and new.pid is None
    for field in ("kind", "status", "config", "spec", "created", "started", "ended",
                  "last_step", "total_steps", "exit_code", "host"):
        assert new.to_dict()[field] == head[field], field
    # Into another store the name is free, and the round trip holds there too.
    other = tmp_path / "other"
    (again,) = json.loads(wb_inproc("import", "jsonl", str(path), "--json", "--store", str(other),
                                    check=True).stdout)
    assert again["name"] == "src"
    assert _records(other, again["id"]) == _records(source["store"], source["id"])


def test_jsonl_import_from_stdin_with_a_name(source: dict[str, Any], tmp_path: Path) -> None:
    text = wb_inproc("export", source["id"], "--keys", "stage", check=True).stdout
    proc = wb_inproc("import", "jsonl", "-", "--name", "copy", input=text)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("imported stdin as copy (")
    assert [r["kind"] for r in _records(source["store"], "copy")] == ["stage"]
    # A taken --name is refused, and nothing is created.
    before = len(_runs(source["store"]))
    path = tmp_path / "x.jsonl"
    path.write_text(text)
    line = _error_line(wb_inproc("import", "jsonl", str(path), "--name", "copy"))
    assert "'copy' already exists" in line
    assert len(_runs(source["store"])) == before


def test_an_active_run_imports_as_lost(source: dict[str, Any], tmp_path: Path) -> None:
    """No process here will ever finish an exported snapshot of a running run."""
    lines = wb_inproc("export", source["id"], "-k", "stage", check=True).stdout.splitlines()
    head = json.loads(lines[0])
    head["status"] = "running"
    path = tmp_path / "live.jsonl"
    path.write_text("\n".join([json.dumps(head), *lines[1:]]) + "\n")
    (imported,) = json.loads(wb_inproc("import", "jsonl", str(path), "--json", check=True).stdout)
    assert {r.id: r.status for r in _runs(source["store"])}[imported["id"]] == "lost"


def _bad_files(valid: list[str]) -> dict[str, tuple[str, str]]:
    """name -> (file text, what the error says). `valid` is a real export, run line first;
    the late failures come after more than one batch has been written."""
    body = "\n".join(valid) + "\n"
    return {
        "empty": ("", "is empty"),
        "not json": ("id,step,key\n1,2,loss\n", "line 1 is not JSON"),
        "no run line": ("\n".join(valid[1:]) + "\n", "the first line must be the run line"),
        "unknown type late": (body + '{"type": "image", "step": 1}\n',
                              f"line {len(valid) + 1}: unknown record type 'image'"),
        "not json late": (body + "{oops\n", f"line {len(valid) + 1} is not JSON"),
        "missing field": (body + '{"type": "scalar", "step": 1, "key": "a"}\n',
                          "scalar record lacks value, wall, flag"),
        "bad value": (body + '{"type": "scalar", "step": 1, "key": "a", "value": "x", '
                      '"wall": 1.0, "flag": 0}\n', "scalar record has a bad value"),
        "second run": (body + json.dumps({**json.loads(valid[0]), "id": "zzzzzzzz"}) + "\n",
                       "a second run"),
    }


def test_bad_jsonl_is_one_error_line_and_leaves_nothing(source: dict[str, Any],
                                                         tmp_path: Path) -> None:
    valid = wb_inproc("export", source["id"], check=True).stdout.splitlines()
    before = {r.id for r in _runs(source["store"])}
    folders = {p.name for p in source["store"].iterdir()}
    for name, (text, expected) in _bad_files(valid).items():
        path = tmp_path / f"{name.replace(' ', '_')}.jsonl"
        path.write_text(text)
        line = _error_line(wb_inproc("import", "jsonl", str(path)))
        assert expected in line, (name, line)
        assert {r.id for r in _runs(source["store"])} == before, name  # no run row
        assert {p.name for p in source["store"].iterdir()} == folders, name  # no folder
    assert "cannot read" in _error_line(wb_inproc("import", "jsonl", str(tmp_path / "missing")))


# -- tensorboard -> runs ----------------------------------------------------------------------


def _write_tb(folder: Path, seed: int) -> dict[str, Any]:
    """Event files from torch's SummaryWriter (and TF2-style tensor summaries)."""
    from tensorboard.plugins.histogram.summary_v2 import histogram_pb
    from tensorboard.plugins.scalar.summary_v2 import scalar_pb
    from torch.utils.tensorboard import SummaryWriter

    rng = np.random.default_rng(seed)
    values = {step: rng.normal(step, 1.0, 200) for step in range(3)}
    writer = SummaryWriter(log_dir=str(folder))
    for step in range(20):
        writer.add_scalar("loss", 1.0 / (step + 1), step, walltime=T0 + step)
        writer.add_scalar("lr/group0", 0.1 * seed, step, walltime=T0 + step + 0.5)
    for step, v in values.items():
        writer.add_histogram("weights", v, step, bins=10, walltime=T0 + 100 + step)
        writer.add_histogram("weights_tf", v, step, walltime=T0 + 100 + step)  # TF buckets
    writer.file_writer.add_summary(scalar_pb("tf2/acc", 0.75), 7, T0 + 50)
    writer.file_writer.add_summary(histogram_pb("tf2/hist", values[0], buckets=5), 7, T0 + 51)
    writer.add_text("notes", "skipped", 0)
    writer.close()
    return values


def test_import_tensorboard_folders(tmp_path: Path, store_dir: Path) -> None:
    from tensorboard.plugins.histogram.summary_v2 import histogram_pb
    from tensorboard.util.tensor_util import make_ndarray

    logdir = tmp_path / "tb"
    written = {"run_a": _write_tb(logdir / "run_a", 1), "run_b": _write_tb(logdir / "run_b", 2)}
    out = json.loads(wb_inproc("import", "tensorboard", str(logdir), "--json", check=True).stdout)
    assert [r["name"] for r in out] == ["run_a", "run_b"]
    assert all((r["scalars"], r["dists"]) == (41, 7) for r in out)
    with Store(store_dir) as st:
        for r in out:
            row = st.get_run(r["id"])
            assert (row.kind, row.launcher, row.status) == ("tensorboard", "import",
                                                                     "finished")
            assert row.last_step == 19 and row.created == T0
            assert row.config["import"]["skipped_tags"] == [
                "notes/text_summary"]  # torch's add_text names the tag so
            seed = 1 if r["name"] == "run_a" else 2
            loss = [(s, v, w) for _, s, k, v, w in st.scalars(r["id"], key="loss")]
            assert [(s, w) for s, _, w in loss] == [(i, T0 + i) for i in range(20)]
            assert [v for _, v, _ in loss] == pytest.approx([1 / (i + 1) for i in range(20)],
                                                            rel=1e-6)  # float32 in TB
            lr = st.scalars(r["id"], key="lr/group0")
            assert [v for *_, v, _ in lr] == pytest.approx([0.1 * seed] * 20, rel=1e-6)
            assert [(s, v) for _, s, _, v, _ in st.scalars(r["id"], key="tf2/acc")] == [(7, 0.75)]
            dists = [d for d in st.records(r["id"], tables=("dists",))
                     if isinstance(d, DistRecord)]
            for d in dists:
                assert sum(d.counts) == d.count == 200
                assert len(d.edges) == len(d.counts) + 1
                assert d.min <= d.p50 <= d.p90 <= d.p99 <= d.max
            for step, v in written[r["name"]].items():
                (d,) = [d for d in dists if d.key == "weights" and d.step == step]
                counts, edges = np.histogram(v, bins=10)
                assert list(d.counts) == counts.tolist() and list(d.edges) == edges.tolist()
                assert (d.min, d.max) == (v.min(), v.max())
                assert d.mean == pytest.approx(v.mean())
                assert d.wall == T0 + 100 + step
                (tf,) = [d for d in dists if d.key == "weights_tf" and d.step == step]
                assert tf.p50 == pytest.approx(np.median(v), abs=0.3)  # from buckets
            (h,) = [d for d in dists if d.key == "tf2/hist"]
            ranges = make_ndarray(histogram_pb("x", written[r["name"]][0], buckets=5)
                                  .value[0].tensor)  # rows of (left, right, count)
            assert list(h.counts) == ranges[:, 2].astype(int).tolist()
            assert list(h.edges) == [ranges[0, 0], *ranges[:, 1]]
    # Imported again: the names are taken, so NAME-N; --name makes a prefix.
    again = json.loads(wb_inproc("import", "tensorboard", str(logdir), "--json", check=True).stdout)
    assert [r["name"] for r in again] == ["run_a-1", "run_b-1"]
    named = json.loads(wb_inproc("import", "tensorboard", str(logdir), "--name", "exp", "--json",
                                 check=True).stdout)
    assert [r["name"] for r in named] == ["exp-run_a", "exp-run_b"]


def test_import_tensorboard_refuses_what_has_no_events(tmp_path: Path, store_dir: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "no TensorBoard event files" in _error_line(
        wb_inproc("import", "tensorboard", str(tmp_path / "empty")))
    assert "no folder" in _error_line(wb_inproc("import", "tensorboard", str(tmp_path / "nope")))
    assert not (store_dir / "workbench.db").exists() or _runs(store_dir) == []


# -- run -> tensorboard -----------------------------------------------------------------------


def test_export_tensorboard_reads_back(source: dict[str, Any], tmp_path: Path) -> None:
    from tensorboard.util.tensor_util import make_ndarray

    out = tmp_path / "tb" / "src"
    proc = wb_inproc("export", source["id"], "--format", "tensorboard", str(out), check=True)
    assert f"wrote {N_LOSS + 3} scalars, 2 histograms, 2 events to {out}" in proc.stdout
    assert "skipped 1 matrices, 1 empty dists" in proc.stdout
    ea = event_accumulator
    acc = ea.EventAccumulator(str(out), size_guidance={ea.TENSORS: 0, ea.HISTOGRAMS: 0})
    acc.Reload()
    with Store(source["store"]) as st:
        scalars = st.scalars(source["id"])
        # (records() reads 10k at a time: one kind at a time here)
        dists = [d for d in st.records(source["id"], tables=("dists",))
                 if isinstance(d, DistRecord) and d.count]
    for key in ("train/loss", "train/grad_norm", "train/lr"):
        got = [(e.step, make_ndarray(e.tensor_proto).item(), e.wall_time)
               for e in acc.Tensors(key)]
        want = [(s, v, w) for _, s, k, v, w in scalars if k == key]
        assert len(got) == len(want)
        for (gs, gv, gw), (ws, wv, ww) in zip(got, want, strict=True):
            assert gs == ws and gw == ww and (gv == wv or (math.isnan(gv) and math.isnan(wv)))
    for d in dists:
        (h,) = [e for e in acc.Histograms(d.key) if e.step == d.step]
        assert list(h.histogram_value.bucket) == [0, *d.counts]
        assert list(h.histogram_value.bucket_limit) == list(d.edges)
        assert (h.histogram_value.num, h.wall_time) == (d.count, d.wall)
    assert {f"{t}/text_summary" for t in ("events/stage", "events/loss_spike", "config")} \
        <= set(acc.Tags()[ea.TENSORS])
    # ... and back in: the same histograms.
    (back,) = json.loads(wb_inproc("import", "tensorboard", str(out), "--json", check=True).stdout)
    with Store(source["store"]) as st:
        again = [d for d in st.records(back["id"], tables=("dists",))
                 if isinstance(d, DistRecord)]
        assert len(dists) == 2
        assert [(d.key, d.step, d.edges, d.counts, d.count, d.min, d.max)
                for d in again] == [(d.key, d.step, d.edges, d.counts, d.count,
                                     d.min, d.max) for d in dists]
        assert len(st.scalars(back["id"])) == N_LOSS + 3
    # A folder that already holds event files is refused (TensorBoard would mix them).
    assert "already holds TensorBoard event files" in _error_line(
        wb_inproc("export", source["id"], "-f", "tensorboard", "-o", str(out)))


# -- run -> parquet ---------------------------------------------------------------------------


def test_export_parquet_reads_back(source: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    proc = wb_inproc("export", source["id"], "--format", "parquet", "-o", str(path), check=True)
    assert f"{N_LOSS + 3} scalars to {path}" in proc.stdout
    table = pq.read_table(path)
    assert table.column_names == ["step", "key", "value", "wall"]
    with Store(source["store"]) as st:
        want = [(s, k, v, w) for _, s, k, v, w in st.scalars(source["id"])]
        want_dists = [d for d in st.records(source["id"], tables=("dists",))
                      if isinstance(d, DistRecord)]
    got = list(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g[:2] == w[:2] and g[3] == w[3]
        assert g[2] == w[2] or (math.isnan(g[2]) and math.isnan(w[2]))
    run = json.loads(pq.read_schema(path).metadata[b"workbench.run"])
    assert (run["id"], run["name"], run["kind"]) == (source["id"], "src", "pretrain")

    dists = pq.read_table(tmp_path / "out.dists.parquet").to_pylist()
    assert [(d["step"], d["key"], d["count"], d["edges"], d["counts"], d["p90"]) for d in dists] \
        == [(d.step, d.key, d.count, list(d.edges), list(d.counts), d.p90) for d in want_dists]
    (matrix,) = pq.read_table(tmp_path / "out.matrices.parquet").to_pylist()
    assert (matrix["key"], matrix["shape"], matrix["values"]) == (
        "attn/max_logit_heads", [2, 3], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    events = pq.read_table(tmp_path / "out.events.parquet").to_pylist()
    assert [(e["kind"], e["severity"], json.loads(e["payload"])) for e in events] == [
        ("stage", "info", {"name": "warmup"}), ("loss_spike", "warning", {"value": None,
                                                                           "z": 4.5})]
    # --keys filters; every sibling is still written (an empty table keeps its columns).
    wb_inproc("export", source["id"], "-f", "parquet", "-k", "train/lr", str(tmp_path / "lr"),
              check=True)
    assert pq.read_table(tmp_path / "lr.parquet").column("key").to_pylist() == ["train/lr"]
    empty = pq.read_table(tmp_path / "lr.events.parquet")
    assert empty.num_rows == 0 and empty.column_names == ["step", "kind", "severity",
                                                          "payload", "wall"]
    assert not list(tmp_path.glob(".*tmp*"))


def test_export_options_are_checked(source: dict[str, Any], tmp_path: Path) -> None:
    assert "unknown format 'xml'" in _error_line(wb_inproc("export", "src", "-f", "xml"))
    assert "--follow streams jsonl or csv" in _error_line(
        wb_inproc("export", "src", "-f", "parquet", "--follow"))
    assert "give the destination once" in _error_line(
        wb_inproc("export", "src", "a.parquet", "-o", "b.parquet"))
    assert "no folder" in _error_line(
        wb_inproc("export", "src", "-f", "parquet", "-o", str(tmp_path / "no" / "x.parquet")))
