"""Uploads and the explorer's file serving under attack: path traversal in every id position, oversize
bodies, non-images, truncated and decompression-bomb PNGs; a valid upload lands only in RUN/uploads, is
what ``convlens.photo_batch`` makes of the picture, and gets the same id every time."""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

import convlens
from tests.web.explorer import explorer_app
from convlens.web.uploads import MAX_BYTES, MAX_PIXELS


@pytest.fixture(scope="module")
def client(demo_copy):
    for app in explorer_app(demo_copy):  # the pages visited start jobs: none left running at the end
        yield TestClient(app)


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    out = {}
    for root, _dirs, names in os.walk(folder):
        for name in names:
            p = Path(root) / name
            st = p.stat()
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


def encoded(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format=fmt)
    return buf.getvalue()


def photo(seed: int = 0, h: int = 90, w: int = 150) -> np.ndarray:
    """A smooth picture (gradients and a disc): what resizing treats like a photo."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    disc = (yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (h / 4) ** 2
    rgb = np.stack([xx / w, yy / h, disc * 0.8 + 0.1], -1) * 255 + rng.normal(0, 3, (h, w, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def upload(client, data: bytes, name: str = "picture.png", kind: str = "image/png"):
    return client.post("/api/images", files={"file": (name, data, kind)})


# ---- path traversal ---------------------------------------------------------------------------------------

TRAVERSALS = [
    "/png/images/..%2F..%2Frun.json", "/png/images/%2e%2e%2f%2e%2e%2frun.json", "/png/images/%2e%2e",
    "/png/images/..%5C..%5Crun.json", "/images/%2e%2e", "/images/%2e%2e%2frun.json", "/images/..%2F..%2Fapp.py",
    "/api/images/%2e%2e%2f%2e%2e%2frun.json", "/png/images/%2Fetc%2Fpasswd", "/png/images//etc/passwd",
    "/images/%2Fetc%2Fpasswd", "/png/images/t3%2F..%2F..%2Frun.json", "/png/images/t3/..%2F..%2F..%2Frun.json",
    "/png/images/u..%2F..%2Frun", "/png/images/t3/activations/..%2F..%2Frun.json",
    "/png/images/t3/occlusion/%2e%2e", "/api/images/t3/maps%2F..%2F..%2Frun.json",
    "/static/../app.py", "/static/%2e%2e/app.py", "/static/%2e%2e%2fapp.py", "/static/..%2Fpages%2Fimages.py",
    "/jpg/codes/thumbs%2F..%2F..%2Frun.json", "/images/t3?layer=..%2F..%2Frun.json",
    "/png/images/t3/activations/%2e%2e%2f%2e%2e", "/images/%2Fwork%2Fmain%2Fconvlens%2Fweb%2Fapp.py",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_no_path_reaches_a_file_outside_what_the_run_serves(client, demo_copy, path):
    r = client.get(path)
    assert r.status_code in (400, 404), (path, r.status_code)
    text = r.content.decode("latin-1")
    run_json = (Path(demo_copy) / "run.json").read_text()
    assert run_json[:200] not in text and '"format": "convlens-run"' not in text
    assert "def create_app" not in text and "import " not in text and "root:x:" not in text


def test_absolute_and_dotted_upload_paths_are_not_ids(client, demo_copy):
    (Path(demo_copy) / "uploads").mkdir(exist_ok=True)
    (Path(demo_copy) / "uploads" / "notes.png").write_bytes(encoded(photo()))  # a file there, but not an id
    for bad in ("notes", "notes.png", "u" + "0" * 16 + ".png", "u" + "A" * 16, "u" + "0" * 17, "../uploads/notes"):
        assert client.get(f"/png/images/{bad}").status_code == 404, bad


# ---- caps ---------------------------------------------------------------------------------------------------

def test_an_oversize_upload_is_413_and_writes_nothing(client, demo_copy):
    before = files_of(Path(demo_copy))
    big = os.urandom(MAX_BYTES + 1)
    r = upload(client, big)
    assert r.status_code == 413 and r.json()["error"]["type"] == "too_large"
    r = client.post("/api/images", content=big, headers={"content-type": "image/png"})
    assert r.status_code == 413

    def chunks():  # no Content-Length: the bytes are counted as they come
        for _ in range(11):
            yield os.urandom(1024 * 1024)
    r = client.post("/api/images", content=chunks(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 413 and "10,485,760" in r.json()["error"]["message"]
    r = client.post("/images/upload", files={"file": ("big.png", big, "image/png")}, follow_redirects=False)
    assert r.status_code == 413 and "text/html" in r.headers["content-type"]
    assert files_of(Path(demo_copy)) == before


@pytest.mark.parametrize("content, reason", [
    (b"just some text, not a picture\n" * 10, "not an image"),
    (b"", "empty"),
])
def test_non_images_are_400_saying_why(client, content, reason):
    r = upload(client, content, "notes.txt", "text/plain")
    assert r.status_code == 400 and reason in r.json()["error"]["message"]


def test_a_truncated_png_is_400(client):
    data = encoded(photo())
    r = upload(client, data[: len(data) // 2])
    assert r.status_code == 400 and "truncated" in r.json()["error"]["message"]


def test_other_formats_are_refused(client):
    buf = io.BytesIO()
    Image.fromarray(photo()).save(buf, format="GIF")
    r = upload(client, buf.getvalue(), "a.gif", "image/gif")
    assert r.status_code == 400 and "GIF" in r.json()["error"]["message"]


@pytest.mark.parametrize("side", [20000, 7000])
def test_a_huge_picture_is_refused_by_the_pixel_cap_before_decoding(client, demo_copy, side):
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG", optimize=True)  # a few kB, side x side pixels
    assert len(buf.getvalue()) < MAX_BYTES and side * side > MAX_PIXELS
    before = files_of(Path(demo_copy))
    r = upload(client, buf.getvalue())
    assert r.status_code == 400 and f"{MAX_PIXELS:,}" in r.json()["error"]["message"]
    assert files_of(Path(demo_copy)) == before


def test_a_form_without_the_file_field_is_400(client):
    r = client.post("/api/images", files={"picture": ("a.png", encoded(photo()), "image/png")})
    assert r.status_code == 400 and "'file'" in r.json()["error"]["message"]
    r = client.post("/api/images", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 400


# ---- a valid upload --------------------------------------------------------------------------------------

def test_a_valid_upload_lands_only_in_the_upload_folder(client, demo_copy):
    root = Path(demo_copy)
    before = files_of(root)
    picture = photo(1)
    r = upload(client, encoded(picture), name="../../../../evil.png")
    assert r.status_code == 201
    image_id = r.json()["id"]
    added = set(files_of(root)) - set(before)
    assert added == {f"uploads/{image_id}.png"}
    assert not any("evil" in p for p in files_of(root)) and not (root.parent / "evil.png").exists()
    # what the model is shown: convlens.photo_batch's resize and centre crop (crop 1 for a run that is not a
    # pretrained ImageNet model), 8-bit
    run = convlens.load_run(demo_copy)
    size = run.input_shape[1]
    want = (convlens.photo_batch(picture, size=size, crop=1.0)[0] * 255 + 0.5).to(torch.uint8).permute(1, 2, 0)
    stored = np.asarray(Image.open(root / "uploads" / f"{image_id}.png"))
    assert np.array_equal(stored, want.numpy())
    assert image_id == "u" + hashlib.sha256((root / "uploads" / f"{image_id}.png").read_bytes()).hexdigest()[:16]
    # its page works: the predictions are the model's on the stored pixels
    page = client.get(f"/images/{image_id}")
    assert page.status_code == 200
    twin = client.get(f"/api/images/{image_id}").json()
    x = torch.from_numpy(stored.copy()).permute(2, 0, 1).float()[None] / 255
    with torch.no_grad():
        probs = torch.softmax(run.pixel_model().eval()(x).double(), 1)[0]
    assert [p["index"] for p in twin["predictions"]] == torch.topk(probs, 5).indices.tolist()
    assert twin["kind"] == "upload" and twin["occlusion"]["options"]["image"] == str(
        (root / "uploads" / f"{image_id}.png").resolve())  # `convlens occlusion RUN RUN/uploads/<id>.png`
    assert client.get(f"/png/images/{image_id}").status_code == 200
    assert image_id in client.get("/images").text


def test_the_same_picture_gets_the_same_id(client, demo_copy):
    data = encoded(photo(2))
    a = upload(client, data).json()["id"]
    b = upload(client, data, name="another-name.png").json()["id"]
    c = client.post("/api/images", content=data, headers={"content-type": "image/png"}).json()["id"]
    assert a == b == c
    assert upload(client, encoded(photo(3))).json()["id"] != a
    assert len(list((Path(demo_copy) / "uploads").glob(f"{a}*"))) == 1


def test_a_jpeg_and_the_form_without_javascript(client):
    data = encoded(photo(4, 200, 120), fmt="JPEG")
    r = client.post("/images/upload", files={"file": ("p.jpg", data, "image/jpeg")}, follow_redirects=False)
    assert r.status_code == 303
    location = r.headers["location"]
    assert not location.startswith("/") and "://" not in location  # relative: works under any proxy prefix
    page = client.get("/images/" + location.split("/")[-1])
    assert page.status_code == 200
    same = upload(client, data, "p.jpg", "image/jpeg").json()["id"]
    assert location.endswith(same)
