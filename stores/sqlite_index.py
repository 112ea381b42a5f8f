"""The index of a local store: one SQLite file in WAL mode beside the data (``_index.sqlite``)."""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from typing import Iterator

from stores.index import ArtifactSummary, ClaimResult, Index, Location, PackInfo, RunInfo

_SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts(aid INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, record TEXT NOT NULL,
                                     created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS packs(aid INTEGER NOT NULL, pack TEXT NOT NULL, status TEXT NOT NULL, run_id TEXT,
                                 created REAL NOT NULL, items INTEGER NOT NULL DEFAULT 0,
                                 nbytes INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(aid, pack)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS packs_by_status ON packs(status, created);
CREATE TABLE IF NOT EXISTS items(aid INTEGER NOT NULL, item TEXT NOT NULL, pack TEXT NOT NULL, row INTEGER NOT NULL,
                                 PRIMARY KEY(aid, item)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS duplicates(aid INTEGER NOT NULL, item TEXT NOT NULL, pack TEXT NOT NULL,
                                      PRIMARY KEY(aid, item, pack)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS claims(aid INTEGER NOT NULL, item TEXT NOT NULL, run_id TEXT NOT NULL,
                                  PRIMARY KEY(aid, item)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs(run_id TEXT PRIMARY KEY, record TEXT NOT NULL, status TEXT NOT NULL,
                                heartbeat REAL, updated REAL);
CREATE TABLE IF NOT EXISTS run_artifacts(run_id TEXT NOT NULL, aid INTEGER NOT NULL,
                                         PRIMARY KEY(run_id, aid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS input_hashes(root TEXT NOT NULL, rel TEXT NOT NULL, size INTEGER NOT NULL,
                                        mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL,
                                        PRIMARY KEY(root, rel)) WITHOUT ROWID;
"""
_CHUNK = 500   # parameters per IN (...) query


def _chunks(seq: list, n: int = _CHUNK) -> Iterator[list]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


_BUSY_SECONDS = 120


def _set_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL mode. On a new file, two processes doing this at once get SQLITE_BUSY at once (the journal-mode
    change does not wait on the busy handler), so retry until the timeout."""
    deadline = time.monotonic() + _BUSY_SECONDS
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class SqliteIndex(Index):
    """The index of a local store: one SQLite file in WAL mode beside the data (``_index.sqlite``).

    Safe for several processes on one machine (SQLite's locking); not for a store on a network filesystem,
    where an object store (S3) with :class:`ObjectIndex` is the shared option.
    """

    FILE = "_index.sqlite"

    def __init__(self, root: str):
        self.path = os.path.join(root, self.FILE)
        self._local = threading.local()
        self._aids: dict[str, int] = {}
        self.db.executescript(_SCHEMA)

    @property
    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=_BUSY_SECONDS, isolation_level=None, check_same_thread=False)
            _set_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _write(self) -> "_Txn":
        return _Txn(self.db)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _aid(self, path: str, create_record: dict | None = None) -> int | None:
        if path in self._aids:
            return self._aids[path]
        row = self.db.execute("SELECT aid FROM artifacts WHERE path=?", (path,)).fetchone()
        if row is None and create_record is not None:
            with self._write() as db:
                db.execute("INSERT OR IGNORE INTO artifacts(path, record, created) VALUES (?,?,?)",
                           (path, json.dumps(create_record), time.time()))
            row = self.db.execute("SELECT aid FROM artifacts WHERE path=?", (path,)).fetchone()
        if row is None:
            return None
        self._aids[path] = row[0]
        return row[0]

    # artifacts -----------------------------------------------------------------------------
    def ensure_artifact(self, path, record):
        self._aid(path, record)
        with self._write() as db:   # a run may have named it first (a placeholder record): fill it in
            db.execute("UPDATE artifacts SET record=? WHERE path=? AND record NOT LIKE '%\"stage\"%'",
                       (json.dumps(record), path))

    def artifact_record(self, path):
        row = self.db.execute("SELECT record FROM artifacts WHERE path=?", (path,)).fetchone()
        return json.loads(row[0]) if row else None

    def artifacts(self):
        stats = {aid: (items, packs, nbytes) for aid, items, packs, nbytes in self.db.execute(
            "SELECT aid, SUM(items), COUNT(*), SUM(nbytes) FROM packs WHERE status='committed' GROUP BY aid")}
        return [ArtifactSummary(path, json.loads(record), created, *stats.get(aid, (0, 0, 0)))
                for aid, path, record, created in self.db.execute("SELECT aid, path, record, created FROM artifacts")]

    def drop_artifact(self, path, unless_named=False):
        aid = self._aid(path)
        if aid is None:
            return False
        with self._write() as db:
            if unless_named and db.execute("SELECT 1 FROM run_artifacts WHERE aid=? LIMIT 1", (aid,)).fetchone():
                return False
            for table in ("items", "packs", "duplicates", "claims", "run_artifacts", "artifacts"):
                db.execute(f"DELETE FROM {table} WHERE aid=?", (aid,))
        self._aids.pop(path, None)
        return True

    # packs and items -----------------------------------------------------------------------
    def begin_pack(self, path, pack, run_id):
        with self._write() as db:
            db.execute("INSERT INTO packs(aid, pack, status, run_id, created) VALUES (?,?,?,?,?)",
                       (self._aid(path), pack, "pending", run_id, time.time()))

    def commit_pack(self, path, pack, items, nbytes):
        aid = self._aid(path)
        with self._write() as db:
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO items(aid, item, pack, row) VALUES (?,?,?,?)",
                           [(aid, item, pack, row) for row, item in enumerate(items)])
            dupes = []
            if db.total_changes - before < len(items):
                dupes = [item for item, owner in self._owners(db, aid, items) if owner != pack]
                db.executemany("INSERT OR IGNORE INTO duplicates(aid, item, pack) VALUES (?,?,?)",
                               [(aid, item, pack) for item in dupes])
            db.execute("UPDATE packs SET status='committed', items=?, nbytes=? WHERE aid=? AND pack=?",
                       (len(items), nbytes, aid, pack))
            for part in _chunks(items):
                db.execute(f"DELETE FROM claims WHERE aid=? AND item IN ({','.join('?' * len(part))})", (aid, *part))
        return dupes

    @staticmethod
    def _owners(db, aid, items) -> list[tuple[str, str]]:
        out = []
        for part in _chunks(list(items)):
            out += db.execute(f"SELECT item, pack FROM items WHERE aid=? AND item IN ({','.join('?' * len(part))})",
                              (aid, *part)).fetchall()
        return out

    def lookup(self, path, items):
        aid = self._aid(path)
        if aid is None:
            return {}
        found = {}
        for part in _chunks(list(dict.fromkeys(items))):
            for item, pack, row in self.db.execute(
                    f"SELECT item, pack, row FROM items WHERE aid=? AND item IN ({','.join('?' * len(part))})",
                    (aid, *part)):
                found[item] = Location(pack, row)
        return found

    def items_with_prefix(self, path, prefix):
        aid = self._aid(path)
        if aid is None:
            return {}
        rows = self.db.execute("SELECT item, pack, row FROM items WHERE aid=? AND item >= ? AND item < ?",
                               (aid, prefix, prefix + "\uffff"))
        return {item: Location(pack, row) for item, pack, row in rows}

    def iter_items(self, path):
        aid = self._aid(path)
        if aid is None:
            return
        for item, pack, row in self.db.execute("SELECT item, pack, row FROM items WHERE aid=?", (aid,)):
            yield item, Location(pack, row)

    def packs(self, path):
        aid = self._aid(path)
        rows = self.db.execute("SELECT pack, status, run_id, created, items FROM packs WHERE aid=?", (aid,))
        return [PackInfo(path, *row) for row in rows]

    def pending_packs(self, older_than):
        rows = self.db.execute(
            "SELECT a.path, p.pack, p.status, p.run_id, p.created, p.items FROM packs p JOIN artifacts a USING(aid) "
            "WHERE p.status='pending' AND p.created < ?", (older_than,))
        return [PackInfo(*row) for row in rows]

    def drop_pack(self, path, pack):
        aid = self._aid(path)
        with self._write() as db:
            db.execute("DELETE FROM items WHERE aid=? AND pack=?", (aid, pack))
            db.execute("DELETE FROM duplicates WHERE aid=? AND pack=?", (aid, pack))
            db.execute("DELETE FROM packs WHERE aid=? AND pack=?", (aid, pack))

    def duplicates(self, path):
        aid = self._aid(path)
        return [tuple(r) for r in self.db.execute("SELECT item, pack FROM duplicates WHERE aid=?", (aid,))]

    # claims -------------------------------------------------------------------------------
    def claim(self, path, items, run_id, live_after):
        aid = self._aid(path)
        with self._write() as db:
            done = {item for item, _ in self._owners(db, aid, items)}
            holders: dict[str, tuple[str, float | None]] = {}
            for part in _chunks([i for i in items if i not in done]):
                q = (f"SELECT c.item, c.run_id, r.heartbeat FROM claims c LEFT JOIN runs r "
                     f"ON r.run_id = c.run_id AND r.status = 'running' "
                     f"WHERE c.aid=? AND c.item IN ({','.join('?' * len(part))})")
                holders.update({item: (owner, beat) for item, owner, beat in db.execute(q, (aid, *part))})
            result = ClaimResult([], [], [])
            for item in items:
                owner, beat = holders.get(item, (None, None))
                if item in done:
                    result.done.append(item)
                elif owner not in (None, run_id) and beat is not None and beat > live_after:
                    result.held.append(item)
                else:
                    result.granted.append(item)
            db.executemany("INSERT OR REPLACE INTO claims(aid, item, run_id) VALUES (?,?,?)",
                           [(aid, item, run_id) for item in result.granted])
        return result

    def release(self, path, items, run_id):
        aid = self._aid(path)
        with self._write() as db:
            db.executemany("DELETE FROM claims WHERE aid=? AND item=? AND run_id=?",
                           [(aid, item, run_id) for item in items])

    # runs ---------------------------------------------------------------------------------
    def put_run(self, run_id, record, status):
        now = time.time()
        with self._write() as db:
            db.execute("INSERT INTO runs(run_id, record, status, heartbeat, updated) VALUES (?,?,?,?,?) "
                       "ON CONFLICT(run_id) DO UPDATE SET record=excluded.record, status=excluded.status, "
                       "heartbeat=excluded.heartbeat, updated=excluded.updated",
                       (run_id, json.dumps(record), status, now, now))

    def heartbeat(self, run_id):
        with self._write() as db:
            db.execute("UPDATE runs SET heartbeat=? WHERE run_id=?", (time.time(), run_id))

    def announce(self, run_id, path):
        self._aids.pop(path, None)          # re-resolve: gc may have dropped and a writer re-created it
        aid = self._aid(path, {"path": path})
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO run_artifacts(run_id, aid) VALUES (?,?)", (run_id, aid))

    def runs(self):
        named: dict[str, list[str]] = {}
        for run_id, path in self.db.execute(
                "SELECT ra.run_id, a.path FROM run_artifacts ra JOIN artifacts a USING(aid)"):
            named.setdefault(run_id, []).append(path)
        return [RunInfo(run_id, json.loads(record), status, beat, updated, sorted(named.get(run_id, [])))
                for run_id, record, status, beat, updated in self.db.execute(
                    "SELECT run_id, record, status, heartbeat, updated FROM runs")]

    def drop_run(self, run_id):
        with self._write() as db:
            db.execute("DELETE FROM run_artifacts WHERE run_id=?", (run_id,))
            db.execute("DELETE FROM runs WHERE run_id=?", (run_id,))

    # input hashes -------------------------------------------------------------------------
    def input_hashes(self, root):
        rows = self.db.execute("SELECT rel, size, mtime_ns, sha256 FROM input_hashes WHERE root=?", (root,))
        return {rel: (size, mtime, sha) for rel, size, mtime, sha in rows}

    def save_input_hashes(self, root, entries):
        with self._write() as db:
            db.executemany("INSERT OR REPLACE INTO input_hashes(root, rel, size, mtime_ns, sha256) VALUES (?,?,?,?,?)",
                           [(root, rel, *v) for rel, v in entries.items()])


class _Txn:
    """``with _Txn(conn) as db``: BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
