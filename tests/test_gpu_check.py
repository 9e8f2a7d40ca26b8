"""benchmarks/gpu_check.py --dry-cpu: the GPU script's plumbing runs on a machine without CUDA."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import warm

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^\[(?P<id>[\w-]+)\] (?P<what>.+?): (?P<verdict>PASS|FAIL|SKIP|INFO)(?: \((?P<detail>.*)\))?$")
# Max across ranks with a NaN on rank 1 fails until the reduction carries NaN from any rank (gloo's MAX
# alone keeps only rank 0's): its line must be there, its verdict is the script's to report.
NOT_YET = {"max-nan"}


def test_gpu_check_dry_cpu_runs_every_check():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    result = warm.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-cpu"], cwd=REPO, env=env,
                      timeout=240)  # forked warm (tests/warm.py): the script's checks, not its start, are the claim
    lines = [LINE.match(ln) for ln in result.stdout.splitlines()]
    assert all(lines), f"lines not in the [id] what: VERDICT (detail) format:\n{result.stdout}"
    by_id: dict[str, list[re.Match]] = {}
    for m in lines:
        by_id.setdefault(m["id"], []).append(m)
    expected = {"env", "acc-sync", "step-sync", "device", "test-upcast", "one-proc", "fp16-skip", "group-1", "gloo-2",
                "max-nan", "speed", "fsdp"}
    assert expected <= set(by_id), result.stdout + result.stderr
    assert len(by_id["step-sync"]) == 6  # no/bf16/fp16 x with/without a metric
    failed = [m for m in lines if m["verdict"] == "FAIL"]
    assert result.returncode == (1 if failed else 0), result.stderr
    assert not [m for m in failed if m["id"] not in NOT_YET], result.stdout + result.stderr
    passing = ("acc-sync", "step-sync", "device", "test-upcast", "one-proc", "group-1", "gloo-2")
    assert all(m["verdict"] == "PASS" for cid in passing for m in by_id[cid]), result.stdout
    # FSDP2 on the CPU: Accelerate's state forced (it ignores FSDP off an accelerator), said on the
    # first line; then test() before train(), train() under the bf16 policy, get_state_dict().
    state, *fsdp = by_id["fsdp"]
    assert state["verdict"] == "INFO" and "forced" in state["detail"] and "is_fsdp2 True" in state["detail"]
    assert [m["what"] for m in fsdp] == ["test() before train()", "train() under the bf16 policy",
                                         "get_state_dict() of the prepared model"], result.stdout
    assert all(m["verdict"] == "PASS" for m in fsdp), result.stdout
    assert "model output ['bfloat16']" in fsdp[1]["detail"]  # the upcast before the loss was exercised
    assert all("fp16 refused on CPU" in m["detail"] for m in by_id["step-sync"] if "fp16" in m["what"])
    assert by_id["fp16-skip"][0]["verdict"] == "SKIP" and "needs CUDA" in by_id["fp16-skip"][0]["detail"]
    assert "the multi-rank path" in by_id["group-1"][0]["detail"]
    assert re.search(r"time ratio \d+\.\d+", by_id["speed"][0]["detail"])
