"""boltzgrad's process settings (boltzgrad/_process.py): torch's constant pages are mapped at import; freed tensor
memory stays in the process, so a loop that allocates and frees SchNet-sized temporaries stops page-faulting; the
shifted softplus equals its formula."""

import json
import math
import os
import platform
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from boltzgrad import _process
from boltzgrad.models.schnet import shifted_softplus

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the settings are glibc's")

# A fresh process runs a SchNet-like loop: three [19692, 64] float32 softplus outputs alive at once, then freed
# (SchNet keeps several [n_pairs, n_filters] temporaries per call). It prints the minor page faults of the calls
# after the first few and what boltzgrad's settings did.
_LOOP = """
import json, resource, sys, torch
import boltzgrad
from boltzgrad import _process
from boltzgrad.models.schnet import shifted_softplus
torch.set_num_threads(1)
x = torch.randn(19692, 64)
faults = []
for it in range(12):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = shifted_softplus(x); b = shifted_softplus(x); c = shifted_softplus(x)
    del a, b, c
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({"state": _process.state["malloc"], "faults": faults[4:]}))
"""
_PAGES = 19692 * 64 * 4 // 4096  # pages of one output


def _run_loop(**env):
    return _run(_LOOP, **env)


def _run(code, **env):
    ours = ("MALLOC_", "BOLTZGRAD_MALLOC", "BOLTZGRAD_PREFAULT")
    full = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    full.update(env, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_import_keeps_freed_tensors_in_the_process():
    on = _run_loop()
    assert on["state"] == "applied"
    # no output is faulted in again once the heap has grown to the loop's size
    assert sum(on["faults"]) < _PAGES, on
    # glibc's defaults adapt to the history of the process (sometimes this loop faults every iteration, sometimes
    # not at all), so the control that the loop does fault when memory goes back is the next test
    off = _run_loop(BOLTZGRAD_MALLOC="0")
    assert off["state"] == "disabled by BOLTZGRAD_MALLOC=0"


@glibc_only
def test_glibc_variables_of_the_user_win():
    # a variable of the user's fixes glibc's thresholds (128 KiB mmap threshold, no dynamic adjustment): every
    # output is a fresh mapping, faulted in each iteration; boltzgrad leaves it so
    res = _run_loop(MALLOC_TRIM_THRESHOLD_="131072")
    assert res["state"].startswith("left to")
    assert min(res["faults"]) > 2 * _PAGES, res


def test_configure_runs_once_and_says_what_it_did():
    assert set(_process.state) == {"malloc", "prefault"}  # importing boltzgrad ran it
    assert _process.configure() is _process.state


# A fresh process reports which pages of libtorch_cpu's read-only segments are in its page table
# (/proc/self/pagemap, bit 63: present; readable without privileges).
_PAGEMAP = """
import json, struct, torch
import boltzgrad
from boltzgrad import _process
missing = total = 0
with open("/proc/self/pagemap", "rb") as f:
    for start, end in _process.torch_constant_ranges():
        f.seek(start // 4096 * 8)
        entries = struct.unpack(f"{(end - start) // 4096}Q", f.read((end - start) // 4096 * 8))
        missing += sum(1 for e in entries if not e >> 63)
        total += len(entries)
print(json.dumps({"state": _process.state["prefault"], "missing": missing, "total": total}))
"""


@pytest.mark.skipif(platform.system() != "Linux", reason="/proc/self/pagemap is Linux's")
def test_import_maps_torchs_constant_pages():
    on = _run(_PAGEMAP)
    assert on["state"] == "applied"
    assert on["total"] > 1000  # libtorch_cpu's read-only data: tens of MiB
    assert on["missing"] == 0, on
    # the control: without the prefault most of those pages are never touched by a process
    off = _run(_PAGEMAP, BOLTZGRAD_PREFAULT="0")
    assert off["state"] == "disabled by BOLTZGRAD_PREFAULT=0"
    assert off["missing"] > off["total"] // 10, off


def _old_ssp(x):
    return F.softplus(x) - math.log(2.0)


def test_shifted_softplus_equals_the_formula_with_its_derivatives():
    x = torch.cat([torch.linspace(-39.5, 39.5, 80, dtype=torch.float64), torch.randn(40, dtype=torch.float64)])
    x.requires_grad_(True)  # (not at 20, where softplus switches to x and finite differences would straddle it)
    torch.testing.assert_close(shifted_softplus(x), _old_ssp(x), rtol=0, atol=0)
    # softplus returns x itself above x = 20, where ln(1 + e^x) - x = e^-x < 2.1e-9
    exact = x.clamp(min=0) + torch.log1p(torch.exp(-x.abs())) - math.log(2.0)
    torch.testing.assert_close(shifted_softplus(x), exact, rtol=1e-12, atol=2.1e-9)
    assert shifted_softplus(torch.zeros(1, dtype=torch.float64)).item() == 0.0
    assert torch.autograd.gradcheck(shifted_softplus, (x,))
    assert torch.autograd.gradgradcheck(shifted_softplus, (x,))
    # first and second derivatives equal those of the old formula, also through a graph (double backward)
    g = torch.randn_like(x)
    d_new = torch.autograd.grad(shifted_softplus(x), x, g, create_graph=True)[0]
    d_old = torch.autograd.grad(_old_ssp(x), x, g, create_graph=True)[0]
    torch.testing.assert_close(d_new, d_old, rtol=0, atol=0)
    torch.testing.assert_close(d_new, g * torch.sigmoid(x), rtol=1e-12, atol=2.1e-9 * g.abs().max().item())
    dd_new = torch.autograd.grad(d_new.sum(), x)[0]
    dd_old = torch.autograd.grad(d_old.sum(), x)[0]
    torch.testing.assert_close(dd_new, dd_old, rtol=0, atol=0)
    torch.testing.assert_close(dd_new, g * torch.sigmoid(x) * torch.sigmoid(-x), rtol=1e-12,
                               atol=2.1e-9 * g.abs().max().item())


def test_shifted_softplus_float32_equals_the_old_formula():
    x = torch.randn(1000, 64) * 10
    torch.testing.assert_close(shifted_softplus(x), _old_ssp(x), rtol=0, atol=0)
