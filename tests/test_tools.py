"""tools/ scripts run end to end on tiny settings."""
from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_bench_runs_and_reports_optimizer_state_of_the_learned_part(tmp_path):
    out = tmp_path / "bench.md"
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "bench.py"), "--size", "32", "--steps", "2",
                        "--warmup", "1", "--workers", "0", "--strategies", "full,filters_out", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|") for line in out.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| strategy")}
    assert set(rows) == {"full", "filters_out"}
    for row in rows.values():
        learned = int(row[2].split("(")[0].replace(",", ""))
        state_mib = float(row[6].split()[0])
        assert abs(state_mib - learned * 8 / 2**20) < 0.06  # AdamW: two fp32 moments per learned scalar
    assert float(rows["full"][4]) == 1.0
