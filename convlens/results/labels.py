"""The labeling game's answers: one SQLite file per run, ``RUN/labels.sqlite`` (stdlib ``sqlite3``).

What it keeps: *sessions* (an annotator's fixed, seeded sample of the test images: the counted images and
the practice ones), each session's *items* (image id, true class, the CNN's top 5, computed when the game first needs it),
the *answers* (1 to 5 labels, seconds, an ``answer_id`` chosen by the client) and the *tags* (one of
Karpathy's error categories per answer, set after the session). ``LabelStore.comparison()`` scores them with
:func:`convlens.training.human_vs_cnn.human_vs_cnn`.

Safety, in the order it matters:

* **Committed before acknowledged.** Every write is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``) that
  returns only once SQLite has committed it, in WAL mode with ``synchronous=FULL`` (the WAL is fsynced at
  each commit): a server killed at any moment (SIGKILL, power loss) keeps every answer it acknowledged;
  the next connection replays the WAL.
* **Idempotent.** An ``answer_id`` is the table's primary key: the same answer posted twice (a double
  click, a client's retry after a lost response) is stored once and the second post gets the first's
  outcome. An image is answered once per session (``UNIQUE (session, image)``): a second answer with
  another id is refused (``AnswerConflict``) and the first stands.
* **Many annotators at once.** Each call opens its own connection (so threads never share one); writers
  take the database's write lock at ``BEGIN IMMEDIATE`` and wait up to ``timeout`` seconds for it;
  readers never wait (WAL).
* **Versioned.** ``PRAGMA user_version`` is the schema version; opening an older file applies the missing
  ``MIGRATIONS`` in one transaction; a newer file (a newer convlens wrote it) is refused, untouched.
"""
from __future__ import annotations

import csv
import io
import json
import secrets
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import ConvLensError, InputError

FILENAME = "labels.sqlite"

# MIGRATIONS[v] takes a file at schema version v to v + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        annotator TEXT NOT NULL,
        n INTEGER NOT NULL,            -- counted images
        practice INTEGER NOT NULL,     -- practice images (shown with their answer, not counted)
        seed INTEGER NOT NULL,
        data TEXT NOT NULL,            -- key of the images (results.provenance.data_key)
        weights TEXT,                  -- key of the weights that made model_top5
        created REAL NOT NULL
    );
    CREATE TABLE items (
        session TEXT NOT NULL REFERENCES sessions(id),
        position INTEGER NOT NULL,     -- order of play: the practice images first
        image TEXT NOT NULL,           -- "t<index>" in the explorer's data
        practice INTEGER NOT NULL,
        truth TEXT NOT NULL,           -- class name
        model_top5 TEXT,               -- JSON list of class names, best first (NULL until first needed)
        PRIMARY KEY (session, position),
        UNIQUE (session, image)
    );
    CREATE TABLE answers (
        answer_id TEXT PRIMARY KEY,
        session TEXT NOT NULL REFERENCES sessions(id),
        image TEXT NOT NULL,
        labels TEXT NOT NULL,          -- JSON list of 1 to 5 class names, in the annotator's order
        seconds REAL,
        created REAL NOT NULL,
        UNIQUE (session, image)
    );
    CREATE TABLE tags (
        session TEXT NOT NULL REFERENCES sessions(id),
        image TEXT NOT NULL,
        category TEXT NOT NULL,
        updated REAL NOT NULL,
        PRIMARY KEY (session, image)
    );
    CREATE TABLE predictions (         -- the CNN's top 5 per image, so that a new session need not recompute
        data TEXT NOT NULL,
        weights TEXT NOT NULL,
        image TEXT NOT NULL,
        top5 TEXT NOT NULL,
        PRIMARY KEY (data, weights, image)
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class SessionNotFound(ConvLensError):
    """No session with that id."""


class ItemNotFound(ConvLensError):
    """The image is not one of the session's."""


class AnswerConflict(ConvLensError):
    """The image already has another answer in this session (``.stored``: its outcome), or the answer_id
    was used for another image."""

    def __init__(self, message: str, stored: "Outcome | None" = None):
        super().__init__(message)
        self.stored = stored


@dataclass(frozen=True)
class Session:
    id: str
    annotator: str
    n: int
    practice: int
    seed: int
    data: str
    weights: str | None
    created: float
    answered: int = 0      # answers so far, practice included
    total: int = 0         # items: n + practice

    def to_dict(self) -> dict:
        return {"session": self.id, "annotator": self.annotator, "n": self.n, "practice": self.practice,
                "seed": self.seed, "answered": self.answered, "total": self.total,
                "remaining": self.total - self.answered, "done": self.answered >= self.total,
                "created": self.created}


@dataclass(frozen=True)
class Item:
    session: str
    position: int
    image: str
    practice: bool
    truth: str
    model_top5: list[str] | None  # None until the game first needs it


@dataclass(frozen=True)
class Outcome:
    """An answer as stored, and how it scores."""
    answer_id: str
    item: Item
    labels: list[str]
    seconds: float | None
    repeat: bool = False   # this post repeated an answer already stored (same answer_id)

    def to_dict(self) -> dict:
        return {"answer_id": self.answer_id, "image_id": self.item.image, "labels": self.labels,
                "correct_top1": self.labels[0] == self.item.truth, "correct_top5": self.item.truth in self.labels,
                "truth": self.item.truth, "model_top5": self.item.model_top5,
                "model_correct_top1": self.item.model_top5[:1] == [self.item.truth],
                "model_correct_top5": self.item.truth in self.item.model_top5[:5],
                "practice": self.item.practice, "repeat": self.repeat}


class LabelStore:
    """The labels file of a run directory (module docstring). ``create=False``: a missing file stays missing
    (readers such as the report), and every read answers as if empty."""

    def __init__(self, run_dir: str | Path, *, create: bool = True, timeout: float = 30.0):
        self.path = Path(run_dir) / FILENAME
        self.timeout = timeout
        if create or self.path.is_file():
            self._migrate()

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)  # transactions by hand
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=ON")
            yield con
        finally:
            con.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection | None]:
        if not self.path.is_file():
            yield None
            return
        with self._connect() as con:
            yield con

    def _migrate(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._write() as con:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise InputError(f"{self.path} has labels schema version {version}, newer than this convlens's "
                                 f"{SCHEMA_VERSION}; upgrade convlens to read it (the file is left as it is)")
            for v in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[v]):
                    con.execute(statement)
                con.execute(f"PRAGMA user_version = {v + 1}")

    def version(self) -> int:
        with self._read() as con:
            return 0 if con is None else con.execute("PRAGMA user_version").fetchone()[0]

    # ---- sessions ----------------------------------------------------------------------------------

    def create_session(self, annotator: str, items: Sequence[tuple[str, str, list[str] | None, bool]], *, n: int,
                       practice: int, seed: int, data: str, weights: str | None) -> Session:
        """A new session over ``items`` ((image id, truth, the CNN's top 5 or None until ``set_top5``, practice?)
        in order of play)."""
        annotator = check_annotator(annotator)
        sid = secrets.token_hex(8)
        now = time.time()
        with self._write() as con:
            con.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (sid, annotator, n, practice, seed, data, weights, now))
            con.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)",
                            [(sid, i, image, int(p), truth, None if top5 is None else json.dumps(list(top5)))
                             for i, (image, truth, top5, p) in enumerate(items)])
        return self.session(sid)

    def session(self, sid: str) -> Session:
        with self._read() as con:
            row = None if con is None else con.execute(
                _SESSIONS + " WHERE s.id = ? GROUP BY s.id", (str(sid),)).fetchone()
        if row is None:
            raise SessionNotFound(f"no labeling session {sid!r}")
        return Session(*row)

    def sessions(self, *, data: str | None = None) -> list[Session]:
        """Every session (of the images ``data`` when given), oldest first."""
        with self._read() as con:
            if con is None:
                return []
            where, args = ("WHERE s.data = ?", (data,)) if data is not None else ("", ())
            rows = con.execute(f"{_SESSIONS} {where} GROUP BY s.id ORDER BY s.created, s.id", args).fetchall()
        return [Session(*r) for r in rows]

    def items(self, sid: str) -> list[Item]:
        self.session(sid)
        with self._read() as con:
            rows = con.execute("SELECT session, position, image, practice, truth, model_top5 FROM items "
                               "WHERE session = ? ORDER BY position", (sid,)).fetchall()
        return [_item(r) for r in rows]

    def item(self, sid: str, image: str) -> Item:
        self.session(sid)
        with self._read() as con:
            row = con.execute("SELECT session, position, image, practice, truth, model_top5 FROM items "
                              "WHERE session = ? AND image = ?", (sid, str(image))).fetchone()
        if row is None:
            raise ItemNotFound(f"image {image!r} is not in labeling session {sid!r}")
        return _item(row)

    def next_item(self, sid: str) -> tuple[Item | None, int, int]:
        """(the first unanswered item or None when done, answers so far, items in all)."""
        s = self.session(sid)
        with self._read() as con:
            row = con.execute("SELECT i.session, i.position, i.image, i.practice, i.truth, i.model_top5 FROM items i "
                              "WHERE i.session = ? AND NOT EXISTS (SELECT 1 FROM answers a WHERE a.session = i.session "
                              "AND a.image = i.image) ORDER BY i.position LIMIT 1", (sid,)).fetchone()
        return (None if row is None else _item(row)), s.answered, s.total

    def missing_top5(self, sid: str, *, limit: int) -> list[str]:
        """The next ``limit`` unanswered images of the session (in order of play) without the CNN's top 5."""
        with self._read() as con:
            return [r[0] for r in con.execute(
                "SELECT i.image FROM items i WHERE i.session = ? AND i.model_top5 IS NULL AND NOT EXISTS (SELECT 1 "
                "FROM answers a WHERE a.session = i.session AND a.image = i.image) ORDER BY i.position LIMIT ?",
                (sid, limit))]

    def set_top5(self, sid: str, top5: dict[str, list[str]]) -> None:
        """Record the CNN's top 5 of images of the session (once: a recorded one is kept)."""
        with self._write() as con:
            con.executemany("UPDATE items SET model_top5 = ? WHERE session = ? AND image = ? AND model_top5 IS NULL",
                            [(json.dumps(list(t)), sid, image) for image, t in top5.items()])

    # ---- answers -----------------------------------------------------------------------------------

    def answer(self, sid: str, image: str, labels: Sequence[str], *, seconds: float | None = None,
               answer_id: str | None = None) -> Outcome:
        """Store an answer and return its outcome once committed. The same ``answer_id`` again returns the
        stored outcome (``repeat=True``); another answer to an answered image raises AnswerConflict."""
        answer_id = str(answer_id) if answer_id else secrets.token_hex(12)
        labels = list(labels)
        with self._write() as con:
            if con.execute("SELECT 1 FROM sessions WHERE id = ?", (sid,)).fetchone() is None:
                raise SessionNotFound(f"no labeling session {sid!r}")
            row = con.execute("SELECT session, position, image, practice, truth, model_top5 FROM items "
                              "WHERE session = ? AND image = ?", (sid, str(image))).fetchone()
            if row is None:
                raise ItemNotFound(f"image {image!r} is not in labeling session {sid!r}")
            item = _item(row)
            if item.model_top5 is None:
                raise InputError(f"image {item.image!r} of session {sid!r} has no CNN prediction yet (set_top5 first)")
            same_id = con.execute("SELECT session, image, labels, seconds FROM answers WHERE answer_id = ?",
                                  (answer_id,)).fetchone()
            if same_id is not None:
                if (same_id[0], same_id[1]) != (sid, item.image):
                    raise AnswerConflict(f"answer_id {answer_id!r} was already used for image {same_id[1]!r} of "
                                         f"session {same_id[0]!r}; use a new id for each answer")
                return Outcome(answer_id, item, json.loads(same_id[2]), same_id[3], repeat=True)
            first = con.execute("SELECT answer_id, labels, seconds FROM answers WHERE session = ? AND image = ?",
                                (sid, item.image)).fetchone()
            if first is not None:
                stored = Outcome(first[0], item, json.loads(first[1]), first[2], repeat=True)
                raise AnswerConflict(f"image {item.image!r} was already answered in session {sid!r} "
                                     f"({', '.join(stored.labels)}); the first answer stands", stored)
            con.execute("INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                        (answer_id, sid, item.image, json.dumps(labels), seconds, time.time()))
        return Outcome(answer_id, item, labels, seconds)

    def tag(self, sid: str, image: str, category: str | None) -> None:
        """Set (or with None clear) the error category of an answered image of the session."""
        with self._write() as con:
            if con.execute("SELECT 1 FROM answers WHERE session = ? AND image = ?", (sid, str(image))).fetchone() is None:
                if con.execute("SELECT 1 FROM sessions WHERE id = ?", (sid,)).fetchone() is None:
                    raise SessionNotFound(f"no labeling session {sid!r}")
                raise ItemNotFound(f"image {image!r} has no answer in labeling session {sid!r}")
            if category is None:
                con.execute("DELETE FROM tags WHERE session = ? AND image = ?", (sid, str(image)))
            else:
                con.execute("INSERT INTO tags VALUES (?, ?, ?, ?) ON CONFLICT (session, image) DO UPDATE SET "
                            "category = excluded.category, updated = excluded.updated",
                            (sid, str(image), category, time.time()))

    def rows(self, *, data: str | None = None, weights: str | None = None, annotator: str | None = None,
             session: str | None = None, practice: bool = False) -> list[dict]:
        """Every stored answer joined with its item, session and tag, in order of answering; only those of
        ``data``/``weights``/``annotator``/``session`` where given; practice answers only with ``practice``."""
        clauses, args = [], []
        for column, value in (("s.data", data), ("s.weights", weights), ("s.annotator", annotator),
                              ("s.id", session)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if not practice:
            clauses.append("i.practice = 0")
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        with self._read() as con:
            if con is None:
                return []
            found = con.execute(
                "SELECT a.answer_id, s.id, s.annotator, a.image, i.position, i.practice, i.truth, a.labels, "
                "i.model_top5, a.seconds, t.category, a.created, s.weights FROM answers a "
                "JOIN sessions s ON s.id = a.session JOIN items i ON i.session = a.session AND i.image = a.image "
                f"LEFT JOIN tags t ON t.session = a.session AND t.image = a.image {where} "
                "ORDER BY a.created, a.rowid", args).fetchall()
        keys = ("answer_id", "session", "annotator", "image", "position", "practice", "truth", "labels",
                "model_top5", "seconds", "category", "created", "weights")
        out = []
        for r in found:
            d = dict(zip(keys, r))
            d["practice"] = bool(d["practice"])
            d["labels"], d["model_top5"] = json.loads(d["labels"]), json.loads(d["model_top5"])
            out.append(d)
        return out

    def comparison(self, *, data: str | None = None, weights: str | None = None, annotator: str | None = None,
                   class_names: Sequence[str] | None = None):
        """The answers (not practice) scored: a ``HumanVsCNN``."""
        from ..training.human_vs_cnn import human_vs_cnn

        return human_vs_cnn(self.rows(data=data, weights=weights, annotator=annotator), annotator=annotator,
                            class_names=class_names)

    # ---- the CNN's predictions, kept for the next session ------------------------------------------

    def predictions(self, data: str, weights: str, images: Sequence[str]) -> dict[str, list[str]]:
        with self._read() as con:
            if con is None:
                return {}
            found = {}
            for i in range(0, len(images), 500):
                chunk = list(images[i:i + 500])
                marks = ",".join("?" * len(chunk))
                for image, top5 in con.execute(f"SELECT image, top5 FROM predictions WHERE data = ? AND weights = ? "
                                               f"AND image IN ({marks})", (data, weights, *chunk)):
                    found[image] = json.loads(top5)
        return found

    def save_predictions(self, data: str, weights: str, top5: dict[str, list[str]]) -> None:
        with self._write() as con:
            con.executemany("INSERT OR REPLACE INTO predictions VALUES (?, ?, ?, ?)",
                            [(data, weights, image, json.dumps(list(t))) for image, t in top5.items()])


_SESSIONS = ("SELECT s.id, s.annotator, s.n, s.practice, s.seed, s.data, s.weights, s.created, "
             "(SELECT COUNT(*) FROM answers a WHERE a.session = s.id), "
             "(SELECT COUNT(*) FROM items i WHERE i.session = s.id) FROM sessions s")


def _item(row) -> Item:
    return Item(row[0], row[1], row[2], bool(row[3]), row[4], None if row[5] is None else json.loads(row[5]))


def _statements(script: str) -> list[str]:
    """The statements of a migration script, split where ``sqlite3.complete_statement`` says one ends (not at a
    ``;`` in a string or comment). ``executescript`` would commit the transaction the migration runs in."""
    out, current = [], ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \t\n;"):
                out.append(current.strip())
            current = ""
    return out


def check_annotator(name) -> str:
    """An annotator name: 1 to 80 printable characters, surrounding space dropped (shown escaped everywhere)."""
    text = name.strip() if isinstance(name, str) else ""
    if not text or len(text) > 80 or not text.isprintable():
        raise InputError(f"annotator must be a name of 1 to 80 printable characters; got {name!r}")
    return text


CSV_COLUMNS = ("annotator", "session", "image", "truth", "labels", "model_top5", "human_top1", "human_top5",
               "cnn_top1", "cnn_top5", "seconds", "category", "practice", "answer_id", "created")


def export_rows(rows: list[dict]) -> list[dict]:
    """Stored answers (``LabelStore.rows``) with their correctness, for the JSON and CSV exports."""
    out = []
    for r in rows:
        out.append({"annotator": r["annotator"], "session": r["session"], "image": r["image"], "truth": r["truth"],
                    "labels": r["labels"], "model_top5": r["model_top5"],
                    "human_top1": r["labels"][:1] == [r["truth"]], "human_top5": r["truth"] in r["labels"],
                    "cnn_top1": r["model_top5"][:1] == [r["truth"]], "cnn_top5": r["truth"] in r["model_top5"][:5],
                    "seconds": r["seconds"], "category": r["category"], "practice": r["practice"],
                    "answer_id": r["answer_id"], "created": r["created"]})
    return out


def to_csv(rows: list[dict]) -> str:
    """``export_rows`` as CSV (labels joined with ``|``; booleans as 0/1). A cell that a spreadsheet would read
    as a formula (``=``, ``+``, ``-``, ``@`` first) is prefixed with ``'``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in export_rows(rows):
        cells = []
        for key in CSV_COLUMNS:
            v = r[key]
            v = "|".join(v) if isinstance(v, list) else int(v) if isinstance(v, bool) else "" if v is None else v
            if isinstance(v, str) and v[:1] in ("=", "+", "-", "@"):
                v = "'" + v
            cells.append(v)
        w.writerow(cells)
    return buf.getvalue()
