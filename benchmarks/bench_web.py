"""The explorer under load: every page type of the demo run served from a warm cache.

A copy of ``runs/demo`` (its results included) is served by ``convlens serve`` in its own process on
127.0.0.1. The pages are found by crawling from ``/`` (HTML links and each page's ``/api`` twin), at most
``PER_KIND`` pages of each kind (the path with its numbers and layer names replaced by placeholders), and
each is fetched until no background job is left (the warm cache). Then ``CONNECTIONS`` concurrent
keep-alive connections of one asyncio client fetch the pages round-robin for ``SECONDS`` seconds. Printed:
requests, errors (any status but 200), p50 / p95 / max latency. Goal: p95 <= 150 ms and no errors.
The client shares the 2 cores with the server: the latency includes that competition.
"""
from __future__ import annotations

import asyncio
import html
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urljoin

CONNECTIONS = 16
SECONDS = 20.0
PER_KIND = 4
DEMO = Path(__file__).resolve().parents[1] / "runs" / "demo"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(client, base: str, seconds: float = 60.0) -> None:
    """Wait until the server at ``base`` answers (its stylesheet), at most ``seconds``."""
    import httpx

    for _ in range(int(seconds * 10)):
        try:
            client.get(base + "static/explorer.css")
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"the explorer at {base} did not answer within {seconds:.0f} s")


def _kind(path: str) -> str:
    return re.sub(r"/(t?\d+|conv\w+|[\w.]+(?=/units))", "/*", path.split("?")[0])


def _crawl(client, base: str) -> list[str]:
    """Relative paths of the app's pages (HTML and their /api twins), warmed until no job is pending."""
    seen, good, queue, kinds = set(), [], ["/"], {}
    while queue:
        path = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        for _ in range(600):  # warm: fetch until the page has no job left (at most a few minutes)
            r = client.get(base + path.lstrip("/"))
            if 'class="job"' not in r.text:
                break
            time.sleep(0.5)
        if r.status_code != 200 or "text/html" not in r.headers.get("content-type", ""):
            continue
        good.append(path)
        for href in re.findall(r'href="([^"#]+)"', r.text):
            target = urljoin(base + path.lstrip("/"), html.unescape(href))
            if not target.startswith(base) or "/static/" in target or "/png/" in target:
                continue
            target = "/" + target[len(base):]
            if target not in seen and kinds.get(_kind(target), 0) < PER_KIND:
                kinds[_kind(target)] = kinds.get(_kind(target), 0) + 1
                queue.append(target)
    pages = sorted(good)
    return pages + ["/api" + (p if p != "/" else "") for p in pages]


async def _load(base: str, paths: list[str]) -> tuple[list[float], int, int]:
    import httpx

    latencies, errors, stop = [], 0, time.perf_counter() + SECONDS
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        async def worker(i: int):
            nonlocal errors
            j = i
            while time.perf_counter() < stop:
                t = time.perf_counter()
                r = await client.get(base + paths[j % len(paths)].lstrip("/"))
                latencies.append(time.perf_counter() - t)
                errors += r.status_code != 200
                j += CONNECTIONS
        await asyncio.gather(*(worker(i) for i in range(CONNECTIONS)))
    return latencies, errors, len(latencies)


def run() -> list[dict]:
    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="bench-web-"))
    run_dir = tmp / "demo"
    shutil.copytree(DEMO, run_dir, ignore=shutil.ignore_patterns("report", "uploads"))
    port = _port()
    code = f"from convlens.web import serve; serve({str(run_dir)!r}, port={port})"
    server = subprocess.Popen([sys.executable, "-c", code])
    base = f"http://127.0.0.1:{port}/"
    try:
        with httpx.Client(timeout=300) as client:
            wait_up(client, base)
            t = time.perf_counter()
            paths = _crawl(client, base)
            warm = time.perf_counter() - t
        latencies, errors, n = asyncio.run(_load(base, paths))
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    q = statistics.quantiles(latencies, n=100)
    return [{"case": f"explorer, demo run: {len(paths)} pages ({len(paths) // 2} HTML + JSON twins), "
                     f"{CONNECTIONS} connections x {SECONDS:.0f} s", "warm_s": warm, "requests": n,
             "errors": errors, "rps": n / SECONDS, "p50_ms": 1000 * q[49], "p95_ms": 1000 * q[94],
             "max_ms": 1000 * max(latencies), "goal": "p95 <= 150 ms, 0 errors"}]


if __name__ == "__main__":
    for row in run():
        print(row)
