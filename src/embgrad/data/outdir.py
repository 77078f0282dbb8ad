"""The output folder of a run, and what makes a run resumable.

::

    OUT/manifest.json                the command's fingerprint; a different command is refused
    OUT/data/part-000042.parquet     input rows [42·S, 43·S), S = rows_per_shard (both engines)
    OUT/data/part-ray-<run>-NNNNN.parquet   older Ray runs: the files of one committed Ray run
    OUT/errors.jsonl                 every bad row so far: {"row", "id", "kind", "reason"}
    OUT/.state/errors/…jsonl         per-shard (per Ray run) error pieces
    OUT/.state/ray/commit-<run>.json a committed Ray run: its shards and file renames
    OUT/.state/tmp/, .state/ray/<run>/   temp files and Ray staging (never read as results)
    OUT/.state/partial/part-N.*      rows of an unfinished shard saved on Ctrl-C / SIGTERM / every
                                     60 s (local engine; the next run starts the shard from them)

A shard is done when its data file exists: its error piece is written first, then the data
file appears by an atomic rename, so a run killed at any moment leaves every shard either done
or absent, and the next run with the same command redoes exactly the absent ones. A Ray run
commits all of its shards at once by writing its commit record, then renaming its staged files.

The start is atomic too: ``manifest.json`` is renamed in before ``data/`` exists, so a folder
holding only ``.state/`` (or an empty ``data/``, as earlier versions made it) is a start that
was cut short, and the same command takes it over. On every start each committed shard is
verified (:meth:`OutDir.verify`): its file readable, holding exactly the rows of its range that
its error piece does not hold; a damaged shard is redone, and a file in ``data/`` that the run
did not write stops the run, named. Every commit first checks that ``--out`` is still the
folder the run started in (:meth:`OutDir.ensure_present`): a deleted or replaced folder stops
the run instead of being silently recreated.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._locks import exclusive
from ..errors import EmbgradError, InputError
from ..render.write import check_creatable
from ._deps import require
from .badrows import RowError
from .writer import commit_file, jsonl, write_parquet_atomic, write_text_atomic

MANIFEST = "manifest.json"
#: a test hook: ``EMBGRAD_TEST_KILL_AT=<point>`` SIGKILLs the process at that point of the start
#: (``before-manifest``), so the tests can kill a run exactly in the window they check
KILL_AT = "EMBGRAD_TEST_KILL_AT"
#: what a start may leave behind before the manifest is renamed in: taken over by the same command
_START_LEFTOVERS = {".state", "data"}


def _kill_point(point: str) -> None:
    if os.environ.get(KILL_AT) == point:
        os.kill(os.getpid(), signal.SIGKILL)


class OutputGone(EmbgradError):
    """``--out`` was deleted or replaced while the run was writing to it."""


class WriteError(EmbgradError, OSError):
    """Writing ``--out`` failed (disk full, read-only, no permission); the message says what
    to do. Also an OSError, as the failure it wraps."""


def write_failure(exc: OSError, out: Path) -> EmbgradError:
    """An OSError met while writing ``out``, as an embgrad error saying what to do."""
    where = f" ({exc.filename})" if exc.filename else ""
    reason = exc.strerror or str(exc)
    hints = {
        errno.ENOSPC: "free some space on that disk",
        errno.EDQUOT: "free some space (your disk quota is full)",
        errno.EROFS: "the file system is read-only: make it writable or choose another --out",
        errno.EACCES: "you may not write there: change its permissions or choose another --out",
        errno.EPERM: "you may not write there: change its permissions or choose another --out",
    }
    hint = hints.get(exc.errno or 0, "fix the cause")
    return WriteError(
        f"writing to --out {str(out)!r} failed: {reason}{where}. The shards committed so far "
        f"are kept: {hint}, then run the same command again to resume."
    )


def check_writable(path: Path) -> None:
    """InputError, before any work, when ``path`` cannot become a writable folder: it is a file,
    a file stands where one of its parents should be, or the nearest existing parent is on a
    read-only file system or not writable by this user."""
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {str(path)!r} is a file, not a folder; choose a folder")
    check_creatable(path)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _shard_number(name: str) -> int | None:
    """N of ``part-NNNNNN.parquet`` (the local engine's shard names), else None."""
    stem = name.removeprefix("part-").removesuffix(".parquet")
    if name == f"part-{stem}.parquet" and len(stem) == 6 and stem.isdigit():
        return int(stem)
    return None


def _describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    changes = [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(changes)


class OutDir:
    """Paths and operations of one output folder (see the module docstring)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.data = self.path / "data"
        self.state = self.path / ".state"
        self.tmp = self.state / "tmp"
        self.error_pieces = self.state / "errors"
        self.ray = self.state / "ray"
        self.partial = self.state / "partial"
        self.manifest = self.path / MANIFEST
        self.errors = self.path / "errors.jsonl"

    # -- the command's fingerprint ----------------------------------------------------

    def _half_made(self) -> bool:
        """Only what a start cut short leaves (``.state/``, an empty ``data/`` folder)."""
        for entry in self.path.iterdir():
            if entry.name not in _START_LEFTOVERS:
                return False
            if entry.name == "data" and (not entry.is_dir() or any(entry.iterdir())):
                return False
        return True

    def check(self, fingerprint: dict[str, Any], ignore: tuple[str, ...] = ()) -> bool:
        """Refuse a folder that holds another run (or anything else); True when resuming.
        ``ignore``: fingerprint keys not known yet (compared by a later call)."""
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"--out {str(self.path)!r} is a file, not a folder; choose a folder")
        if not self.manifest.is_file():
            if self.path.is_dir() and not self._half_made():
                raise InputError(
                    f"--out {str(self.path)!r} is not empty and holds no embgrad run "
                    f"({MANIFEST} is missing); choose a new or empty folder"
                )
            return False
        try:
            saved = json.loads(self.manifest.read_text(encoding="utf-8"))
            old = saved["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{str(self.manifest)!r} is unreadable: {exc}") from exc
        if not isinstance(old, dict):
            raise InputError(
                f"{str(self.manifest)!r} is unreadable: its fingerprint is not a JSON object"
            )
        mine = fingerprint.get("output_format")
        theirs = old.get("output_format")
        if mine is not None and theirs is None:
            # manifests before the format was recorded: the shards say which one they hold
            theirs = self._shard_format(mine)
            fingerprint = {k: v for k, v in fingerprint.items() if k != "output_format"}
        if mine is not None and theirs != mine:
            raise InputError(
                f"--out {str(self.path)!r} holds a run written by another version of embgrad "
                f"(output format {theirs}; this version writes format {mine}, with other "
                "columns), so its shards and new ones would not read as one table. Finish it "
                "with the embgrad version that started it, or write this run to a new --out "
                "folder."
            )
        if ignore:
            old = {k: v for k, v in old.items() if k not in ignore}
            fingerprint = {k: v for k, v in fingerprint.items() if k not in ignore}
        if old != fingerprint:
            raise InputError(
                f"--out {str(self.path)!r} holds a run of a different command "
                f"({_describe_change(old, fingerprint)}). Resume it with its own command:\n"
                f"  {saved.get('command') or '(not recorded)'}\n"
                "or write this run to a new --out folder."
            )
        return True

    def _shard_format(self, mine: int) -> int:
        """The output format of the committed shards, for a manifest that does not say: 1 when
        they hold a ``loss`` column (before ``value``), else ``mine`` (none committed yet, or
        this layout already)."""
        first = next(iter(sorted(self.data.glob("part-*.parquet"))), None)
        if first is None:
            return mine
        pq = require("pyarrow.parquet", "data", "pyarrow")
        try:
            names = pq.read_schema(first).names
        except (OSError, ValueError) as exc:
            raise InputError(f"{str(first)!r} is unreadable: {exc}") from exc
        if "loss" in names:
            return 1
        return 2 if "pair_tokens" in names and mine == 3 else mine

    def create(self, fingerprint: dict[str, Any], description: dict[str, Any]) -> None:
        """Write the manifest (once), then create the folders: a start cut short before the
        manifest's rename leaves ``.state/`` only, which :meth:`check` takes over."""
        self.repair_state()
        self.tmp.mkdir(parents=True, exist_ok=True)
        if not self.manifest.exists():
            body = {"fingerprint": fingerprint, **description}
            _kill_point("before-manifest")
            write_text_atomic(
                json.dumps(body, indent=2, sort_keys=True) + "\n", self.manifest, self.tmp
            )
        if self.data.exists() and not self.data.is_dir():
            raise InputError(
                f"{str(self.data)!r} is a file, not embgrad's data folder; move it away and "
                "run the same command again"
            )
        if self.errors.exists() and not self.errors.is_file():
            raise InputError(
                f"{str(self.errors)!r} is not a file (embgrad writes the bad rows there); move "
                "it away and run the same command again"
            )
        for folder in (self.data, self.error_pieces, self.ray, self.partial):
            folder.mkdir(exist_ok=True)
        self._identity = _identity(self.path)

    def repair_state(self) -> None:
        """``.state`` is embgrad's own: a file or folder standing where one of its internal
        entries should be (``.state`` itself, ``tmp``, ``errors``, ``ray``, ``lock``) is removed
        so that the run can go on (what they held is rebuilt or redone)."""
        wanted_dirs = (self.state, self.tmp, self.error_pieces, self.ray, self.partial)
        for entry in wanted_dirs:
            if entry.is_symlink() or (entry.exists() and not entry.is_dir()):
                entry.unlink()
        lock = self.state / "lock"
        if lock.is_dir() and not lock.is_symlink():
            shutil.rmtree(lock)

    def ensure_present(self) -> None:
        """OutputGone when ``--out`` is no longer the folder this run created or resumed
        (deleted, or replaced by another), or its manifest is gone."""
        ident = getattr(self, "_identity", None)
        if ident is None:
            return
        if _identity(self.path) != ident or not self.manifest.is_file():
            raise OutputGone(
                f"--out {str(self.path)!r} was deleted or replaced while the run was writing "
                "to it; the run stopped (nothing was written elsewhere). Run the command again "
                "to start over."
            )

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the folder for the run (released even on kill -9)."""
        self.repair_state()
        self.state.mkdir(parents=True, exist_ok=True)
        with exclusive(
            self.state / "lock",
            f"another embgrad run is writing to {str(self.path)!r}; wait for it to end",
        ):
            yield

    # -- local shards -------------------------------------------------------------------

    def shard_file(self, shard: int) -> Path:
        return self.data / f"part-{shard:06d}.parquet"

    def _shard_errors(self, shard: int) -> Path:
        return self.error_pieces / f"part-{shard:06d}.jsonl"

    def local_done(self) -> set[int]:
        """Shards whose data file exists."""
        done = set()
        for file in self.data.glob("part-[0-9]*.parquet"):
            with contextlib.suppress(ValueError):
                done.add(int(file.stem.split("-")[1]))
        return done

    def verify(self, total: int, size: int, columns: list[str]) -> list[str]:
        """Check every file in ``data/`` before a run goes on: a shard of this run must be
        readable, have this run's columns and hold exactly the rows of its range that its error
        piece does not. A damaged shard (truncated, emptied, garbage, other rows, its error
        piece unreadable) is removed so that its rows are explained again; the returned lines
        say which. A file the run did not write (another name, a shard past the input's end, a
        folder, other columns) stops the run with an InputError naming it."""
        n_shards = -(-total // size)
        ray_files = {dest for c in self._commits() for _, dest in c["moves"]}
        notes = []
        shards: list[tuple[int, Path]] = []
        for entry in sorted(self.data.iterdir()):  # first every stray, before changing anything
            if f"data/{entry.name}" in ray_files:
                continue
            shard = _shard_number(entry.name)
            if shard is None or shard >= n_shards or not entry.is_file() or entry.is_symlink():
                raise InputError(
                    f"{str(entry)!r} is not a file this run wrote; every file in "
                    f"{str(self.data)!r} is read as this run's output, so move it out of "
                    "there and run the same command again"
                )
            shards.append((shard, entry))
        for shard, entry in shards:
            problem = self._shard_problem(shard, entry, total, size, columns)
            if problem:
                notes.append(f"{entry} {problem}: its rows are explained again")
                entry.unlink()
                self._shard_errors(shard).unlink(missing_ok=True)
        return notes

    def _shard_problem(
        self, shard: int, file: Path, total: int, size: int, columns: list[str]
    ) -> str | None:
        pq = require("pyarrow.parquet", "data", "pyarrow")
        try:
            handle = pq.ParquetFile(file)
            names = list(handle.schema_arrow.names)
            rows = handle.read(columns=["row"]).column("row").to_pylist()
        except Exception as exc:  # pyarrow raises several types for a damaged file
            return f"is unreadable ({type(exc).__name__}: {exc})"
        if names != list(columns):
            raise InputError(
                f"{str(file)!r} does not have this run's columns, so this run did not write it; "
                f"every file in {str(self.data)!r} is read as this run's output: move it out "
                "of there and run the same command again"
            )
        piece = self._shard_errors(shard)
        try:
            text = piece.read_text(encoding="utf-8")
            bad = [json.loads(line)["row"] for line in text.splitlines() if line.strip()]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"has an unreadable error record {str(piece)!r} ({type(exc).__name__})"
        got = rows + bad
        expected = set(range(shard * size, min((shard + 1) * size, total)))
        if len(got) != len(set(got)) or set(got) != expected:
            return "does not hold exactly the rows of its range"
        return None

    def commit_shard(self, shard: int, table: Any, errors: list[RowError]) -> None:
        """Write the shard's error piece, then its data file (the commit)."""
        self.ensure_present()
        write_text_atomic(jsonl(e.to_json() for e in errors), self._shard_errors(shard), self.tmp)
        write_parquet_atomic(table, self.shard_file(shard), self.tmp)
        self.drop_partial(shard)

    # -- a shard's rows saved before it was complete (interrupted runs) ---------------------

    def _partial_files(self, shard: int) -> tuple[Path, Path]:
        base = self.partial / f"part-{shard:06d}"
        return base.with_suffix(".parquet"), base.with_suffix(".jsonl")

    def save_partial(self, shard: int, table: Any, errors: list[RowError]) -> None:
        """Save the rows of an unfinished shard (internal, never read as output): its errors,
        then its records. The next run of the same command starts the shard from them."""
        self.ensure_present()
        data, errs = self._partial_files(shard)
        data.unlink(missing_ok=True)
        write_text_atomic(jsonl(e.to_json() for e in errors), errs, self.tmp)
        write_parquet_atomic(table, data, self.tmp)

    def load_partial(
        self, shard: int, rows: set[int], columns: list[str]
    ) -> tuple[list[dict[str, Any]], list[RowError]]:
        """The records and errors saved for ``shard`` (rows of ``rows`` only), or nothing when
        none were saved or they do not read back cleanly (then the shard is redone whole)."""
        data, errs = self._partial_files(shard)
        if not data.is_file():
            return [], []
        pq = require("pyarrow.parquet", "data", "pyarrow")
        try:
            table = pq.read_table(data)
            records = table.to_pylist()
            lines = errs.read_text(encoding="utf-8").splitlines()
            errors = [RowError(**json.loads(line)) for line in lines if line.strip()]
        except Exception:  # damaged: the shard is simply redone
            return [], []
        got = [r["row"] for r in records] + [e.row for e in errors]
        if list(table.schema.names) != columns or len(set(got)) != len(got) or not set(got) <= rows:
            return [], []
        return records, errors

    def drop_partial(self, shard: int) -> None:
        for file in self._partial_files(shard):
            file.unlink(missing_ok=True)

    def partial_rows(self, done: set[int]) -> int:
        """Rows saved in unfinished shards (for the resume message)."""
        pq = require("pyarrow.parquet", "data", "pyarrow")
        total = 0
        for file in self.partial.glob("part-*.parquet") if self.partial.is_dir() else []:
            shard = _shard_number(file.name)
            if shard is None or shard in done:
                continue
            with contextlib.suppress(Exception):
                total += pq.ParquetFile(file).metadata.num_rows
                errs = file.with_suffix(".jsonl")
                total += sum(1 for x in errs.read_text(encoding="utf-8").splitlines() if x)
        return total

    # -- Ray runs ------------------------------------------------------------------------

    def ray_staging(self, run: str) -> Path:
        return self.ray / run

    def _ray_errors(self, run: str) -> Path:
        return self.error_pieces / f"ray-{run}.jsonl"

    def _commits(self) -> list[dict[str, Any]]:
        out = []
        for file in sorted(self.ray.glob("commit-*.json")):
            problem = "fields missing"
            try:
                record: Any = json.loads(file.read_text(encoding="utf-8"))
                ok = (
                    isinstance(record, dict)
                    and isinstance(record.get("run"), str)
                    and isinstance(record.get("shards"), list)
                    and all(isinstance(s, int) for s in record["shards"])
                    and isinstance(record.get("moves"), list)
                    and all(isinstance(m, list) and len(m) == 2 for m in record["moves"])
                )
            except (OSError, ValueError, TypeError) as exc:
                ok, problem = False, f"{type(exc).__name__}: {exc}"
            if not ok:
                run = file.stem.removeprefix("commit-")
                raise InputError(
                    f"{str(file)!r} is damaged ({problem}): it records a finished Ray run. To "
                    f"redo that run's rows, delete it, {self.data / f'part-ray-{run}-*'!s} and "
                    f"{self._ray_errors(run)!s}, then run the same command again."
                )
            out.append(record)
        return out

    def ray_done(self) -> set[int]:
        """Shards covered by committed Ray runs."""
        return {s for c in self._commits() for s in c["shards"]}

    def commit_ray(self, run: str, shards: list[int], errors: list[RowError]) -> None:
        """Commit a finished Ray run: error piece, commit record, then the renames."""
        staged = sorted(self.ray_staging(run).rglob("*.parquet"))
        moves = [
            [str(f.relative_to(self.path)), f"data/part-ray-{run}-{k:05d}.parquet"]
            for k, f in enumerate(staged)
        ]
        write_text_atomic(jsonl(e.to_json() for e in errors), self._ray_errors(run), self.tmp)
        record = {"run": run, "shards": sorted(shards), "moves": moves}
        write_text_atomic(json.dumps(record) + "\n", self.ray / f"commit-{run}.json", self.tmp)
        self._apply(record)

    def _apply(self, record: dict[str, Any]) -> None:
        for src, dest in record["moves"]:
            if (self.path / src).exists():
                commit_file(self.path / src, self.path / dest)
        shutil.rmtree(self.ray_staging(record["run"]), ignore_errors=True)

    def recover(self) -> None:
        """Roll committed Ray runs forward; drop temp files and uncommitted Ray staging."""
        commits = self._commits()
        for record in commits:
            self._apply(record)
        committed = {c["run"] for c in commits}
        for entry in self.ray.glob("*"):
            if entry.is_dir() and entry.name not in committed:
                shutil.rmtree(entry, ignore_errors=True)
        for entry in self.tmp.glob("*"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def done(self) -> set[int]:
        return self.local_done() | self.ray_done()

    # -- the errors file -------------------------------------------------------------------

    def rebuild_errors(self) -> int:
        """Rewrite ``errors.jsonl`` from the committed pieces, sorted by row; its line count."""
        self.ensure_present()
        pieces = [self._shard_errors(s) for s in sorted(self.local_done())]
        pieces += [self._ray_errors(c["run"]) for c in self._commits()]
        records = []
        for piece in pieces:
            if piece.is_file():
                text = piece.read_text(encoding="utf-8")
                records += [json.loads(line) for line in text.splitlines() if line]
        records.sort(key=lambda r: r["row"])
        write_text_atomic(jsonl(records), self.errors, self.tmp)
        return len(records)
