"""Peak memory of each sigma_1 method at the largest sizes, each in a fresh process.

Reported as the growth of the peak resident set during the method beyond what the process
held before it (weights and inputs allocated): the kernel's peak counter (VmHWM) is reset
through /proc/self/clear_refs just before the method runs.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCRIPT = """
import json, sys, torch
sys.path.insert(0, {here!r})
from problems import Problem
from test_bench_spectra import SIGMA1
p = Problem(E=1, d={d}, h={h}, N=8)
args = p.args
def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key))
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
SIGMA1[{method!r}](args)
print(json.dumps(dict(peak_mb=(status("VmHWM:") - before) / 1024)))
"""
CASES = [
    ("closed_form+svdvals", 1024),
    ("closed_form+gram_eigvalsh", 1024),
    ("matrix_free_power", 1024),
    ("matrix_free_lanczos", 1024),
    ("matrix_free_lanczos", 4096),
]


@pytest.mark.parametrize("method, d", CASES)
def test_peak_memory(benchmark, method, d):
    code = SCRIPT.format(here=str(HERE), d=d, h=2 * d, method=method)

    def run():
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    benchmark.group = "peak memory (fresh process, E=1, N=8, h=2d)"
    res = benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    n_d_d_mb = 8 * d * d * 4 / 2**20  # one N x d x d float32 tensor
    benchmark.extra_info.update(method=method, d=d, peak_mb=res["peak_mb"], n_d_d_tensor_mb=n_d_d_mb)
    if method.startswith("matrix_free"):
        # O(N d) beyond the weights: far below one N x d x d tensor
        assert res["peak_mb"] < n_d_d_mb, f"{method} at d={d} grew {res['peak_mb']:.0f} MB >= N*d*d {n_d_d_mb:.0f} MB"
