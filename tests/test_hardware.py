import subprocess
import sys
from pathlib import Path

import pytest

FAULTS = """
import resource, sys, torch
from models.hardware import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
x = torch.ones(1, 1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):  # what a mini-batch does: a [events, catalogue] tensor made, used, freed
    x = torch.ones(1024, 16_384) + x[:1, :1]
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_freed_memory_spares_the_page_faults_of_each_mini_batchs_tensors():
    def faults(mode: str) -> tuple[str, int]:
        kept, n = subprocess.run(
            [sys.executable, "-c", FAULTS, mode],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parents[1],
        ).stdout.split()
        return kept, int(n)

    default, kept = faults("default"), faults("keep")
    assert kept[0] == "True"
    # two 64 MB tensors an iteration: 2 x 16,384 pages faulted in afresh each time by default (1.31
    # million here);
    # with the memory kept, only until the heap has grown to hold them (0.16-0.26 million, however
    # many iterations)
    assert default[1] > 40 * 2 * 16_384 * 0.9 and kept[1] < default[1] / 3, (default, kept)
