"""convlens.summary vs torchinfo.summary on the same VGG-16 / AlexNet instance.

Time: median wall time of ``REPEATS`` calls after one warm-up call each (same process, same model).
Memory: each tool runs once in a fresh Python subprocess. After building the model we read the
current resident set size (``VmRSS`` in ``/proc/self/status``) and reset the kernel's peak counter
(``echo 5 > /proc/self/clear_refs``, Linux >= 4.0); after the call we read the peak (``VmHWM``) and
report peak - before in MiB: what the call itself adds on top of the model's weights (no psutil
needed). Both tools first summarize a tiny model (LeNet) so that lazy imports are not counted.
Where the peak cannot be reset, ``ru_maxrss`` growth is reported instead (a lower bound). The memory
ratio divides by at least 1 MiB (convlens' figure is noise-sized). Totals must agree: the
parameter count and the mult-adds (convlens counts per image; torchinfo per batch of 1).
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPEATS = 5
ROOT = Path(__file__).resolve().parent.parent
CASES = (("vgg16", (3, 224, 224)), ("alexnet", (3, 227, 227)))

_MEMORY_PROBE = """
import gc, json, resource
import torch, torchinfo, convlens

def status(key):  # KiB
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

def call(model, size):
    if {tool!r} == "convlens":
        convlens.summary(model, size)
    else:
        torchinfo.summary(model, input_size=(1, *size), verbose=0)

call(convlens.create("lenet"), (1, 32, 32))  # warm-up on a tiny model: lazy imports are not the call's cost
torch.manual_seed(0)
model = convlens.create({name!r})
gc.collect()
before = status("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS to the current RSS
    method = "VmHWM after reset"
except OSError:
    before, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss growth"
call(model, {size!r})
peak = status("VmHWM") if method.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"mib": (peak - before) / 1024, "method": method}}))
"""


def _median_time(fn) -> float:
    fn()  # warm-up: imports, allocator, kernels
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _peak_mib(tool: str, name: str, size) -> tuple[float, str]:
    code = _MEMORY_PROBE.format(tool=tool, name=name, size=tuple(size))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return found["mib"], found["method"]


def run() -> list[dict]:
    import torch
    import torchinfo

    import convlens

    rows = []
    for name, size in CASES:
        torch.manual_seed(0)
        model = convlens.create(name)
        ours = convlens.summary(model, size)
        peer = torchinfo.summary(model, input_size=(1, *size), verbose=0)
        if (ours.total_params, ours.total_macs) != (peer.total_params, peer.total_mult_adds):
            raise AssertionError(f"{name}: convlens params/mult-adds {ours.total_params:,}/{ours.total_macs:,} != "
                                 f"torchinfo {peer.total_params:,}/{peer.total_mult_adds:,}")
        ours_s = _median_time(lambda: convlens.summary(model, size))
        peer_s = _median_time(lambda: torchinfo.summary(model, input_size=(1, *size), verbose=0))
        c, h, w = size
        rows.append({"case": f"{name} {h}x{w}x{c} time (median of {REPEATS})", "convlens_s": ours_s,
                     "peer": f"torchinfo {torchinfo.__version__}", "peer_s": peer_s, "ratio": peer_s / ours_s,
                     "params": ours.total_params, "mult_adds": ours.total_macs, "totals_equal": True})
    for name, size in CASES[:1]:
        (ours_mib, method), (peer_mib, _) = _peak_mib("convlens", name, size), _peak_mib("torchinfo", name, size)
        c, h, w = size
        rows.append({"case": f"{name} {h}x{w}x{c} peak memory of the call (MiB)", "convlens_mib": ours_mib,
                     "peer": f"torchinfo {torchinfo.__version__}", "peer_mib": peer_mib,
                     "ratio": peer_mib / max(ours_mib, 1.0), "memory_method": method})
    return rows
