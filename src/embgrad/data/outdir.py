"""The output folder of a run, and what makes a run resumable.

::

    OUT/manifest.json                the command's fingerprint; a different command is refused
    OUT/data/part-000042.parquet     input rows [42·S, 43·S), S = rows_per_shard (both engines)
    OUT/data/part-ray-<run>-NNNNN.parquet   older Ray runs: the files of one committed Ray run
    OUT/errors.jsonl                 every bad row so far: {"row", "id", "kind", "reason"}
    OUT/.state/errors/…jsonl         per-shard (per Ray run) error pieces
    OUT/.state/ray/commit-<run>.json a committed Ray run: its shards and file renames
    OUT/.state/tmp/, .state/ray/<run>/   temp files and Ray staging (never read as results)

A shard is done when its data file exists: its error piece is written first, then the data
file appears by an atomic rename, so a run killed at any moment leaves every shard either done
or absent, and the next run with the same command redoes exactly the absent ones. A Ray run
commits all of its shards at once by writing its commit record, then renaming its staged files.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError
from ._deps import require
from .badrows import RowError
from .writer import commit_file, jsonl, write_parquet_atomic, write_text_atomic

MANIFEST = "manifest.json"


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
        self.manifest = self.path / MANIFEST
        self.errors = self.path / "errors.jsonl"

    # -- the command's fingerprint ----------------------------------------------------

    def check(self, fingerprint: dict[str, Any]) -> bool:
        """Refuse a folder that holds another run (or anything else); True when resuming."""
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"--out {str(self.path)!r} exists and is not a folder")
        if not self.manifest.is_file():
            if self.path.is_dir() and any(p.name != ".state" for p in self.path.iterdir()):
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
        return 1 if "loss" in names else mine

    def create(self, fingerprint: dict[str, Any], description: dict[str, Any]) -> None:
        """Create the folders and write the manifest (once)."""
        for folder in (self.data, self.tmp, self.error_pieces, self.ray):
            folder.mkdir(parents=True, exist_ok=True)
        if not self.manifest.exists():
            body = {"fingerprint": fingerprint, **description}
            write_text_atomic(
                json.dumps(body, indent=2, sort_keys=True) + "\n", self.manifest, self.tmp
            )

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the folder for the run (released even on kill -9)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        self.state.mkdir(parents=True, exist_ok=True)
        with (self.state / "lock").open("a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                raise InputError(
                    f"another embgrad run is writing to {str(self.path)!r}; wait for it to end"
                ) from exc
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

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

    def commit_shard(self, shard: int, table: Any, errors: list[RowError]) -> None:
        """Write the shard's error piece, then its data file (the commit)."""
        write_text_atomic(jsonl(e.to_json() for e in errors), self._shard_errors(shard), self.tmp)
        write_parquet_atomic(table, self.shard_file(shard), self.tmp)

    # -- Ray runs ------------------------------------------------------------------------

    def ray_staging(self, run: str) -> Path:
        return self.ray / run

    def _ray_errors(self, run: str) -> Path:
        return self.error_pieces / f"ray-{run}.jsonl"

    def _commits(self) -> list[dict[str, Any]]:
        out = []
        for file in sorted(self.ray.glob("commit-*.json")):
            out.append(json.loads(file.read_text(encoding="utf-8")))
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
            entry.unlink(missing_ok=True)

    def done(self) -> set[int]:
        return self.local_done() | self.ray_done()

    # -- the errors file -------------------------------------------------------------------

    def rebuild_errors(self) -> int:
        """Rewrite ``errors.jsonl`` from the committed pieces, sorted by row; its line count."""
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
