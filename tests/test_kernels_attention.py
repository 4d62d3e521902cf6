"""The attention kernel's cases (tests/attention_cases.py) in a pytest process of their
own, with TRITON_INTERPRET=1 set before Triton is imported.

Triton decides at its first import whether its own jitted helpers (tl.zeros, tl.sum,
tl.max) are interpreted. Earlier tests of the suite import it without the variable
(torch.compile, transformers), after which an interpreted kernel that calls those
helpers fails with "Cannot call @triton.jit'd outside of the scope of a kernel".
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

CASES = Path(__file__).with_name("attention_cases.py")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="triton is in the dev extra (.ci/run installs it)")
def test_attention_kernel_cases_under_the_interpreter() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES),
         "-o", "addopts=--timeout=300"],
        env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True,
        timeout=600, cwd=CASES.parent.parent)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout, r.stdout[-2000:]
