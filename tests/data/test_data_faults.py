"""Issue 22: a data run never mixes, never loses, never shows a traceback — edited inputs and
changed weights are not resumed, damaged or stray shards are found, the start survives a kill,
a deleted --out is noticed, full and read-only disks and damaged state files give embgrad
errors, odd input files and ids are refused clearly; Ctrl-C / SIGTERM keep the work done."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pq = pytest.importorskip("pyarrow.parquet")

import mounts  # noqa: E402
from data_fakes import BAD_ROWS, make_fake, write_corpus  # noqa: E402
from embgrad.data import RunConfig, run  # noqa: E402
from embgrad.data.cli import main  # noqa: E402

KILL_AT = "EMBGRAD_TEST_KILL_AT"  # embgrad.data.outdir.KILL_AT
from embgrad.errors import InputError  # noqa: E402

SHARED = Path(__file__).resolve().parent.parent / "shared"
N = 40


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--data", str(data), "--text-column", "text", "--out", str(out),
            "--rows-per-shard", "10", "--batch-size", "4", *extra]  # fmt: skip


def _proc(args: list[str], **env: str) -> subprocess.Popen[bytes]:
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SHARED), *sys.path]), **env)
    return subprocess.Popen(
        [sys.executable, str(SHARED / "data_run_fake.py"), *args],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _run_proc(args: list[str], timeout: float = 120, **env: str) -> tuple[int, str]:
    proc = _proc(args, **env)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return proc.returncode, out.decode() + err.decode()


def _rows(out: Path) -> list[int]:
    rows = pq.read_table(out / "data", columns=["row"]).column("row").to_pylist()
    errors = [json.loads(x)["row"] for x in (out / "errors.jsonl").read_text().splitlines()]
    return sorted(rows + errors)


def _table(out: Path) -> Any:
    return pq.read_table(out / "data").to_pandas().sort_values("row").reset_index(drop=True)


# -- 1. the input is fingerprinted whole ---------------------------------------------------


def test_a_same_size_edit_in_the_middle_of_a_large_input_is_not_resumed(tmp_path: Path) -> None:
    data = tmp_path / "big.jsonl"
    lines = [json.dumps({"text": f"row {i} label 0 " + "x" * 3000}) for i in range(1000)]
    data.write_text("\n".join(lines) + "\n")
    assert data.stat().st_size > 2 * 2**20
    out = tmp_path / "out"
    config = RunConfig(data=data, text_column="text", out=out, rows_per_shard=100)
    run(config, explainer_factory=make_fake)
    raw = bytearray(data.read_bytes())
    middle = raw.index(b"row 500 label 0")
    raw[middle + len("row 500 label ")] = ord("1")  # "0" -> "1": same size
    data.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="sha256"):
        run(config, explainer_factory=make_fake)


# -- 2. the weights are fingerprinted --------------------------------------------------------


@pytest.mark.hf
def test_changed_weights_in_the_model_folder_are_not_resumed(tmp_path: Path, capsys: Any) -> None:
    tf = pytest.importorskip("transformers")
    safetensors = pytest.importorskip("safetensors.torch")
    from embgrad.models import minilm

    model_dir = tmp_path / "tiny"
    cfg = tf.BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32)  # fmt: skip
    tf.BertModel(cfg).save_pretrained(model_dir)
    tf.AutoTokenizer.from_pretrained(minilm.model_path()).save_pretrained(model_dir)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"a good film {i}"}) + "\n" for i in range(6)))
    out = tmp_path / "out"
    args = ["run", "--data", str(data), "--text-column", "text", "--out", str(out),
            "--model", f"hf:{model_dir}", "--rows-per-shard", "3"]  # fmt: skip
    assert main(args) == 0
    (out / "data" / "part-000001.parquet").unlink()  # as if killed after the first shard
    weights = model_dir / "model.safetensors"
    tensors = safetensors.load_file(str(weights))
    key = next(k for k in tensors if "word_embeddings" in k)
    tensors[key] = tensors[key] * 2
    safetensors.save_file(tensors, str(weights), metadata={"format": "pt"})
    capsys.readouterr()
    assert main(args) == 1
    assert "weights" in capsys.readouterr().err
    assert not (out / "data" / "part-000001.parquet").exists()


def test_a_module_models_parameters_are_fingerprinted() -> None:
    torch = pytest.importorskip("torch")
    from embgrad.models.load import parameters_digest

    model = torch.nn.Sequential(torch.nn.Embedding(7, 3), torch.nn.Linear(3, 2))
    before = parameters_digest(model)
    assert parameters_digest(model) == before
    with torch.no_grad():
        model[0].weight[3, 1] *= 1.0001
    assert parameters_digest(model) != before
    assert parameters_digest(object()) is None


def test_a_module_spec_with_other_weights_is_not_resumed(tmp_path: Path, monkeypatch: Any) -> None:
    torch = pytest.importorskip("torch")
    scale = {"w": 1.0}

    class Holder:
        def __init__(self) -> None:
            self.model = torch.nn.Embedding(5, 2)
            with torch.no_grad():
                self.model.weight.fill_(scale["w"])
            self.fake = make_fake(None)
            self.max_length = self.fake.max_length

        def explain(self, *a: Any, **k: Any) -> Any:
            return self.fake.explain(*a, **k)

    data = write_corpus(tmp_path / "c.jsonl", N)
    config = RunConfig(data=data, text_column="text", out=tmp_path / "out", rows_per_shard=10,
                       model="module:nowhere:factory")  # fmt: skip
    run(config, explainer_factory=lambda spec, fw: Holder())
    scale["w"] = 2.0
    with pytest.raises(InputError, match="parameters_sha256"):
        run(config, explainer_factory=lambda spec, fw: Holder())


# -- 3. code in a model folder never runs -----------------------------------------------------


@pytest.mark.hf
def test_a_folder_that_needs_its_own_code_is_refused_and_its_code_never_runs(
    tmp_path: Path, capsys: Any
) -> None:
    folder = tmp_path / "custom"
    folder.mkdir()
    marker = tmp_path / "ran"
    (folder / "config.json").write_text(json.dumps({
        "model_type": "my-own-arch",
        "auto_map": {"AutoConfig": "modeling.MyConfig", "AutoModel": "modeling.MyModel"},
    }))  # fmt: skip
    (folder / "modeling.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    data = write_corpus(tmp_path / "c.jsonl", 5)
    assert main(_args(data, tmp_path / "out", "--model", f"hf:{folder}")) == 1
    err = capsys.readouterr().err
    assert "never runs code from a model folder" in err
    assert not marker.exists()
    from embgrad import cli

    assert cli.main(["explain", "--model", f"hf:{folder}", "--text", "hi",
                     "--format", "json", "--out", str(tmp_path / "e")]) == 1  # fmt: skip
    assert "never runs code" in capsys.readouterr().err
    assert not marker.exists()


def test_help_says_module_specs_run_code(capsys: Any) -> None:
    from embgrad import cli

    assert cli.main(["run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "imports that module and runs its factory" in text


# -- 4. committed shards are verified ----------------------------------------------------------


def test_damaged_shards_are_redone_and_stray_files_refused(tmp_path: Path, capsys: Any) -> None:
    data = write_corpus(tmp_path / "c.jsonl", N)
    out, ref = tmp_path / "out", tmp_path / "ref"
    assert main(_args(data, ref), explainer_factory=make_fake) == 0
    assert main(_args(data, out), explainer_factory=make_fake) == 0
    shards = out / "data"
    whole = (shards / "part-000001.parquet").read_bytes()
    (shards / "part-000001.parquet").write_bytes(whole[: len(whole) // 2])  # truncated
    (shards / "part-000002.parquet").write_bytes(b"")  # emptied
    (shards / "part-000003.parquet").write_bytes(b"PAR1 garbage PAR1")
    shutil.copy(shards / "part-000000.parquet", shards / "part-000099.parquet")
    capsys.readouterr()
    assert main(_args(data, out), explainer_factory=make_fake) == 1
    assert "part-000099.parquet" in capsys.readouterr().err
    (shards / "part-000099.parquet").unlink()
    assert main(_args(data, out), explainer_factory=make_fake) == 0
    err = capsys.readouterr().err
    for n in (1, 2, 3):
        assert f"part-00000{n}.parquet" in err
    assert _table(out).equals(_table(ref))
    assert _rows(out) == list(range(N))
    assert {e["row"] for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())} \
        == set(BAD_ROWS)  # fmt: skip


# -- 5. the start is atomic ---------------------------------------------------------------------


def test_a_kill_before_the_manifest_is_in_is_resumed_by_the_same_command(tmp_path: Path) -> None:
    data = write_corpus(tmp_path / "c.jsonl", N)
    out = tmp_path / "out"
    code, _ = _run_proc(_args(data, out), **{KILL_AT: "before-manifest"})
    assert code == -signal.SIGKILL
    assert (out / ".state").is_dir() and not (out / "manifest.json").exists()
    code, text = _run_proc(_args(data, out))
    assert code == 0, text
    assert _rows(out) == list(range(N))


def test_a_half_made_folder_of_an_earlier_version_is_taken_over(tmp_path: Path) -> None:
    data = write_corpus(tmp_path / "c.jsonl", N)
    out = tmp_path / "out"
    for sub in ("data", ".state/tmp", ".state/errors", ".state/ray"):
        (out / sub).mkdir(parents=True)
    (out / ".state" / "lock").write_text("")
    (out / ".state" / "tmp" / "manifest.json.123.abcd.tmp").write_text('{"fing')
    code, text = _run_proc(_args(data, out))
    assert code == 0, text
    assert _rows(out) == list(range(N))


# -- 6. a deleted --out is noticed ----------------------------------------------------------------


def test_deleting_out_during_a_run_fails_clearly(tmp_path: Path) -> None:
    data = write_corpus(tmp_path / "c.jsonl", 150)
    out = tmp_path / "out"
    proc = _proc(_args(data, out, "--model", "fake:delay=0.01"))
    deadline = time.monotonic() + 60
    while not list((out / "data").glob("*.parquet")) if (out / "data").is_dir() else True:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    shutil.rmtree(out)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = err.decode()
    assert proc.returncode == 1, text
    assert "deleted or replaced" in text and "Traceback" not in text
    assert not (out / "data").exists()


# -- 8. full disk, read-only, --out below a file -------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    with mounts.small_disk(tmp_path / "disk") as where:
        yield where


def test_a_full_disk_is_an_error_and_the_same_command_resumes_exactly_once(
    tmp_path: Path, small_disk: Path
) -> None:
    data = tmp_path / "big.jsonl"
    rng = __import__("random").Random(0)
    with data.open("w") as f:
        for i in range(600):
            f.write(json.dumps({"text": f"r{i} " + f"{rng.getrandbits(4 * 12000):x}"}) + "\n")
    out = small_disk / "out"
    args = ["run", "--data", str(data), "--text-column", "text", "--out", str(out),
            "--rows-per-shard", "50", "--batch-size", "50"]  # fmt: skip
    code, text = _run_proc(args)
    assert code == 1, text
    assert "No space left on device" in text and "free some space" in text
    assert "Traceback" not in text
    assert mounts.mount("-o", "remount,size=64m", str(small_disk))
    code, text = _run_proc(args)
    assert code == 0, text
    rows = pq.read_table(out / "data", columns=["row"]).column("row").to_pylist()
    assert sorted(rows) == list(range(600))


def test_a_disk_full_at_the_start_is_resumed_by_the_same_command(
    tmp_path: Path, small_disk: Path
) -> None:
    data = write_corpus(tmp_path / "c.jsonl", N)
    filler = small_disk / "filler"
    with filler.open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    out = small_disk / "out"
    code, text = _run_proc(_args(data, out))
    assert code == 1, text
    assert "No space left on device" in text and "Traceback" not in text
    filler.unlink()
    code, text = _run_proc(_args(data, out))
    assert code == 0, text
    assert _rows(out) == list(range(N))


def test_a_read_only_out_and_out_below_a_file_stop_before_the_model_loads(
    tmp_path: Path, capsys: Any
) -> None:
    data = write_corpus(tmp_path / "c.jsonl", 5)
    a_file = tmp_path / "a.txt"
    a_file.write_text("x")
    # "missing..." makes the fake factory fail: the --out message must come first
    assert main(_args(data, a_file / "out", "--model", "missing"), explainer_factory=make_fake) == 1
    assert "is a file" in capsys.readouterr().err
    with mounts.read_only(tmp_path / "ro") as ro:
        assert main(_args(data, ro / "out", "--model", "missing"),
                    explainer_factory=make_fake) == 1  # fmt: skip
        err = capsys.readouterr().err
        assert "read-only" in err or "not writable" in err
    assert not (ro / "out").exists()


# -- 9. damaged .state files ----------------------------------------------------------------------


def test_damaged_state_files_are_recovered_or_named(tmp_path: Path, capsys: Any) -> None:
    data = write_corpus(tmp_path / "c.jsonl", N)
    out, ref = tmp_path / "out", tmp_path / "ref"
    assert main(_args(data, ref), explainer_factory=make_fake) == 0
    assert main(_args(data, out), explainer_factory=make_fake) == 0
    state = out / ".state"
    (state / "errors" / "part-000000.jsonl").write_bytes(b"\xff{not json")
    shutil.rmtree(state / "tmp")
    (state / "tmp").write_text("a file")
    (state / "lock").unlink()
    (state / "lock").mkdir()
    assert main(_args(data, out), explainer_factory=make_fake) == 0
    assert "part-000000.parquet" in capsys.readouterr().err
    assert (out / "errors.jsonl").read_text() == (ref / "errors.jsonl").read_text()
    assert _table(out).equals(_table(ref))
    for body in ("{", '{"run": "r1", "shards": [1]}'):
        (state / "ray" / "commit-r1.json").write_text(body)
        assert main(_args(data, out), explainer_factory=make_fake) == 1
        err = capsys.readouterr().err
        assert "commit-r1.json" in err and "Traceback" not in err
    (state / "ray" / "commit-r1.json").unlink()
    shutil.rmtree(out / "data")
    (out / "data").write_text("a file")
    assert main(_args(data, out), explainer_factory=make_fake) == 1
    assert "is a file" in capsys.readouterr().err


# -- 18. input files that are not what they seem ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("blank.jsonl", b"\n" * 100_000, "has no rows (blank lines only)"),
        ("array.json", b'[{"text": "a"}, {"text": "b"}]', "JSON array"),
        ("mac.jsonl", b'{"text": "a"}\r{"text": "b"}\r', "CR only"),
        ("wide.jsonl", '{"text": "a"}\n'.encode("utf-16"), "UTF-16"),
        ("wide.csv", "text\na\n".encode("utf-16-le"), "UTF-16"),
    ],
)
def test_odd_input_files_say_what_they_are(
    tmp_path: Path, capsys: Any, name: str, content: bytes, message: str
) -> None:
    data = tmp_path / name
    data.write_bytes(content)
    assert main(_args(data, tmp_path / "out"), explainer_factory=make_fake) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_data_on_a_folder_or_a_fifo_says_so(tmp_path: Path, capsys: Any) -> None:
    folder = tmp_path / "d.jsonl"
    folder.mkdir()
    assert main(_args(folder, tmp_path / "out"), explainer_factory=make_fake) == 1
    assert "is a folder" in capsys.readouterr().err
    fifo = tmp_path / "p.jsonl"
    os.mkfifo(fifo)
    assert main(_args(fifo, tmp_path / "out"), explainer_factory=make_fake) == 1
    assert "not a regular file" in capsys.readouterr().err


# -- 19. ids are never merged ---------------------------------------------------------------------


def test_colliding_ids_are_refused_never_merged(tmp_path: Path) -> None:
    data = tmp_path / "ids.jsonl"
    ids: list[Any] = [7, 7.0, True, {"a": 1}, "7", "x", 8, [1], "y", "x"]
    data.write_text("".join(json.dumps({"text": f"text {i}", "key": v}) + "\n"
                            for i, v in enumerate(ids)))  # fmt: skip
    out = tmp_path / "out"
    assert main(_args(data, out, "--id-column", "key", "--rows-per-shard", "3"),
                explainer_factory=make_fake) == 0  # fmt: skip
    table = pq.read_table(out / "data").to_pydict()
    assert sorted(zip(table["row"], table["id"], strict=True)) == [
        (0, "7"), (5, "x"), (6, "8"), (8, "y")
    ]  # fmt: skip
    errors = {
        e["row"]: e["kind"]
        for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())
    }
    assert errors == {1: "duplicate_id", 2: "bad_id", 3: "bad_id", 4: "duplicate_id",
                      7: "bad_id", 9: "duplicate_id"}  # fmt: skip
    # a resumed run remembers the ids of the shards already written
    (out / "data" / "part-000003.parquet").unlink()
    assert main(_args(data, out, "--id-column", "key", "--rows-per-shard", "3"),
                explainer_factory=make_fake) == 0  # fmt: skip
    errors = {
        e["row"]: e["kind"]
        for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())
    }
    assert errors[9] == "duplicate_id"


# -- 23.4: Ctrl-C and SIGTERM keep the work done ---------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupt_saves_the_rows_done_and_the_rerun_says_it_resumes(
    tmp_path: Path, sig: int
) -> None:
    data = write_corpus(tmp_path / "c.jsonl", 120)
    out, ref = tmp_path / "out", tmp_path / "ref"
    args = ["run", "--data", str(data), "--text-column", "text", "--out", str(out),
            "--batch-size", "4", "--model", "fake:delay=0.05"]  # fmt: skip
    proc = _proc(args)
    deadline = time.monotonic() + 60
    while not (out / "manifest.json").exists():  # the run has started its work
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    time.sleep(1.5)  # the work takes >= 6 s of sleeps (0.05 s a row): the signal lands in it
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    text = err.decode()
    assert proc.returncode == 130, text
    assert "Traceback" not in text
    assert "interrupted" in text
    # the count is said once the work has begun (a signal during the start has none to say)
    said = text.split("interrupted: ")[1:]
    saved = int(said[0].split(" of 120 rows are saved")[0]) if said else 0
    code, text = _run_proc(args)
    assert code == 0, text
    if saved:
        assert f"resuming: {saved} of 120 rows already done" in text
    assert main(["run", "--data", str(data), "--text-column", "text", "--out", str(ref),
                 "--batch-size", "4"], explainer_factory=make_fake) == 0  # fmt: skip
    assert _table(out).equals(_table(ref))
    assert _rows(out) == list(range(120))


# -- 1. an input edited during a run stops it ------------------------------------------------------


def test_an_input_edited_during_the_run_stops_it(tmp_path: Path) -> None:
    data = write_corpus(tmp_path / "c.jsonl", N)
    fake = make_fake(None)

    class Editing:
        max_length = fake.max_length

        def explain(self, *a: Any, **k: Any) -> Any:
            with data.open("ab") as f:  # someone appends to the input while it is read
                f.write(b'{"text": "late"}\n')
            return fake.explain(*a, **k)

    config = RunConfig(data=data, text_column="text", out=tmp_path / "out", rows_per_shard=10)
    with pytest.raises(InputError, match="changed while the run was reading it"):
        run(config, explainer_factory=lambda spec, fw: Editing())


# -- 23.8: single-text runs have no pair columns ---------------------------------------------------


def test_single_text_runs_have_no_pair_columns(tmp_path: Path) -> None:
    data = write_corpus(tmp_path / "c.jsonl", 12)
    assert main(_args(data, tmp_path / "one"), explainer_factory=make_fake) == 0
    names = pq.read_schema(next((tmp_path / "one" / "data").glob("*.parquet"))).names
    assert not [n for n in names if n.startswith("pair")]
    assert main(_args(data, tmp_path / "two", "--pair-column", "pair"),
                explainer_factory=make_fake) == 0  # fmt: skip
    names = pq.read_schema(next((tmp_path / "two" / "data").glob("*.parquet"))).names
    assert "pair" in names and "pair_scores" in names


# -- 15. a killed Ray driver takes its local Ray with it --------------------------------------------

_RAY_DRIVER = """
import sys
sys.path.insert(0, {shared!r})
import data_fakes
from embgrad.data.ray_engine import import_ray
import_ray().cloudpickle.register_pickle_by_value(data_fakes)
from embgrad.data.cli import main
sys.exit(main(sys.argv[1:], explainer_factory=data_fakes.make_fake))
"""


def _descendants(root: int) -> dict[int, str]:
    children: dict[int, list[tuple[int, str]]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                parts = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            children.setdefault(int(parts[1]), []).append((int(name), parts[19]))
    out: dict[int, str] = {}
    todo = [root]
    while todo:
        for pid, start in children.get(todo.pop(), []):
            out[pid] = start
            todo.append(pid)
    return out


def _alive(pid: int, start: str) -> bool:
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return parts[19] == start and parts[0] != "Z"


@pytest.mark.ray
def test_kill_9_of_a_ray_driver_ends_the_ray_it_started(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc")
    script = tmp_path / "driver.py"
    script.write_text(_RAY_DRIVER.format(shared=str(SHARED)))
    data = write_corpus(tmp_path / "c.jsonl", 400)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SHARED), *sys.path]))
    proc = subprocess.Popen(
        [sys.executable, str(script), *_args(data, out, "--engine", "ray", "--workers", "1",
                                             "--model", "fake:delay=0.05")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / "manifest.json").exists():  # Ray has started (before the manifest)
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(2)  # its agents are up
        ray_processes = _descendants(proc.pid)
        assert ray_processes
        os.kill(proc.pid, signal.SIGKILL)  # the driver only, as a user's kill -9 <pid>
        proc.wait(timeout=30)
        deadline = time.monotonic() + 40
        while any(_alive(p, s) for p, s in ray_processes.items()):
            assert time.monotonic() < deadline, [
                Path(f"/proc/{p}/cmdline").read_bytes()[:80]
                for p, s in ray_processes.items()
                if _alive(p, s)
            ]
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid, start in _descendants(proc.pid).items():
            if _alive(pid, start):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.ray
def test_a_finished_run_with_a_damaged_shard_is_repaired_by_the_ray_engine(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    script = tmp_path / "driver.py"
    script.write_text(_RAY_DRIVER.format(shared=str(SHARED)))
    data = write_corpus(tmp_path / "c.jsonl", N)
    out, ref = tmp_path / "out", tmp_path / "ref"
    assert main(_args(data, ref), explainer_factory=make_fake) == 0
    assert main(_args(data, out), explainer_factory=make_fake) == 0
    (out / "data" / "part-000002.parquet").write_bytes(b"garbage")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SHARED), *sys.path]))
    done = subprocess.run([sys.executable, str(script), *_args(data, out, "--engine", "ray")],
                          env=env, capture_output=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert _table(out).equals(_table(ref))
    assert _rows(out) == list(range(N))


@pytest.mark.ray
def test_sigterm_to_a_ray_run_keeps_its_committed_shards(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    script = tmp_path / "driver.py"
    script.write_text(_RAY_DRIVER.format(shared=str(SHARED)))
    data = write_corpus(tmp_path / "c.jsonl", 120)
    out = tmp_path / "out"
    args = [*_args(data, out, "--engine", "ray", "--workers", "1", "--model", "fake:delay=0.03")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SHARED), *sys.path]))
    proc = subprocess.Popen([sys.executable, str(script), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not list(out.glob("data/*.parquet")):  # the first shard is committed
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = err.decode()
    assert proc.returncode == 130, text
    saved = int(text.split("interrupted: ")[1].split(" of 120 rows are saved")[0])
    assert saved >= 10 and saved % 10 == 0
    done = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert f"resuming: {saved} of 120 rows already done" in done.stderr.decode()
    assert _rows(out) == list(range(120))
