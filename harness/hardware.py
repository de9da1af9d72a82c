"""Vendor peak throughput of accelerators, to set beside the measured matmul peak.

Dense (no sparsity) tensor-core figures from the vendors' data sheets, in
TFLOP/s, for the SXM parts; "fp32" is plain fp32 (no TF32). Matched by a
substring of the name the framework reports. CPUs have no entry: their peak
depends on clocks and vector units that no framework reports.
"""

from __future__ import annotations

VENDOR_PEAK_TFLOPS = {
    # name substring: {precision: TFLOP/s}
    "H200": {"fp32": 67.0, "bf16": 989.0},
    "H100": {"fp32": 67.0, "bf16": 989.0},
    "A100": {"fp32": 19.5, "bf16": 312.0},
    "L40S": {"fp32": 91.6, "bf16": 362.0},
    "A10": {"fp32": 31.2, "bf16": 125.0},
    "V100": {"fp32": 15.7, "bf16": 0.0},
}


def vendor_peak_tflops(device_name: str | None, precision: str) -> float | None:
    if not device_name:
        return None
    for key, peaks in VENDOR_PEAK_TFLOPS.items():
        if key in device_name:
            return peaks.get(precision) or None
    return None
