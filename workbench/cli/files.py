"""`wb export`, `export-model` and `example-model`: a run's records and weights as files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from workbench.cli import common
from workbench.cli.common import EXIT_FAILED, RunArg, StoreOpt, app, fail, find_run, open_store
from workbench.store import Store

EXPORT_FORMATS = ("jsonl", "csv", "parquet", "tensorboard")


@app.command()
def export(
    run: RunArg,
    dest: Annotated[Path | None, typer.Argument(
        help="Where to write (the same as -o).", show_default=False)] = None,
    format: Annotated[str, typer.Option(
        "--format", "-f", help="jsonl (every record kind), csv (scalars), parquet (a file "
        "per record kind) or tensorboard (event files).")] = "jsonl",
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="jsonl/csv: a file instead of stdout. parquet: the scalars "
        "file (default RUNNAME.parquet); dists, matrices and events go to STEM.dists.parquet, "
        "STEM.matrices.parquet, STEM.events.parquet. tensorboard: a folder (default "
        "tb/RUNNAME).", show_default=False)] = None,
    keys: Annotated[list[str] | None, typer.Option(
        "--keys", "-k", help="GLOB on metric keys (event kinds for events); repeatable.")] = None,
    since: Annotated[int, typer.Option(help="Only records with id > SINCE (resume a stream).",
                                       min=0)] = 0,
    follow: Annotated[bool, typer.Option("--follow", help="Keep streaming new records until "
                                         "the run ends (jsonl, csv).")] = False,
    store: StoreOpt = None,
) -> None:
    """Write a run's records to stdout (jsonl, csv) or to files (parquet, tensorboard).

    Record ids are store-wide and increase in commit order, so `--since` the last id
    you saw resumes a stream with no gaps and no duplicates. `wb import jsonl` reads
    a jsonl export back into a store.

    Parquet columns: scalars step, key, value, wall (Unix seconds); dists step, key,
    count, min, max, mean, p50, p90, p99, edges, counts, nonfinite, wall; matrices
    step, key, shape, dtype, values; events step, kind, severity, payload (JSON), wall.
    TensorBoard gets scalars (double precision), dists as histograms and events as
    text; matrices are skipped.

    Examples:

      wb export charlm-3 --format csv --keys 'train/*' > train.csv

      wb export charlm-3 --since 1200 --follow

      wb export charlm-3 -f parquet -o charlm.parquet   (pd.read_parquet("charlm.parquet"))

      wb export charlm-3 -f tensorboard tb/charlm-3   (then: tensorboard --logdir tb)
    """
    from workbench.export import export_run

    if format not in EXPORT_FORMATS:
        raise fail(f"unknown format {format!r} — use {', '.join(EXPORT_FORMATS[:-1])} or "
                   f"{EXPORT_FORMATS[-1]}")
    if dest is not None and output is not None:
        raise fail(f"give the destination once: {dest} or -o {output}")
    output = output or dest
    if follow and format not in ("jsonl", "csv"):
        raise fail(f"--follow streams jsonl or csv; {format} writes a snapshot (leave out "
                   "--follow)")
    st = open_store(store)
    row = find_run(st, run)
    if format in ("parquet", "tensorboard"):
        _export_files(st, row, format, output, keys or [], since)
        return
    try:
        if output is None:
            export_run(st, row, sys.stdout, fmt=format, keys=keys or [], since=since,
                       follow=follow)
            return
        try:
            out = open(output, "w", encoding="utf-8", newline="" if format == "csv" else None)
        except OSError as exc:
            raise fail(f"cannot write {output}: {exc.strerror}") from None
        with out:
            export_run(st, row, out, fmt=format, keys=keys or [], since=since, follow=follow)
    except BrokenPipeError:
        sys.stderr.close()  # reader went away (| head): not an error


@app.command("export-model")
def export_model(
    run: RunArg,
    out_dir: Annotated[Path, typer.Argument(
        help="Folder to write (created; must be empty or new unless --force).",
        show_default=False)],
    step: Annotated[int | None, typer.Option(
        "--step", min=0, help="Export the checkpoint of this step (default: the latest).",
        show_default=False)] = None,
    dtype: Annotated[str, typer.Option(
        "--dtype", help="Weights' dtype: float32 or bfloat16.")] = "float32",
    force: Annotated[bool, typer.Option(
        "--force", help="Replace OUT_DIR if it exists and is not empty.")] = False,
    store: StoreOpt = None,
) -> None:
    """Write a pretrain or RL run's checkpoint as a Hugging Face model folder:
    config.json, model.safetensors and the tokenizer files of the checkpoint it started
    from (a byte-level model has none). transformers' AutoModelForCausalLM (and vLLM)
    load the folder.

    Examples:

      wb export-model muon-tiny-3 exports/muon-tiny-3

      wb export-model cpt-qwen-1 out/qwen-cpt --step 200 --dtype bfloat16 --force
    """
    from workbench.export_model import ExportError
    from workbench.export_model import export_model as write_model

    st = open_store(store)
    row = find_run(st, run)
    try:
        done = write_model(st, row, out_dir, step=step, dtype=dtype, force=force)
    except ExportError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot write {exc.filename or out_dir}: {exc.strerror}",
                   code=EXIT_FAILED) from None
    common.console.print(done.summary(), highlight=False, markup=False, soft_wrap=True)
    common.console.print(done.hint(), highlight=False, markup=False, soft_wrap=True)


@app.command("example-model")
def example_model(
    out_dir: Annotated[Path, typer.Argument(
        help="Folder to write (created; must be empty or new unless --force).",
        show_default=False)],
    family: Annotated[str, typer.Option(
        "--family", help="Architecture: qwen2 (q/k/v biases), qwen3 (QK-norm) or llama.")]
    = "qwen2",
    force: Annotated[bool, typer.Option(
        "--force", help="Replace OUT_DIR if it exists and is not empty.")] = False,
) -> None:
    """Write a tiny Hugging Face checkpoint to try every hf: path without a download: a
    byte-level BPE tokenizer trained here on local text (ChatML specials and chat
    template) and a randomly initialized model of that family (config.json,
    model.safetensors, generation_config.json). A few seconds.

    Examples:

      wb example-model ckpt/tiny-qwen2

      wb launch muonclip-tiny --set model.init=hf:ckpt/tiny-qwen2 --set model.seq_len=128

      wb example-model ckpt/tiny-qwen3 --family qwen3
    """
    from workbench.models.example import FAMILIES, write_example_model

    if family not in FAMILIES:
        raise fail(f"unknown --family {family!r} — use one of {', '.join(FAMILIES)}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not force:
        raise fail(f"{out_dir} exists and is not empty — pick a new folder or pass --force")
    common.err_console.print(f"training a BPE tokenizer on local text, then writing a "
                                    f"{family} model to {out_dir} ...")
    try:
        folder = write_example_model(out_dir, family=family)
    except OSError as exc:
        raise fail(f"cannot write {exc.filename or out_dir}: {exc.strerror}",
                   code=EXIT_FAILED) from None
    files = ", ".join(sorted(p.name for p in folder.iterdir()))
    common.console.print(f"wrote {folder}: {files}", highlight=False, markup=False, soft_wrap=True)
    common.console.print(f"use it: model.init = \"hf:{folder}\" (pretrain) or policy.init = "
                         f"\"hf:{folder}\" (rl)", highlight=False, markup=False, soft_wrap=True)


def _export_files(st: Store, row: dict[str, Any], format: str, output: Path | None,
                  keys: list[str], since: int) -> None:
    """`wb export -f parquet|tensorboard`: the writers live in workbench/io/."""
    from workbench.io import BadInput

    try:
        if format == "parquet":
            from workbench.io.parquet import export_parquet

            files = export_parquet(st, row, output or Path(f"{row.name}.parquet"),
                                   keys=keys, since=since)
            common.console.print("wrote " + ", ".join(f"{n} {kind} to {path}"
                                                      for kind, (path, n) in files.items()),
                                 highlight=False, markup=False, soft_wrap=True)
            return
        from workbench.io.tensorboard import export_tensorboard

        w = export_tensorboard(st, row, output or Path("tb") / row.name, keys=keys,
                               since=since)
    except BadInput as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot write {exc.filename or output}: {exc.strerror}") from None
    skipped = ("; skipped " + ", ".join(f"{n} {what}" for what, n in w.skipped.items())
               if w.skipped else "")
    common.console.print(f"wrote {w.scalars} scalars, {w.dists} histograms, {w.events} events to "
                         f"{w.path}{skipped} (view: tensorboard --logdir {w.path})",
                         highlight=False, markup=False, soft_wrap=True)
