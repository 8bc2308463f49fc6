"""The CNN code space: t-SNE vs scikit-learn, grid assignment, exact neighbours vs scikit-learn.

**t-SNE.** Data: the demo run's CNN codes (``runs/demo``: shapesnet, the 128-D ``gap4`` vector the
classifier receives) of 20,000 ``shapes`` training images (seed 1), or a random-weight shapesnet's
when the demo was never built. Extracting them is not timed. convlens: ``convlens.tsne`` end to end with its
defaults (PCA 128 -> 50 dims, then openTSNE on exact neighbours: 250 early-exaggeration iterations with
FFT gradients, the rescale to the KL-optimal size, 200 Barnes-Hut iterations). Peer:
``sklearn.manifold.TSNE`` on the same raw codes, the same perplexity (30) and its default 1,000
iterations (``max_iter``; 250 of them exaggerated), PCA initialization, Barnes-Hut. Both use
``THREADS`` threads (``n_jobs``, torch, and BLAS through threadpoolctl). Quality: each library's own
KL divergence, and both embeddings' exact KL(P || Q) under one common P (openTSNE's perplexity-30
affinities from exact neighbours of the raw codes; Q normalized over all 20,000^2 pairs).
Goal: ratio <= 0.3x at equal or lower KL. One run each (scikit-learn takes minutes).

**Grid.** ``convlens.tsne_grid`` (``linear_sum_assignment`` on the point-to-cell squared distances)
for the first 1,024 (32x32) and 4,096 (64x64) points of that t-SNE map; seconds.

**Neighbours.** 100,000 random 512-D ReLU codes (``max(N(0, 1), 0)``, float32), 1,000 query rows,
k = 10, excluding the query itself: ``convlens.neighbors`` (blocked matrix products + top-k) vs
``sklearn.neighbors.NearestNeighbors(algorithm="brute")``; queries per second and the share of
identical neighbour lists.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
N_TSNE = 20_000
PERPLEXITY = 30.0
ROOT = Path(__file__).resolve().parent.parent


def _codes20k() -> tuple[np.ndarray, str]:
    import torch

    import convlens
    from convlens import datasets

    demo = ROOT / "runs" / "demo"
    if (demo / "run.json").exists():
        model, source = convlens.load_run(demo), "runs/demo gap4"
    else:
        from convlens.training.runs import PixelModel

        model = PixelModel(convlens.create("shapesnet").eval(), torch.full((3,), 0.5), torch.full((3,), 0.25))
        source = "shapesnet (random weights)"
    data = datasets.load("shapes", split="train", n=N_TSNE, seed=1)
    return np.asarray(convlens.codes(model, data, progress=False).vectors), source


def exact_kl(p, y: np.ndarray) -> float:
    """KL(P || Q) with Q the Student-t affinities of embedding ``y`` normalized over all pairs."""
    import torch

    p = p.tocoo()
    yt = torch.as_tensor(y, dtype=torch.float64)  # (N, 2)
    z = 0.0
    for i in range(0, len(yt), 1024):
        d2 = torch.cdist(yt[i:i + 1024], yt) ** 2  # (b, N)
        z += float((1.0 / (1.0 + d2)).sum()) - min(1024, len(yt) - i)  # minus the diagonal (w_ii = 1)
    diff = y[p.row] - y[p.col]
    q = 1.0 / (1.0 + (diff ** 2).sum(1)) / z
    keep = p.data > 0
    return float((p.data[keep] * np.log(p.data[keep] / q[keep])).sum())


def _tsne_rows(x: np.ndarray, source: str) -> tuple[list[dict], np.ndarray]:
    from openTSNE.affinity import PerplexityBasedNN
    from sklearn.manifold import TSNE

    import convlens

    t = time.perf_counter()
    ours = convlens.tsne(x, perplexity=PERPLEXITY, seed=0, n_jobs=THREADS)
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    peer = TSNE(n_components=2, perplexity=PERPLEXITY, max_iter=1000, init="pca", learning_rate="auto",
                method="barnes_hut", random_state=0, n_jobs=THREADS)
    y_peer = peer.fit_transform(x)
    peer_s = time.perf_counter() - t
    p = PerplexityBasedNN(x, perplexity=PERPLEXITY, method="exact", n_jobs=THREADS, random_state=0).P
    row = {"case": f"t-SNE {len(x):,} x {x.shape[1]} codes (PCA + openTSNE, {ours.n_iter} its + rescale)", "data": source,
           "threads": THREADS, "convlens_s": ours_s, "peer": "sklearn TSNE (Barnes-Hut, 1,000 its)",
           "peer_s": peer_s, "ratio": ours_s / peer_s, "goal": "<= 0.3x at equal or lower KL",
           "kl_convlens": ours.kl_divergence, "kl_peer": float(peer.kl_divergence_),
           "exact_kl_convlens": exact_kl(p, ours.embedding), "exact_kl_peer": exact_kl(p, y_peer)}
    return [row], ours.embedding


def _grid_rows(embedding: np.ndarray) -> list[dict]:
    import convlens

    rows = []
    for side in (32, 64):
        n = side * side
        t = time.perf_counter()
        g = convlens.tsne_grid(embedding[:n], side, side)
        rows.append({"case": f"t-SNE grid {n:,} images ({side}x{side})", "threads": THREADS,
                     "convlens_s": time.perf_counter() - t, "mean_sq_displacement": g.cost / n})
    return rows


def _neighbor_rows() -> list[dict]:
    from sklearn.neighbors import NearestNeighbors

    import convlens

    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((100_000, 512), dtype=np.float32), 0)  # (N, D) ReLU-like codes
    q = rng.choice(len(x), 1000, replace=False)
    rows = []
    for metric, sk_metric in (("cosine", "cosine"), ("l2", "euclidean")):
        convlens.neighbors(x, q[:10], 10, metric, exclude_self=True)  # warm-up
        t = time.perf_counter()
        ours = convlens.neighbors(x, q, 10, metric, exclude_self=True)
        ours_s = time.perf_counter() - t
        t = time.perf_counter()
        nn = NearestNeighbors(n_neighbors=11, algorithm="brute", metric=sk_metric, n_jobs=THREADS).fit(x)
        _, idx = nn.kneighbors(x[q])
        peer_s = time.perf_counter() - t
        peer = np.array([[j for j in r if j != s][:10] for r, s in zip(idx, q)])
        rows.append({"case": f"neighbours 100,000 x 512, 1,000 queries, k=10, {metric}", "threads": THREADS,
                     "convlens_s": ours_s, "convlens_qps": len(q) / ours_s,
                     "peer": "sklearn NearestNeighbors(brute)", "peer_s": peer_s, "peer_qps": len(q) / peer_s,
                     "ratio": ours_s / peer_s, "same_lists": float((ours.indices == peer).all(1).mean())})
    return rows


def run() -> list[dict]:
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        with threadpool_limits(THREADS):
            x, source = _codes20k()
            rows, embedding = _tsne_rows(x, source)
            rows += _grid_rows(embedding)
            rows += _neighbor_rows()
    finally:
        torch.set_num_threads(threads)
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
