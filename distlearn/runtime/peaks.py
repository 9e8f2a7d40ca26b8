"""The dense peak TFLOP/s of common accelerators, per precision: the denominator of MFU.

Each figure is the vendor datasheet's *dense* number (datasheets print the 2:4-sparse
one, twice as large, first: it is halved here) for one device. A device not listed has
no known peak: its MFU is left out unless ``run.peak_tflops`` gives one. Nothing here
imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PEAKS", "Peak", "find_peak", "precision_of"]


@dataclass(frozen=True)
class Peak:
    """One device's dense peak TFLOP/s per precision (None: the device has no such unit) and its source."""

    bf16: float | None
    fp16: float | None
    tf32: float | None
    fp32: float
    source: str


_NV = "NVIDIA {} datasheet, dense (the datasheet's sparsity figures halved)"
# Matched against torch.cuda.get_device_name() in this order: the first name found in it wins
# (so "H100 PCIe" before "H100", "A100" before "A10"); names are matched as whole words.
PEAKS: dict[str, Peak] = {
    "H100 PCIe": Peak(756.5, 756.5, 378.0, 51.0, _NV.format("H100 Tensor Core GPU (PCIe)")),
    "H100 NVL": Peak(835.5, 835.5, 417.5, 60.0, _NV.format("H100 Tensor Core GPU (H100 NVL)")),
    "H100": Peak(989.5, 989.5, 494.5, 67.0, _NV.format("H100 Tensor Core GPU (SXM)")),
    "H200": Peak(989.5, 989.5, 494.5, 67.0, _NV.format("H200 Tensor Core GPU (SXM)")),
    "A100": Peak(312.0, 312.0, 156.0, 19.5, _NV.format("A100 Tensor Core GPU")),
    "A10": Peak(125.0, 125.0, 62.5, 31.2, _NV.format("A10 Tensor Core GPU")),
    "L40S": Peak(362.05, 362.05, 183.0, 91.6, _NV.format("L40S GPU")),
    "L4": Peak(121.0, 121.0, 60.0, 30.3, _NV.format("L4 Tensor Core GPU")),
    "V100 PCIe": Peak(None, 112.0, None, 14.0, "NVIDIA V100 Tensor Core GPU datasheet (PCIe); no bf16 or tf32 units"),
    "V100": Peak(None, 125.0, None, 15.7, "NVIDIA V100 Tensor Core GPU datasheet (SXM2); no bf16 or tf32 units"),
    "MI300X": Peak(1307.4, 1307.4, 653.7, 163.4, "AMD Instinct MI300X datasheet, dense (without sparsity)"),
}


def _words(text: str) -> list[str]:
    return text.replace("-", " ").split()


def find_peak(device_name: str) -> tuple[str, Peak] | None:
    """The table's entry for a device name (``torch.cuda.get_device_name()``), or None when unknown.

    Names are compared word by word, so ``NVIDIA A10G`` is not an ``A10`` and ``A100`` is not an ``A10``.
    """
    words = _words(device_name)
    for name, peak in PEAKS.items():
        key = _words(name)
        if any(words[i:i + len(key)] == key for i in range(len(words))):
            return name, peak
    return None


def precision_of(mixed_precision: str | None, tf32: bool) -> str:
    """The peak column a run's matmuls use: ``bf16`` / ``fp16`` under mixed precision, else ``tf32``
    where float32 matmuls may use TF32 (``torch.backends.cuda.matmul.allow_tf32``), else ``fp32``."""
    if mixed_precision in ("bf16", "fp16"):
        return mixed_precision
    return "tf32" if tf32 else "fp32"
