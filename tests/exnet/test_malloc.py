"""glibc malloc's settings for exnet's processes (``exnet.runner.MALLOC_SETTINGS``).

Linux with glibc, as exnet's processes run (``/proc`` gives the resident set)."""

from __future__ import annotations

import os
import subprocess
import sys

#: Frees a hundred 1 MiB blocks that sit between small, live heap blocks; prints the
#: MiB the resident set shrank by.
PROBE = """
import sys
import exnet.runner

def rss_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 // 2**20

if sys.argv[1] == "tuned":
    exnet.runner._tune_malloc()
warm = bytearray(2 * 2**20)
del warm  # by default, glibc now serves blocks up to 2 MiB from the heap
kept, blocks = [], []
for _ in range(100):
    blocks.append(bytearray(2**20))
    kept.append(bytearray(200 * 1024))  # live, after each: no trim from the top
before = rss_mib()
blocks.clear()
print(before - rss_mib())
"""


def _freed_mib(mode: str, **env: str) -> int:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env={**environment, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def test_large_blocks_go_back_to_the_system_when_freed() -> None:
    assert _freed_mib("default") < 10  # glibc's default keeps them in the heap
    assert _freed_mib("tuned") >= 90


def test_an_operators_own_setting_wins() -> None:
    assert _freed_mib("tuned", MALLOC_MMAP_THRESHOLD_=str(4 * 2**20)) < 10
