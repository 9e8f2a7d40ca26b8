"""Rank 0 decides, every rank follows (distlearn.ranks), on two real gloo ranks with a real Accelerator:
the main process's result or failure reaches every rank, and one rank's problem is raised on all."""

from __future__ import annotations

from distlearn.runtime.ranks import MainProcessFailed, agree, everywhere, on_main


def _failure(fn, *args) -> tuple | None:
    try:
        fn(*args)
    except MainProcessFailed as exc:
        return exc.kind, exc.message, type(exc.error).__name__ if exc.error is not None else None
    return None


def _decide_and_follow(rank: int, world: int) -> dict:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        accelerator = Accelerator(cpu=True)
        calls: list[int] = []

        def work(x: int) -> int:
            calls.append(x)
            return 2 * x

        def refuse() -> None:
            raise PermissionError("the folder is read-only")

        def fail_on_main() -> None:
            if accelerator.is_main_process:
                raise RuntimeError("W&B is down")

        out = {"value": on_main(accelerator, work, 21), "calls": calls}
        out["on_main failed"] = _failure(on_main, accelerator, refuse)
        out["everywhere failed"] = _failure(everywhere, accelerator, fail_on_main)
        out["everywhere ok"] = _failure(everywhere, accelerator, work, 1)
        agree(None)  # nobody has a problem: nothing raised
        try:
            agree("a bad first batch" if rank == 1 else None)
        except ValueError as exc:
            out["agreed"] = str(exc)
        accelerator.wait_for_everyone()  # every rank ran the same collectives up to here
        return out
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def test_the_main_process_decides_and_every_rank_follows(dist_pool):
    main, other = dist_pool.run(_decide_and_follow, 2)
    assert main["value"] == other["value"] == 42
    assert main["calls"] == [21, 1] and other["calls"] == [1]  # on_main ran on the main process only
    assert main["on_main failed"] == ("PermissionError", "the folder is read-only", "PermissionError")
    assert other["on_main failed"] == ("PermissionError", "the folder is read-only", None)  # no exception object there
    assert main["everywhere failed"] == ("RuntimeError", "W&B is down", "RuntimeError")
    assert other["everywhere failed"] == ("RuntimeError", "W&B is down", None)
    assert main["everywhere ok"] is None and other["everywhere ok"] is None
    assert main["agreed"] == "rank 1: a bad first batch" and other["agreed"] == "a bad first batch"


def test_one_process_needs_no_collective(fresh_accelerate):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    assert on_main(accelerator, lambda: "done") == "done"
    assert _failure(on_main, accelerator, lambda: {}["missing"]) == ("KeyError", "'missing'", "KeyError")
    agree(None)
    try:
        agree("empty loader")
    except ValueError as exc:
        assert str(exc) == "empty loader"
    else:
        raise AssertionError("agree did not raise")
