"""The sampling benchmark's floor part runs end to end on the demo's small upsampler and prints every figure."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "sampling_speed.py"


def test_the_floor_table_has_fp32_and_int8_rows_and_the_int8_products_alone(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPT), "--models", "demo_upsampler", "--batches", "1", "--int8-batches", "1",
               "--bf16-batches", "--repeats", "1", "--k", "2", "--prompt", "4", "--no-reference",
               "--demo", str(tmp_path / "no_runs")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True, cwd=tmp_path)
    rows = {
        line.split()[3]: [float(cell) for cell in line.split()[4:]]
        for line in result.stdout.splitlines()
        if line.startswith("demo_upsampler")
    }
    assert set(rows) == {"fp32", "int8"}
    for floor, floor_kv, step, of_floor, of_floor_kv, rate in rows.values():
        assert 0 < floor <= floor_kv and step > 0 and rate > 0
        assert within_rounding(of_floor, floor, step, 0.005) and within_rounding(of_floor_kv, floor_kv, step, 0.005)
    alone = re.search(
        r"int8 batch 1: its products alone ([\d.]+) ms, (\d+)% of the int8 step; as many products "
        r"of a 16 x 16 weight \((\d+)\) ([\d.]+) ms in int8, ([\d.]+) ms in fp32: (\d+) us a call",
        result.stdout,
    )
    assert alone is not None, result.stdout
    assert float(alone.group(1)) > 0
    assert within_rounding(int(alone.group(2)) / 100, float(alone.group(1)), rows["int8"][2], 0.005)
    # The step's products: four a layer and the output head.
    count, int8_calls = int(alone.group(3)), float(alone.group(4))
    assert count % 4 == 1 and count > 1 and int8_calls > 0 and float(alone.group(5)) > 0
    assert abs(int(alone.group(6)) - int8_calls / count * 1e3) <= 0.5 + 0.005 / count * 1e3


def within_rounding(ratio: float, numerator: float, denominator: float, half_digit: float) -> bool:
    """Whether a printed ratio agrees with printed numbers' ratio, each printed number off by up to half_digit."""
    low = (numerator - half_digit) / (denominator + half_digit)
    high = (numerator + half_digit) / max(denominator - half_digit, 1e-9)
    return low - half_digit <= ratio <= high + half_digit
