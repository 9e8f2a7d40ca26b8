"""The buffers calculate() sends: the fixed-length first all_reduce, and the gathered bytes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from .signature import call_signature, signature_agrees


INLINE = 4096  # sum-like numbers carried in the first, fixed-length collective (32 KiB: still latency-bound)


def one_vector(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """All states in one float64 vector on ``device``: runs of scalars stacked in one call each."""
    if not tensors:
        return torch.zeros(0, dtype=torch.float64, device=device)
    try:  # the common case, many scalar states on one device: one call, no per-tensor checks
        stacked = torch.stack(tensors)
        if stacked.dim() == 1:
            return stacked.to(device=device, dtype=torch.float64)
    except RuntimeError:
        pass
    home = tensors[0].device
    parts: list[torch.Tensor] = []
    run: list[torch.Tensor] = []
    for t in tensors:
        if t.device != home:  # states on several devices (rare): move each to the first one's
            t = t.to(home)
        if t.dim() == 0:
            run.append(t)
            continue
        if run:
            parts.append(torch.stack(run))
            run = []
        parts.append(t.reshape(-1))
    if run:
        parts.append(torch.stack(run))
    flat = parts[0] if len(parts) == 1 else torch.cat(parts)
    return flat.to(device=device, dtype=torch.float64)


def first_collective(accs, keys, specs, group, world, device):
    """The fixed-length all_reduce: signature, List/Cat byte sizes, inline sums.

    Returns ``(None, None, None)`` when the ranks' signatures differ; otherwise
    ``((sums, byte_sizes), contributions, this rank's blob)``.
    """
    contributions = [acc._contribute(spec) for acc, spec in zip(accs, specs)]
    segments = [c.blob for c in contributions if c.blob is not None]
    blob = _pack_segments(segments) if segments else None
    mine = call_signature(keys, specs)
    sizes = [0.0] * world
    sizes[dist.get_rank(group)] = float(len(blob)) if blob is not None else 0.0
    header = torch.tensor(mine + sizes, dtype=torch.float64)
    sum_flat = one_vector([t for c in contributions for t in c.sums], device)
    inline = torch.zeros(INLINE, dtype=torch.float64, device=device)
    inline[: min(INLINE, sum_flat.numel())] = sum_flat[:INLINE]
    buffer = torch.cat([header.to(device), inline])
    dist.all_reduce(buffer, group=group)
    head = buffer[: len(header)].cpu()
    if not signature_agrees(head, mine, world):
        return None, None, None
    rest = sum_flat[INLINE:].clone()
    if rest.numel():
        dist.all_reduce(rest, group=group)
    sums = torch.cat([buffer[len(header) :][: min(INLINE, sum_flat.numel())], rest])
    byte_sizes = [int(v) for v in head[len(mine) :].tolist()]
    return (sums, byte_sizes), contributions, blob


def _pack_segments(segments: list[bytes]) -> bytes:
    lengths = torch.tensor([len(s) for s in segments], dtype=torch.int64).numpy().tobytes()
    return lengths + b"".join(segments)


def unpack_segments(data: bytes, count: int) -> list[bytes]:
    lengths = torch.frombuffer(bytearray(data[: 8 * count]), dtype=torch.int64).tolist() if count else []
    out, offset = [], 8 * count
    for n in lengths:
        out.append(data[offset : offset + n])
        offset += n
    return out


def gather_bytes(blob: bytes, sizes: list[int], group, device) -> list[bytes]:
    """One all_gather of every rank's bytes, padded to the largest."""
    longest = max(sizes)
    mine = torch.zeros(longest, dtype=torch.uint8)
    mine[: len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    mine = mine.to(device)
    received = [torch.empty(longest, dtype=torch.uint8, device=device) for _ in sizes]
    dist.all_gather(received, mine, group=group)
    return [bytes(t[:n].cpu().numpy()) for t, n in zip(received, sizes)]
