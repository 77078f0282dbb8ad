"""The local engine with a deterministic stand-in explainer: the output files, bad rows, the
checks that stop a run before any work, refusal of a different command, and atomic shards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from data_fakes import (  # noqa: E402
    BAD_ROWS,
    MAX_LENGTH,
    FakeExplainer,
    RecordingExplainer,
    make_fake,
    write_corpus,
)
from embgrad.data import RunConfig, run  # noqa: E402
from embgrad.data.cli import main  # noqa: E402
from embgrad.data.outdir import OutDir  # noqa: E402
from embgrad.errors import InputError, MissingExtraError  # noqa: E402

N = 40


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus.jsonl", N, blank_every=7)


def _args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--data",
        str(corpus),
        "--text-column",
        "text",
        "--out",
        str(out),
        "--rows-per-shard",
        "10",
        "--batch-size",
        "4",
        *extra,
    ]


def _errors(out: Path) -> list[dict[str, Any]]:
    text = (out / "errors.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def _counting_factory() -> tuple[Any, FakeExplainer]:
    fake = FakeExplainer()
    return (lambda spec, framework: fake), fake


def test_output_is_read_by_pandas_polars_and_duckdb_without_custom_code(
    corpus: Path, tmp_path: Path
) -> None:
    pd = pytest.importorskip("pandas")
    pl = pytest.importorskip("polars")
    duckdb = pytest.importorskip("duckdb")
    out = tmp_path / "out"
    assert main(_args(corpus, out), explainer_factory=make_fake) == 0
    frame = pd.read_parquet(out / "data")
    assert len(frame) == N - len(BAD_ROWS)
    assert list(frame["tokens"].iloc[0]) == ["sentence", "0"]
    lazy = pl.read_parquet(str(out / "data" / "*.parquet"))
    assert lazy.height == len(frame)
    assert lazy.schema["tokens"] == pl.List(pl.String)
    assert lazy.schema["hotflip"] == pl.List(
        pl.Struct(
            {
                "position": pl.Int32,
                "token": pl.String,
                "replacement": pl.String,
                "estimate": pl.Float32,
                "verified": pl.Float32,
                "direction": pl.String,
            }
        )
    )
    glob = str(out / "data" / "*.parquet")
    top = duckdb.sql(
        f"SELECT row, hotflip[1].replacement AS r, len(scores) AS n FROM '{glob}' WHERE row = 3"
    ).fetchall()
    assert top == [(3, frame.set_index("row").loc[3, "hotflip"][0]["replacement"], 5)]
    errors = duckdb.sql(f"SELECT count(*) FROM read_json('{out / 'errors.jsonl'}')").fetchall()
    assert errors == [(len(BAD_ROWS),)]


def test_schema_and_file_metadata(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = RunConfig(
        data=corpus,
        text_column="text",
        out=out,
        rows_per_shard=10,
        method="integrated_gradients",
        options={"n_steps": 8},
        hotflip_k=2,
    )
    run(config, explainer_factory=make_fake)
    schema = pq.read_schema(out / "data" / "part-000000.parquet")
    assert schema.field("scores").type.value_type == pa.float32()
    assert schema.field("tokens").type.value_type == pa.string()
    assert schema.field("id").type == pa.int64()
    meta = json.loads(schema.metadata[b"embgrad"])
    assert meta["method"] == "integrated_gradients" and meta["options"] == {
        "baseline": "zeros",  # the default, recorded though not given (issue 23)
        "n_steps": 8,
        "rule": "gausslegendre",
    }
    assert meta["hotflip_k"] == 2 and meta["embgrad_version"]
    assert meta["model"] == "bundled:all-MiniLM-L6-v2" and meta["columns"]["text"] == "text"
    table = pq.read_table(out / "data")
    assert set(table.column("delta").to_pylist()) == {0.5}
    assert max(len(h) for h in table.column("hotflip").to_pylist()) == 2


def test_bad_rows_go_to_errors_and_every_row_is_written_once(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = run(
        RunConfig(data=corpus, text_column="text", out=out, rows_per_shard=10, batch_size=4),
        explainer_factory=make_fake,
    )
    rows = pq.read_table(out / "data").column("row").to_pylist()
    errors = _errors(out)
    assert {e["row"]: e["kind"] for e in errors} == BAD_ROWS
    assert sorted(rows + [e["row"] for e in errors]) == list(range(N))
    assert all(e["id"] in (e["row"], None) and e["reason"] for e in errors)
    assert summary.explained == N - len(BAD_ROWS) and summary.errors == len(BAD_ROWS)
    assert summary.errors_total == len(BAD_ROWS) and summary.complete
    # the BOOM row failed alone: the rest of its batch (rows 16..19) was explained
    assert {16, 18, 19} <= set(rows)


def test_long_texts_are_truncated_and_flagged_not_rejected(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = run(RunConfig(data=corpus, text_column="text", out=out), explainer_factory=make_fake)
    table = pq.read_table(out / "data").to_pylist()
    long = [r for r in table if len(r["text"].split()) > MAX_LENGTH]
    assert long and all(r["truncated"] and len(r["tokens"]) == MAX_LENGTH for r in long)
    assert not any(r["truncated"] for r in table if r not in long)
    assert summary.truncated == len(long)


def test_pairs_labels_and_id_column(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = _args(
        corpus, out, "--pair-column", "pair", "--label-column", "label", "--id-column", "key"
    )
    assert main(args, explainer_factory=make_fake) == 0
    table = pq.read_table(out / "data")
    assert table.schema.field("id").type == pa.string()
    first = table.to_pylist()[0]
    assert first["id"] == "k0000" and first["pair"] == "pair of 0 here"
    assert first["pair_tokens"] == ["pair", "of", "0", "here"] and first["target"] == "c0"
    assert first["pair_table_grad_norm"] > 0 and first["pair_truncated"] is False
    assert {e["id"] for e in _errors(out)} >= {"k0005", "k0017"}


def test_wrong_model_stops_before_writing(corpus: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "out"
    assert main(_args(corpus, out, "--model", "missing/model"), explainer_factory=make_fake) == 1
    err = capsys.readouterr().err
    assert "--model missing/model: cannot load it" in err and "does not exist" in err
    assert not out.exists()


def test_missing_column_stops_before_writing(corpus: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "out"
    args = _args(corpus, out)
    args[args.index("text")] = "sentence"
    assert main(args, explainer_factory=make_fake) == 1
    assert "column 'sentence' not found" in capsys.readouterr().err
    assert not out.exists()


def test_unknown_option_stops_before_writing(corpus: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "out"
    assert main(_args(corpus, out, "--option", "bogus=1"), explainer_factory=make_fake) == 1
    assert "no option(s) bogus" in capsys.readouterr().err
    assert not out.exists()


def test_explainer_failing_on_every_row_stops_before_writing(tmp_path: Path, capsys: Any) -> None:
    data = tmp_path / "boom.jsonl"
    data.write_text("".join(json.dumps({"text": f"BOOM {i}"}) + "\n" for i in range(5)))
    out = tmp_path / "out"
    assert main(_args(data, out), explainer_factory=make_fake) == 1
    assert "failed on the first 3 good rows" in capsys.readouterr().err
    assert not out.exists()


def test_a_different_command_into_the_same_out_is_refused(
    corpus: Path, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "out"
    assert main(_args(corpus, out), explainer_factory=make_fake) == 0
    before = sorted(p.name for p in (out / "data").iterdir())
    capsys.readouterr()
    assert main(_args(corpus, out, "--method", "grad_x_input"), explainer_factory=make_fake) == 1
    err = capsys.readouterr().err
    assert "holds a run of a different command" in err and "method: 'gradient'" in err
    assert "embgrad run --data" in err  # the original command, to resume it
    assert sorted(p.name for p in (out / "data").iterdir()) == before


def _manifest_fingerprint(out: Path, **change: Any) -> None:
    """Rewrite the manifest's fingerprint: a key set to None is removed."""
    manifest = json.loads((out / "manifest.json").read_text())
    for key, value in change.items():
        if value is None:
            manifest["fingerprint"].pop(key)
        else:
            manifest["fingerprint"][key] = value
    (out / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("how", ["format 1 recorded", "not recorded, a loss column"])
def test_a_folder_written_in_another_output_format_is_not_resumed(
    corpus: Path, tmp_path: Path, capsys: Any, how: str
) -> None:
    """Shards of another format (format 1: a ``loss`` column, from before the manifest recorded
    the format) and this version's would not read as one table: the same command is refused."""
    out = tmp_path / "out"
    assert main(_args(corpus, out, "--rows-per-shard", "10"), explainer_factory=make_fake) == 0
    shards = sorted((out / "data").iterdir())
    if how == "format 1 recorded":
        _manifest_fingerprint(out, output_format=1)
    else:
        _manifest_fingerprint(out, output_format=None)
        old = pq.read_table(shards[0])
        pq.write_table(old.rename_columns(["loss" if n == "value" else n for n in old.schema.names]),
                       shards[0])  # fmt: skip
    shards[-1].unlink()  # as if interrupted: a shard still to do
    capsys.readouterr()
    assert main(_args(corpus, out, "--rows-per-shard", "10"), explainer_factory=make_fake) == 1
    err = capsys.readouterr().err
    assert "written by another version of embgrad (output format 1" in err
    assert "new --out folder" in err and "Traceback" not in err
    assert sorted((out / "data").iterdir()) == shards[:-1]


def test_a_folder_of_this_format_resumes_though_its_manifest_does_not_record_it(
    corpus: Path, tmp_path: Path
) -> None:
    """Earlier builds wrote this layout (``value``) without recording the format: resumed."""
    out = tmp_path / "out"
    assert main(_args(corpus, out, "--rows-per-shard", "10"), explainer_factory=make_fake) == 0
    _manifest_fingerprint(out, output_format=None)
    shards = sorted((out / "data").iterdir())
    shards[-1].unlink()
    assert main(_args(corpus, out, "--rows-per-shard", "10"), explainer_factory=make_fake) == 0
    assert sorted((out / "data").iterdir()) == shards


@pytest.mark.parametrize("fingerprint", [None, [1, 2], "abc", 3])
def test_a_manifest_whose_fingerprint_is_not_an_object_is_refused(
    corpus: Path, tmp_path: Path, capsys: Any, fingerprint: Any
) -> None:
    out = tmp_path / "out"
    assert main(_args(corpus, out), explainer_factory=make_fake) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["fingerprint"] = fingerprint
    (out / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(_args(corpus, out), explainer_factory=make_fake) == 1
    err = capsys.readouterr().err
    assert "is unreadable: its fingerprint is not a JSON object" in err and "Traceback" not in err


def test_changed_data_or_foreign_folder_is_refused(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = RunConfig(data=corpus, text_column="text", out=out)
    run(config, explainer_factory=make_fake)
    with corpus.open("ab") as f:
        f.write(b'{"text": "one more"}\n')
    with pytest.raises(InputError, match=r"different command.*data"):
        run(config, explainer_factory=make_fake)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds no embgrad run"):
        run(RunConfig(data=corpus, text_column="text", out=foreign), explainer_factory=make_fake)


def test_rerun_skips_done_shards_and_redoes_missing_ones(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = RunConfig(data=corpus, text_column="text", out=out, rows_per_shard=10)
    run(config, explainer_factory=make_fake)
    first = pq.read_table(out / "data").to_pandas().sort_values("row").reset_index(drop=True)
    factory, fake = _counting_factory()
    again = run(config, explainer_factory=factory)
    assert again.skipped == N and again.explained == 0 and fake.calls == 1  # the preflight only
    (out / "data" / "part-000002.parquet").unlink()
    third = run(config, explainer_factory=factory)
    assert third.skipped == 30 and third.explained + third.errors == 10
    final = pq.read_table(out / "data").to_pandas().sort_values("row").reset_index(drop=True)
    assert final.equals(first)
    assert {e["row"]: e["kind"] for e in _errors(out)} == BAD_ROWS


def test_a_failed_shard_write_leaves_no_partial_file(
    corpus: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    out = tmp_path / "out"
    real = pq.write_table
    calls = {"n": 0}

    def crash_on_third(table: Any, where: Any, **kw: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            where.write(b"PAR1 half a file")
            raise OSError("disk full")
        real(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", crash_on_third)
    config = RunConfig(data=corpus, text_column="text", out=out, rows_per_shard=10)
    with pytest.raises(OSError, match="disk full"):
        run(config, explainer_factory=make_fake)
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "part-000000.parquet",
        "part-000001.parquet",
    ]
    assert list((out / ".state" / "tmp").iterdir()) == []
    monkeypatch.setattr(pq, "write_table", real)
    summary = run(config, explainer_factory=make_fake)
    assert summary.skipped == 20 and summary.complete
    assert pq.read_table(out / "data").num_rows == N - len(BAD_ROWS)


def test_a_second_run_into_a_locked_folder_is_refused(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = RunConfig(data=corpus, text_column="text", out=out)
    run(config, explainer_factory=make_fake)
    with OutDir(out).lock(), pytest.raises(InputError, match="another embgrad run"):
        run(config, explainer_factory=make_fake)


def test_progress_bar_only_when_asked_or_on_a_tty(
    corpus: Path, tmp_path: Path, capsys: Any
) -> None:
    run(RunConfig(data=corpus, text_column="text", out=tmp_path / "a"), explainer_factory=make_fake)
    assert capsys.readouterr().err == ""  # stderr is not a TTY under pytest
    run(
        RunConfig(data=corpus, text_column="text", out=tmp_path / "b"),
        explainer_factory=make_fake,
        progress=True,
    )
    err = capsys.readouterr().err
    assert f"{N}/{N}" in err and "row/s" in err


def test_summary_is_printed(corpus: Path, tmp_path: Path, capsys: Any) -> None:
    assert main(_args(corpus, tmp_path / "out"), explainer_factory=make_fake) == 0
    text = capsys.readouterr().out
    assert f"explained now      {N - len(BAD_ROWS)}" in text
    assert f"errors now         {len(BAD_ROWS)}" in text and "rows/s" in text


def test_ray_commit_is_rolled_forward_and_uncommitted_staging_dropped(tmp_path: Path) -> None:
    out = OutDir(tmp_path / "out")
    out.create({"x": 1}, {})
    staged = out.ray_staging("r1") / "a.parquet"
    staged.parent.mkdir(parents=True)
    pq.write_table(pa.table({"row": [0]}), staged)
    real_apply = OutDir._apply
    OutDir._apply = lambda self, record: None  # type: ignore[method-assign]  # "killed" here
    try:
        out.commit_ray("r1", [0, 1], [])
    finally:
        OutDir._apply = real_apply  # type: ignore[method-assign]
    (out.ray_staging("r2")).mkdir()
    assert not any(out.data.iterdir())
    out.recover()
    assert [p.name for p in out.data.iterdir()] == ["part-ray-r1-00000.parquet"]
    assert not out.ray_staging("r1").exists() and not out.ray_staging("r2").exists()
    assert out.done() == {0, 1}


def test_missing_pyarrow_names_the_extra(monkeypatch: Any) -> None:
    import sys

    from embgrad.data._deps import require

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'embgrad\[data\]'"):
        require("pyarrow", "data")


def test_run_help_says_long_texts_are_truncated(capsys: Any) -> None:
    from embgrad.cli import main as embgrad_main

    assert embgrad_main(["run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "truncated to it and written with truncated=true" in text
    assert "errors.jsonl" in text and "kill -9" in text


@pytest.mark.parametrize("paired", [False, True])
def test_batches_are_by_length_within_a_shard_and_rows_are_written_in_file_order(
    corpus: Path, tmp_path: Path, paired: bool
) -> None:
    fake = RecordingExplainer()
    extra = ("--pair-column", "pair") if paired else ()
    assert main(_args(corpus, tmp_path / "out", *extra), explainer_factory=lambda s, f: fake) == 0
    batches = [(t, p) for t, p in fake.batches[PREFLIGHT_CALLS:] if len(t) > 1]
    assert len(batches) >= 5
    for texts, pairs in batches:  # batches, not one-row retries
        sides = zip(texts, pairs or [""] * len(texts), strict=True)
        keys = [(max(len(t), len(p)), min(len(t), len(p))) for t, p in sides]
        assert keys == sorted(keys), keys
    for file in sorted((tmp_path / "out" / "data").glob("*.parquet")):
        rows = pq.read_table(file).column("row").to_pylist()
        assert rows == sorted(rows) and len(set(rows)) == len(rows)  # file order in each shard


#: explain calls the preflight makes before the run (one good row is enough)
PREFLIGHT_CALLS = 1


def test_by_length_uses_token_counts_when_the_explainer_can_encode() -> None:
    """With ``encode`` the sort key is the mask's row sums (tokens), not characters; pairs by
    the longer side, then the shorter; ties in file order."""
    from types import SimpleNamespace

    import numpy as np

    from embgrad.data.badrows import InputRow
    from embgrad.data.batch import by_length

    class Encodes:
        def encode(self, texts: list[str]) -> Any:  # a "token" per word
            n = [len(t.split()) for t in texts]
            return SimpleNamespace(mask=np.array([[1] * k + [0] * (max(n) - k) for k in n]))

    texts = ["a b c d", "longwordwithoutspaces", "x y", "p q r s t", "m n"]
    rows = [InputRow(i, None, t, None, None) for i, t in enumerate(texts)]
    assert [r.row for r in by_length(rows, Encodes())] == [1, 2, 4, 0, 3]
    assert [r.row for r in by_length(rows)] == [2, 4, 0, 3, 1]  # characters without encode
    paired = [
        InputRow(i, None, t, p, None)
        for i, (t, p) in enumerate([("a", "b c d e"), ("a b c", "d e f"), ("a b c d", "e")])
    ]
    assert [r.row for r in by_length(paired, Encodes())] == [1, 0, 2]


def test_the_inputs_own_id_column_is_kept(tmp_path: Path) -> None:
    data = tmp_path / "with_id.jsonl"
    rows = [{"id": f"doc-{i}", "text": f"sentence number {i}"} for i in range(5)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out"
    assert main(_args(data, out), explainer_factory=make_fake) == 0
    got = pq.read_table(out / "data").to_pylist()
    assert [r["id"] for r in got] == [f"doc-{i}" for i in range(5)]
    assert json.loads((out / "manifest.json").read_text())["config"]["id_column"] == "id"
    plain = tmp_path / "plain.jsonl"  # no id column: the row index, as before
    plain.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows))
    assert main(_args(plain, tmp_path / "out2"), explainer_factory=make_fake) == 0
    assert [r["id"] for r in pq.read_table(tmp_path / "out2" / "data").to_pylist()] == list(
        range(5)
    )
