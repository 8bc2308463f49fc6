"""The state behind ``/label`` (pages in :mod:`.label`): one ``Game`` per explorer, holding its label store
(``RUN/labels.sqlite``), the class names to choose from, the keys of the data and weights, the example
images of each class, and the checks of what a client sends. Nothing here renders a page."""
from __future__ import annotations

import difflib
import math
import re
import threading
import weakref
from collections import OrderedDict
from functools import cached_property

import anyio.from_thread

from ...errors import InputError, expect
from ...results.labels import (AnswerConflict, ItemNotFound, LabelStore, SessionNotFound, check_annotator)
from ...results.provenance import data_key
from ...training.human_vs_cnn import CATEGORIES, game_sample
from ..errors import NotFound, WebError

EXAMPLES = 13        # example images per class (Karpathy's interface showed 13)
MAX_LABELS = 5
DEFAULT_N = 50
PREDICT_AHEAD = 8    # images whose CNN guesses `next` computes at once (one batch under the model lock)
_IMAGE_ID = re.compile(r"t(0|[1-9][0-9]{0,8})")
_SESSION_ID = re.compile(r"[0-9a-f]{16}")
_GAMES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_GAMES_LOCK = threading.Lock()


class Conflict(WebError):
    """409: the image already has an answer in this session; ``stored`` is its outcome."""
    status = 409
    type = "conflict"

    def __init__(self, message: str, stored: dict | None = None):
        super().__init__(message)
        self.stored = stored

    def to_dict(self) -> dict:
        out = super().to_dict()
        if self.stored is not None:
            out["error"]["stored"] = self.stored
        return out


def game(ex) -> "Game":
    with _GAMES_LOCK:
        if ex not in _GAMES:
            _GAMES[ex] = Game(ex)
        return _GAMES[ex]


def body(request, *, form: bool = False):
    """The request's JSON (or form) body, read from the worker thread the route runs in."""
    if form:
        return anyio.from_thread.run(request.form)
    try:
        return anyio.from_thread.run(request.json)
    except ValueError as e:
        raise WebError(f"the body must be JSON; got {e}") from None


class Game:
    def __init__(self, ex):
        self.ex = ex
        self.store = LabelStore(ex.dir)
        self._lock = threading.Lock()          # computing predictions and examples once
        self._examples: OrderedDict[str, dict] = OrderedDict()

    # ---- what the run has --------------------------------------------------------------------------

    @cached_property
    def classes(self) -> list[str]:
        """The class names to choose from: the model's (else the data's)."""
        return [str(c) for c in (self.ex.run.class_names or self.ex.data.class_names)]

    @cached_property
    def class_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    @cached_property
    def truths(self) -> list[str]:
        """The true class name of each image of the explorer's data."""
        names = self.ex.data.class_names
        truths = [str(names[int(y)]) for y in self.ex.data.labels]
        unknown = sorted(set(truths) - set(self.classes))
        if unknown:
            raise InputError(f"the data's classes must be the model's to play; got {', '.join(map(repr, unknown[:5]))}")
        return truths

    @cached_property
    def data_key(self) -> str:
        return data_key(self.ex.run.manifest.get("data"), {"data": self.ex.data_source})

    def weights_key(self) -> str | None:
        return self.ex.store.weights_key()

    def index(self, image_id: str) -> int:
        """The data index of an image id ``t<index>``; 404 otherwise."""
        m = _IMAGE_ID.fullmatch(str(image_id))
        if not m or int(m.group(1)) >= len(self.ex.data):
            raise NotFound(f"no image {image_id!r}; the images are t0 … t{len(self.ex.data) - 1}")
        return int(m.group(1))

    # ---- sessions ----------------------------------------------------------------------------------

    def session(self, sid: str):
        if not _SESSION_ID.fullmatch(str(sid)):
            raise NotFound(f"no labeling session {sid!r}")
        try:
            return self.store.session(sid)
        except SessionNotFound as e:
            raise NotFound(str(e)) from None

    def start(self, annotator, n, practice=0, seed=0):
        """A new session of ``n`` counted images (and ``practice`` more, first) of a seeded sample."""
        annotator = check_annotator(annotator)
        n, practice, seed = (_as_int(name, v, lo) for name, v, lo in
                             (("n", n, 1), ("practice", practice or 0, 0), ("seed", seed or 0, 0)))
        total = len(self.ex.data)
        if n + practice > total:
            raise expect("n + practice", f"at most {total} (the test images there are)", n + practice)
        counted, practice_rows = game_sample(total, n, practice=practice, seed=seed)
        order = practice_rows + counted
        known = self.store.predictions(self.data_key, self.weights_key() or "none", [f"t{i}" for i in order])
        items = [(f"t{i}", self.truths[i], known.get(f"t{i}"), k < practice) for k, i in enumerate(order)]
        return self.store.create_session(annotator, items, n=n, practice=practice, seed=seed, data=self.data_key,
                                         weights=self.weights_key())

    def top5(self, rows: list[int]) -> dict[str, list[str]]:
        """The CNN's 5 best class names for each data row (kept in the store per data and weights)."""
        from ...training.evaluate import evaluate

        ids = [f"t{i}" for i in rows]
        weights = self.weights_key() or "none"
        with self._lock:
            known = self.store.predictions(self.data_key, weights, ids)
            missing = [i for i in rows if f"t{i}" not in known]
            if missing:
                with self.ex.lock:
                    ev = evaluate(self.ex.run, self.ex.data.subset(missing), k=5, batch_size=64)
                new = {f"t{i}": [self.classes[int(c)] for c in top] for i, top in zip(missing, ev.topk)}
                self.store.save_predictions(self.data_key, weights, new)
                known.update(new)
        return known

    def predict(self, sid: str, images: list[str]) -> None:
        """Record the CNN's top 5 of these images of the session (computed now, or from the store's cache)."""
        if images:
            self.store.set_top5(sid, self.top5([self.index(i) for i in images]))

    def next(self, sid: str, rel: str = "") -> dict:
        self.session(sid)
        item, answered, total = self.store.next_item(sid)
        if item is not None and item.model_top5 is None:  # the CNN's guesses, a few images ahead of the annotator
            self.predict(sid, self.store.missing_top5(sid, limit=PREDICT_AHEAD))
        if item is None:
            return {"done": True, "session": sid, "answered": answered, "total": total, "remaining": 0}
        return {"done": False, "session": sid, "image_id": item.image, "image_url": f"{rel}label/png/images/{item.image}",
                "index": item.position, "remaining": total - answered, "total": total, "practice": item.practice}

    def answer(self, sid: str, data) -> dict:
        if not isinstance(data, dict):
            raise expect("the answer", 'a JSON object {"image_id", "labels", "seconds", "answer_id"}',
                         type(data).__name__)
        self.session(sid)
        image = str(data.get("image_id", ""))
        self.index(image)
        labels = self.check_labels(data.get("labels"))
        seconds = data.get("seconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                    or not math.isfinite(seconds) or seconds < 0):
            raise expect("seconds", "a number >= 0 (or null)", seconds)
        try:
            if self.store.item(sid, image).model_top5 is None:  # a client that did not ask for it with next
                self.predict(sid, [image])
        except ItemNotFound as e:
            raise NotFound(str(e)) from None
        answer_id = data.get("answer_id")
        if answer_id is not None and (not isinstance(answer_id, str) or not 1 <= len(answer_id) <= 100):
            raise expect("answer_id", "a string of 1 to 100 characters", answer_id)
        try:
            outcome = self.store.answer(sid, image, labels, seconds=None if seconds is None else float(seconds),
                                        answer_id=answer_id)
        except (SessionNotFound, ItemNotFound) as e:
            raise NotFound(str(e)) from None
        except AnswerConflict as e:
            raise Conflict(str(e), None if e.stored is None else e.stored.to_dict()) from None
        item, answered, total = self.store.next_item(sid)
        return {**outcome.to_dict(), "remaining": total - answered}

    def check_labels(self, labels) -> list[str]:
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise WebError(f"labels must be a list of 1 to {MAX_LABELS} class names; got {labels!r}")
        if not labels:
            raise WebError(f"labels must be 1 to {MAX_LABELS} class names; got none")
        if len(labels) > MAX_LABELS:
            raise WebError(f"labels must be at most {MAX_LABELS} class names; got {len(labels)}")
        dup = next((x for i, x in enumerate(labels) if x in labels[:i]), None)
        if dup is not None:
            raise WebError(f"labels must be distinct; got {dup!r} twice")
        for x in labels:
            if x not in self.class_index:
                near = difflib.get_close_matches(x, self.classes, n=3, cutoff=0.5) or \
                    [c for c in self.classes if x.lower() in c.lower()][:3]
                hint = f"; the nearest class names: {', '.join(map(repr, near))}" if near else ""
                raise WebError(f"label {x!r} is not a class name{hint}", near)
        return labels

    def tag(self, sid: str, image: str, category) -> None:
        if category in ("", None):
            category = None
        elif category not in CATEGORIES:
            raise WebError(f"category must be one of {', '.join(CATEGORIES)}; got {category!r}",
                           difflib.get_close_matches(str(category), list(CATEGORIES), n=3))
        self.session(sid)
        self.index(image)
        try:
            self.store.tag(sid, image, category)
        except (SessionNotFound, ItemNotFound) as e:
            raise NotFound(str(e)) from None

    # ---- example images per class --------------------------------------------------------------------

    @cached_property
    def _train(self):
        """(dataset, {class index: data rows}) of the run's training split, EXAMPLES per class at most; None
        when the run does not record one (a wrapped model) or the explorer shows other data."""
        from ...training.evaluate import run_data

        spec = (self.ex.run.manifest.get("data") or {}).get("train")
        if self.ex.data_source is not None or not (spec or {}).get("spec"):
            return None
        from ... import datasets

        load = dict(spec["spec"])
        full = load.get("n") or spec.get("size")
        want = EXAMPLES * len(self.classes)
        try:
            if full and want < full and load.get("name_or_path") in datasets.names():
                load["n"] = want  # a balanced subset of the same split: 13 per class without reading it all
                ds = datasets.load(**load)
            else:
                ds = run_data(self.ex.run, "train")
        except Exception:  # the training data is gone or unreadable: fall back to the test images
            return None
        return ds, self._rows_by_class(ds, set())

    def _rows_by_class(self, ds, exclude: set[int]) -> dict[int, list[int]]:
        names = [str(c) for c in ds.class_names]
        out: dict[int, list[int]] = {}
        for row, y in enumerate(ds.labels.tolist()):
            c = self.class_index.get(names[y])
            if c is not None and row not in exclude and len(out.setdefault(c, [])) < EXAMPLES:
                out[c].append(row)
        return out

    def examples(self, sid: str) -> dict:
        """{"source", "counts" (per class), "dataset", "rows"} for a session: training-split images, else
        the test images of the class that are not in the session (never an image to be labeled)."""
        self.session(sid)
        with self._lock:
            if sid in self._examples:
                self._examples.move_to_end(sid)
                return self._examples[sid]
        train = self._train
        if train is not None:
            ds, rows, source = train[0], train[1], "the training split"
        else:
            exclude = {self.index(i.image) for i in self.store.items(sid)}
            ds, rows, source = self.ex.data, self._rows_by_class(self.ex.data, exclude), \
                "test images that are not in this session (the run records no training split)"
        out = {"source": source, "dataset": ds, "rows": rows,
               "counts": [len(rows.get(c, ())) for c in range(len(self.classes))]}
        with self._lock:
            self._examples[sid] = out
            while len(self._examples) > 32:
                self._examples.popitem(last=False)
        return out


def _as_int(name: str, value, lo: int) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise expect(name, f"an int >= {lo}", value)
    return value
