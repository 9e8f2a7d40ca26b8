"""Hand mutations of distlearn's core: does a test fail when a promised behaviour is broken?

    python benchmarks/mutate.py                 # every mutation, its own tests, -x -q
    python benchmarks/mutate.py --list          # the mutations and whether they apply
    python benchmarks/mutate.py clip seed_rank  # only these (by name)
    python benchmarks/mutate.py --full          # each mutation against the whole suite (slow)

Each mutation is (name, file, old text, new text, tests). The script replaces the old
text (which must occur exactly once) with the new, runs the mutation's tests with
``pytest -x -q``, restores the file byte for byte, and prints KILLED (a test failed),
SURVIVED (every test passed: a behaviour no test guards) or "not applicable" (the old
text is no longer in the file: the module was rewritten; update the mutation).
Run it from the repository root on a clean tree; it exits 1 if any mutation survived.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACC, LRN = "distlearn/accumulators", "distlearn/training/learner.py"  # ACC: a package, each mutation names its module
MET = "distlearn/metrics"  # a package: each mutation names its module
EVL, STP, EPO = "distlearn/training/evaluation.py", "distlearn/training/steps.py", "distlearn/training/epoch.py"  # the loop's parts
BAT, PAD = "distlearn/training/batches.py", "distlearn/training/padding.py"  # the learner's batch handling
OUT = "distlearn/training/outputs.py"  # reading batches and model outputs
PROMISES = "tests/test_promises.py"
ACC_TESTS = [f"{PROMISES}::{name}" for name in (
    "test_nan_and_inf_propagate_as_in_torch", "test_large_integer_sums", "test_weights_other_than_one",
    "test_more_than_4096_sums_mixed_with_list_cat_and_max_in_one_calculate",
    "test_nothing_accumulated_anywhere_is_nan_with_a_warning")] + ["tests/test_accumulators.py"]
MET_TESTS = [f"{PROMISES}::test_a_score_equal_to_the_threshold_is_positive", "tests/test_metrics.py"]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


def _promises(k: str) -> tuple[str, ...]:
    return (PROMISES, "-k", k)


MUTATIONS = [
    # ---- learner.py and the loop's parts -------------------------------------------------------------
    Mutation("clip", LRN, "accelerator.clip_grad_norm_(model.parameters(), self.max_grad_norm)", "pass",
             _promises("clip or max_grad_norm"), "max_grad_norm ignored"),
    Mutation("seed_rank", LRN, "set_seed(self.seed, device_specific=True)", "set_seed(self.seed, device_specific=False)",
             _promises("ranks_draw or every_rank"), "every rank draws the same dropout masks"),
    Mutation("epoch_order", STP, "loader.set_epoch(epoch)", "loader.set_epoch(0)",
             _promises("order or ranks_draw or every_rank"), "every epoch sees the same order"),
    Mutation("resume_ignored", LRN, "if not resuming and not self._resume:", "if not resuming:",
             (f"{PROMISES}::test_data_order_after_load_state_dict_depends_only_on_seed_and_epoch",
              "tests/test_learner.py::test_load_state_dict_resumes_from_the_loaded_epoch_and_step"), "load_state_dict ignored"),
    Mutation("objects_lose", LRN, "build_optimizer(model, self.optimizer, self.lr_scheduler,", "build_optimizer(model, None, None,",
             _promises("objects"), "configs win over the optimizer/scheduler objects"),
    Mutation("loss_object_loses", LRN, "if loss is None and loss_configs is not None:", "if loss_configs is not None:",
             _promises("objects"), "loss_configs wins over the loss object"),
    Mutation("bf16_ignored", LRN, "mixed_precision=self.mixed_precision,", "mixed_precision=None,",
             _promises("mixed_precision or host_sync"), "mixed_precision='bf16' ignored"),
    Mutation("eval_no_autocast", EVL, "with accelerator.autocast():  # the model", "with torch.no_grad():  # the model",
             _promises("mixed_precision"), "test() runs in float32 under bf16"),
    Mutation("no_zero_grad", STP, "optimizer.zero_grad()", "pass",
             (f"{PROMISES}::test_max_grad_norm_clips_the_gradient_as_clip_grad_norm_does", "tests/test_learner.py"),
             "gradients pile up across steps"),
    Mutation("epoch_scheduler_never", LRN, 'if run.scheduler is not None and self.scheduler_interval == "epoch":',
             "if False:", ("tests/test_learner.py", "-k", "not test_invalid"), "per-epoch scheduler never steps"),
    Mutation("repeats_counted", PAD, "return min(rows, max(0, state.remainder - accelerator.process_index * rows))",
             "return rows", ("tests/test_learner.py", "-k", "uneven or order or same_numbers"), "Accelerate's repeats reported"),
    Mutation("shift_not_weighed", BAT, "            labels = labels[:, self.label_shift:]\n", "            pass\n",
             ("tests/test_batches.py::test_token_helpers",), "label_shift's unpredicted labels weigh as tokens"),
    Mutation("tokens_not_flattened", OUT, "        return logits.reshape(-1, logits.shape[-1]), target.reshape(-1)\n",
             "        return logits, target\n", ("tests/test_batches.py::test_token_helpers",),
             "(B, T, V) logits reach CrossEntropyLoss unflattened"),
    Mutation("unweighted_batches", STP, "    accounting.add(result.loss, result.weight, result.rows)\n    if result.scores",
             "    accounting.add(result.loss, 1, result.rows)\n    if result.scores",
             ("tests/test_learner.py", "-k", "uneven or same_numbers"), "batch losses not weighted by size"),
    Mutation("no_running_nan_check", EPO, "if not math.isfinite(value):", "if False:",
             (f"{PROMISES}::test_a_nan_loss_stops_training_at_the_next_display_step_not_the_epoch_end",
              "tests/test_learner.py::test_non_finite_loss_names_epoch_and_step_on_every_rank"),
             "NaN loss not caught mid-epoch"),
    Mutation("no_batch_check", LRN, "agree_on_batch(run.batches.problem(batch, \"data_loader['train_loader']\", run.model))",
             "run.batches.problem(batch, \"data_loader['train_loader']\", run.model)",
             ("tests/test_learner.py", "-k", "bad_input"), "a bad batch on one rank is not agreed on"),
    Mutation("samples_count_batches", EPO, 'accumulators["samples"](sum(self.rows))', 'accumulators["samples"](len(self.rows))',
             _promises("drop_last"), "samples counts batches"),
    Mutation("sync_per_step", LRN, "            backward(accelerator, out.loss, run.direct)  # accelerator.backward, minus its idle work\n",
             "            backward(accelerator, out.loss, run.direct)  # accelerator.backward, minus its idle work\n"
             "            float(out.loss)\n",
             ("tests/test_learner.py::test_no_host_sync_per_training_step",
              f"{PROMISES}::test_no_host_sync_per_step_with_accumulation_bf16_clipping_and_f1"), "a host sync every step"),
    Mutation("crash_on_rank1_at_end", LRN, "        return record\n",
             "        if run.accelerator.process_index == 1:\n            raise SystemExit(3)\n        return record\n",
             _promises("every_rank"), "rank 1 dies after the last collective"),
    Mutation("stop_flags_dropped", "distlearn/training/control.py", "            if count:\n                return signum",
             "            if False:\n                return signum", ("tests/test_checkpoint.py", "-k", "stop_flags or sigterm"),
             "a stop signal never reaches the ranks"),
    Mutation("merge_sums_everywhere", EPO, "        if n and rank == 0:\n", "        if n:\n",
             ("tests/test_elastic.py::test_reshard_sums_into_rank_zero",),
             "an elastic resume counts the saved partial epoch on every new rank"),
    # ---- accumulators/ ---------------------------------------------------------------------------
    Mutation("no_second_sum_reduce", f"{ACC}/wire.py", "    if rest.numel():\n        dist.all_reduce(rest, group=group)",
             "    if False:\n        dist.all_reduce(rest, group=group)", tuple(ACC_TESTS), "sums past 4096 stay local"),
    Mutation("mean_weight_one", f"{ACC}/aggregates.py", '            states["weight"] += weight\n', '            states["weight"] += 1\n',
             tuple(ACC_TESTS), "Mean ignores weights in its denominator"),
    Mutation("extend_weights_ignored", f"{ACC}/aggregates.py", "self._add_weighted(states, rows, w, rows=True)",
             "self._add_weighted(states, rows, torch.ones_like(w), rows=True)", tuple(ACC_TESTS),
             "Mean.extend ignores weights"),
    Mutation("zero_weight_counts", f"{ACC}/aggregates.py", "        x = torch.where(counts, x, 0.0)\n", "",
             tuple(ACC_TESTS), "a weight-0 NaN reaches the Mean"),
    Mutation("float32_states", f"{ACC}/tensor.py", "fill[self._reductions[name]], dtype=torch.float64", "fill[self._reductions[name]], dtype=torch.float32",
             tuple(ACC_TESTS), "states in float32"),
    Mutation("rank_major", f"{ACC}/sequences.py", "        out.extend(items[step] for items in per_rank if step < len(items))\n    return out",
             "        pass\n    return [item for items in per_rank for item in items]", tuple(ACC_TESTS),
             "List/Cat in rank-major order"),
    Mutation("max_reduced_by_sum", f"{ACC}/collective.py", "op=dist.ReduceOp.MAX", "op=dist.ReduceOp.SUM", tuple(ACC_TESTS), "Max summed"),
    Mutation("no_signature_check", f"{ACC}/wire.py", "if not signature_agrees(head, mine, world):", "if False:",
             tuple(ACC_TESTS), "divergent ranks get garbage"),
    Mutation("neutral_max_finite", f"{ACC}/tensor.py", 'MAX: float("-inf")', "MAX: -1e300", tuple(ACC_TESTS),
             "a Max of -inf values reports -1e300"),
    Mutation("empty_not_nan", f"{ACC}/aggregates.py", 'torch.where(states["count"] > 0, result, torch.nan)', 'torch.where(states["count"] >= 0, result, torch.nan)',
             tuple(ACC_TESTS), "an empty Max gives -inf, not NaN"),
    Mutation("int_sum_as_float", f"{ACC}/aggregates.py", "return result.to(device=device, dtype=torch.int64)", "return result.to(device=device)",
             tuple(ACC_TESTS), "integer sums come back float64"),
    Mutation("no_nan_warning", f"{ACC}/tensor.py", "        if empty is not None and bool(empty.any()):\n            nan_warning(self._name)",
             "        if empty is not None and bool(empty.any()):\n            pass", tuple(ACC_TESTS), "empty results give NaN silently"),
    Mutation("accuracy_counts_batches", f"{MET}/classification/accuracy.py", 'states["correct"] += hit.sum()\n            states["total"] += y_true.numel()',
             'states["correct"] += hit.sum()\n            states["total"] += 1',
             tuple(MET_TESTS), "accuracy divides by batches"),
    Mutation("f1_fp_is_fn", f"{MET}/functional/stat_scores.py", "fp = confusion.sum(-2) - tp", "fp = confusion.sum(-1) - tp", tuple(MET_TESTS),
             "F1's false positives from the wrong axis"),
    Mutation("macro_over_all_classes", f"{MET}/functional/stat_scores.py", "return scores.sum(-1) / present.sum(-1)",
             "return scores.mean(-1)", tuple(MET_TESTS), "macro F1 averages absent classes too"),
    Mutation("mse_is_mae", f"{MET}/regression/errors.py", "        return diff.square()", "        return diff.abs()", tuple(MET_TESTS), "MSE computes MAE"),
    Mutation("threshold_inclusive", f"{MET}/functional/inputs.py", "return (_probabilities(scores) >= threshold).long()",
             "return (_probabilities(scores) > threshold).long()",
             tuple(MET_TESTS), "a score of exactly the threshold is called negative (the rule is >=)"),
    Mutation("threshold_inclusive_multilabel", f"{MET}/functional/inputs.py",
             "return (_probabilities(_detached(y_score)) >= threshold).long()",
             "return (_probabilities(_detached(y_score)) > threshold).long()",
             (f"{MET_TESTS[1]}::test_a_score_exactly_at_the_threshold_is_positive_in_every_task",),
             "a multilabel score of exactly the threshold is called negative (the rule is >=)"),
    Mutation("binned_threshold_strict", f"{MET}/classification/binned.py", "torch.bucketize(scores, grid, right=True)",
             "torch.bucketize(scores, grid, right=False)",
             ("tests/test_more_metrics.py::test_binned_scores_exactly_on_a_threshold_count_at_it",),
             "a binned score equal to a threshold does not count at it (the rule is >=)"),
    Mutation("grown_padding_right_aligned", f"{ACC}/tensor.py", "padded[name][tuple(slice(0, n) for n in state.shape)] = state",
             "padded[name][tuple(slice(t - n, t) for n, t in zip(state.shape, target[name]))] = state",
             (f"{MET_TESTS[1]}::test_grown_confusion_matrices_of_different_sizes_add_cell_by_cell",),
             "a smaller grown state is padded at the near end: cells of different ranks mix"),
    Mutation("top_k_ties_low_index", f"{MET}/classification/accuracy.py", "((y_score == own) & (index > label))",
             "((y_score == own) & (index < label))", (f"{MET_TESTS[1]}::test_top_k_tie_rule_on_sklearn_cases",),
             "top_k breaks ties toward the lower class index, not scikit-learn's higher"),
    Mutation("r2_nan_to_zero", f"{MET}/regression/errors.py",
             'return torch.where(spread.isnan() | states["residual"].isnan(), torch.nan, result)', "return result",
             tuple(MET_TESTS), "a NaN target gives R2 = 0.0"),
    Mutation("mean_nan_weight_kept", f"{ACC}/aggregates.py", "nan = x.isnan() | w.isnan()", "nan = x.isnan()",
             tuple(ACC_TESTS), "a NaN weight makes Mean(nan_strategy='ignore') NaN"),
    Mutation("weighted_is_macro", f"{MET}/classification/accuracy.py", 'if self.average == "weighted":\n            # torchmetrics',
             'if False:\n            # torchmetrics', ("tests/test_multilabel.py", "-k", "weighted"),
             "multilabel weighted accuracy is the macro mean"),
    Mutation("out_of_range_ignored", f"{MET}/classification/stat_scores.py", "        if count:\n            raise ValueError(self._out_of_range",
             "        if False:\n            raise ValueError(self._out_of_range",
             tuple(MET_TESTS), "labels outside the classes pass silently"),
]


def applies(m: Mutation) -> bool:
    return (ROOT / m.path).read_text().count(m.old) == 1


def run(m: Mutation, full: bool, timeout: float) -> tuple[str, float]:
    path = ROOT / m.path
    original = path.read_bytes()
    text = original.decode()
    if text.count(m.old) != 1:
        return "not applicable", 0.0
    tests = ["tests"] if full else list(m.tests)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", WANDB_MODE="offline")
    start = time.monotonic()
    try:
        path.write_text(text.replace(m.old, m.new))
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    finally:
        path.write_bytes(original)
    seconds = time.monotonic() - start
    if code == 0:
        return "SURVIVED", seconds
    if code in (1, "timeout"):
        return "KILLED" + (" (timeout)" if code == "timeout" else ""), seconds
    return f"ERROR (pytest exit {code})", seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="run only these mutations")
    parser.add_argument("--list", action="store_true", help="list the mutations and whether they apply")
    parser.add_argument("--full", action="store_true", help="run the whole suite for each mutation")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per mutation (a hang counts as killed)")
    args = parser.parse_args()
    unknown = set(args.names) - {m.name for m in MUTATIONS}
    if unknown:
        parser.error(f"unknown mutations {sorted(unknown)}; --list shows them")
    chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]
    if args.list:
        for m in chosen:
            print(f"{m.name:24} {m.path:26} {'applies' if applies(m) else 'not applicable':15} {m.why}")
        return 0
    results: dict[str, list[str]] = {}
    for m in chosen:
        outcome, seconds = run(m, args.full, args.timeout)
        results.setdefault("not applicable" if outcome == "not applicable" else outcome.split()[0], []).append(m.name)
        print(f"{outcome:16} {m.name:24} {seconds:6.1f} s  {m.path}: {m.why}", flush=True)
    print("summary: " + ", ".join(f"{len(v)} {k}" for k, v in sorted(results.items())))
    if results.get("SURVIVED"):
        print("survivors: " + ", ".join(results["SURVIVED"]))
    return 1 if results.get("SURVIVED") or results.get("ERROR") else 0


if __name__ == "__main__":
    sys.exit(main())
