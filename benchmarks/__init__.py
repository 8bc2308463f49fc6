"""Side-by-side benchmarks against peer libraries: ``python -m benchmarks [NAME ...]``.

Each ``bench_<name>.py`` module has ``run() -> list[dict]``: one row per case, with at least
``case``, the convlens measurement (``convlens_s`` for seconds, ``convlens_mib`` for memory), the
``peer`` it is compared with, the peer's measurement (``peer_s`` / ``peer_mib``) and ``ratio``
(peer / convlens: above 1 means convlens is faster or smaller). ``__main__`` prints every row in
one aligned table and writes ``benchmarks/results/latest.json``.
"""
