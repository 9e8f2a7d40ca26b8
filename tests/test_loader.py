"""distlearn.runtime.loader, the in-memory loader's fast path: exactly Accelerate's order, sharding and padding."""

import pytest
import torch

CASES = [(n, batch, shuffle) for n, batch in ((23, 4), (24, 4), (5, 3)) for shuffle in (True, False)]
# Loader shapes a user may build over TensorBatches (batches of 6: split_batches divides them on 1, 2, 3 ranks).
SHAPES = ["drop_last", "replacement", "more_samples_than_rows", "split_batches"]
EPOCHS = 3  # passes after set_epoch(epoch); then two more without set_epoch (the loader counts them itself)


def _pass(accelerator, loader):
    """One pass: each batch with Accelerate's gradient state at that batch, then the state after it."""
    from accelerate.data_loader import get_sampler

    torch.manual_seed(7)
    state = accelerator.gradient_state
    batches = [(bx.clone(), by.clone(), state.remainder, state.end_of_dataloader) for bx, by in loader]
    sampler = get_sampler(loader)
    # what the pass left behind: the global RNG (torch's loader iterator draws from it without a
    # generator) and the seedable sampler's epoch
    return batches, (torch.rand(1).item(), getattr(sampler, "epoch", None))


def loader_batches(rank, world):
    """Every pass of a plain TensorDataset loader and of a TensorBatches one, both prepared as the
    learner prepares them (``prepare_loader``): {case: [(plain pass, fast pass), ...]}."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration
    from torch.utils.data import DataLoader, RandomSampler, TensorDataset

    from distlearn.runtime import loader as in_memory
    from distlearn.runtime.accelerator import build_accelerator, prepare_loader
    from distlearn.runtime.loader import (
        TensorBatches,
        _TensorBatchLoader,
        batched,
        tensor_loaders,
    )

    accelerator = build_accelerator(seed=4)
    split = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(
        use_seedable_sampler=True, data_seed=4, split_batches=True))

    def pair(case):
        n, batch = (case[0], case[1]) if isinstance(case, tuple) else (23, 6)
        x = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
        y = torch.arange(n) * 10
        if isinstance(case, tuple):
            shuffle = case[2]
            generator = torch.Generator().manual_seed(1) if shuffle else None
            plain = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=shuffle, generator=generator)
            fast = tensor_loaders(TensorBatches(x, y), TensorBatches(x, y), batch_size=batch, shuffle=shuffle, seed=1)
            return accelerator, plain, fast["train_loader"], fast["test_loader"]
        loaders = []
        for dataset, collate in ((TensorDataset(x, y), None), (TensorBatches(x, y), batched)):
            generator = torch.Generator().manual_seed(1)
            options = {"drop_last": {"shuffle": True, "drop_last": True},
                       "replacement": {"sampler": RandomSampler(dataset, True, 30, generator=generator)},
                       "more_samples_than_rows": {"sampler": RandomSampler(dataset, num_samples=50, generator=generator)},
                       "split_batches": {"shuffle": True}}[case]
            if "sampler" not in options:
                options["generator"] = generator
            loaders.append(DataLoader(dataset, batch_size=batch, collate_fn=collate, **options))
        return (split if case == "split_batches" else accelerator), *loaders, None

    out = {}
    for case in CASES + SHAPES:
        # rows gathered at once: the whole pass; 10 rows (2-3 batches); 5 rows (less than one batch of 6)
        in_memory.GATHER_BYTES = {True: 200, False: 2**25}[case[2]] if isinstance(case, tuple) else 100
        acc, plain, fast, fast_test = pair(case)
        plain, fast = prepare_loader(acc, plain), prepare_loader(acc, fast)
        assert type(fast.base_dataloader) is _TensorBatchLoader  # the fast path is the one tested
        passes = []
        for epoch in range(EPOCHS + 2):
            both = []
            for loader in (plain, fast):
                if epoch < EPOCHS:
                    loader.set_epoch(epoch)
                both.append(_pass(acc, loader))
            passes.append(both)
        if fast_test is not None:  # no generator: torch's iterator draws from the global RNG; so does ours
            plain_test = DataLoader(TensorDataset(*fast_test.dataset.tensors), batch_size=case[1])
            passes.append([_pass(acc, prepare_loader(acc, loader, drop_last_ok=False))
                           for loader in (plain_test, fast_test)])
        out[case] = passes
    return out


@pytest.mark.parametrize("world", [1, 2, 3])
def test_fast_path_batches_equal_accelerates_loader_element_by_element(dist_pool, world):
    """Order, sharding, Accelerate's padding, remainder and end-of-data flag per batch, the seedable
    sampler's epoch and the global RNG after each pass: the same as a plain loader's."""
    results = dist_pool.run(loader_batches, world)
    for case in CASES + SHAPES:
        n = case[0] if isinstance(case, tuple) else 23
        seen = [[] for _ in range(EPOCHS + 2)]
        for rank_result in results:
            for epoch, ((plain, plain_after), (fast, fast_after)) in enumerate(rank_result[case]):
                assert len(plain) == len(fast) > 0, (case, epoch)
                for (px, py, *p_state), (fx, fy, *f_state) in zip(plain, fast):
                    assert torch.equal(px, fx) and torch.equal(py, fy), (case, epoch)
                    assert p_state == f_state and fx.dtype == px.dtype and fx.shape == px.shape, (case, epoch)
                assert plain_after == fast_after, (case, epoch)
                if epoch < EPOCHS + 2:
                    seen[epoch] += [v for _, by, *_ in fast for v in by.tolist()]
        if case in ("drop_last", "replacement", "more_samples_than_rows"):
            continue  # not every sample in every pass, by design
        for epoch in range(EPOCHS + 2):  # every sample in each pass (plus Accelerate's repeats)
            assert set(seen[epoch]) == set(range(0, n * 10, 10)), (case, epoch)
        if case in CASES and case[2] and n > case[1] * world:
            passes = [[by.tolist() for _, by, *_ in results[0][case][epoch][1][0]] for epoch in range(EPOCHS + 2)]
            assert passes[0] != passes[1] and passes[3] != passes[4]  # set_epoch, or the loader's own count, reshuffles


def _shard_pair(n: int, world: int, rank: int, **options):
    """A plain TensorDataset loader and a fast one, prepared for rank ``rank`` of ``world`` without a group."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader, TensorDataset

    from distlearn.runtime.loader import TensorBatches, batched, index_tensor_batches

    x, y = torch.arange(n * 2, dtype=torch.float32).reshape(n, 2), torch.arange(n)
    loaders = []
    for dataset, collate in ((TensorDataset(x, y), None), (TensorBatches(x, y), batched)):
        sampler = options.get("sampler")
        loader = DataLoader(dataset, batch_size=2, collate_fn=collate, **(
            {"sampler": sampler(dataset)} if sampler else {"shuffle": True, "generator": torch.Generator().manual_seed(1)}))
        prepared = prepare_data_loader(loader, num_processes=world, process_index=rank, use_seedable_sampler=True,
                                       data_seed=3, dispatch_batches=options.get("dispatch", False),
                                       put_on_device=options.get("dispatch", False))
        loaders.append(prepared if collate is None else index_tensor_batches(prepared))
    return loaders


def _rows(loader) -> list[list[int]]:
    return [batch[1].tolist() for batch in loader]


def test_fast_path_follows_even_batches_changed_mid_run():
    """Accelerate's join_uneven_inputs turns even_batches off on a prepared loader: the layout follows."""
    plain, fast = _shard_pair(11, world=2, rank=1)
    for loader in (plain, fast):
        loader.set_epoch(0)
    assert _rows(plain) == _rows(fast) and len(_rows(fast)[-1]) == 2  # padded from the start
    for loader in (plain, fast):
        loader.batch_sampler.even_batches = False
        loader.set_epoch(0)
    assert _rows(plain) == _rows(fast) and len(_rows(fast)[-1]) == 1  # the odd row alone, no repeat


class _GlobalDraws(torch.utils.data.Sampler):
    """Draws each index from the global RNG as it goes (read ahead, the draws would move)."""

    def __init__(self, dataset) -> None:
        self.n = len(dataset)

    def __iter__(self):
        for _ in range(self.n):
            yield int(torch.randint(self.n, ()))

    def __len__(self) -> int:
        return self.n


def test_a_sampler_that_draws_as_it_goes_keeps_accelerates_loader():
    from distlearn.runtime.loader import _TensorBatchLoader

    plain, fast = _shard_pair(12, world=1, rank=0, sampler=_GlobalDraws)
    assert type(fast.base_dataloader) is not _TensorBatchLoader
    passes = []
    for loader in (plain, fast):
        torch.manual_seed(0)
        rows = []
        for batch in loader:
            rows.append(batch[1].tolist())
            torch.rand(3)  # the training step's own draws (dropout) between batches
        passes.append(rows)
    assert passes[0] == passes[1]


def test_the_fast_path_draws_the_loaders_seed_when_the_pass_starts():
    """torch's loader iterator draws its base seed when made: a DataLoaderDispatcher makes it on every rank."""
    from distlearn.runtime.loader import _TensorBatchLoader

    plain, fast = _shard_pair(13, world=1, rank=0, sampler=torch.utils.data.SequentialSampler)
    assert type(fast.base_dataloader) is _TensorBatchLoader
    after = []
    for loader in (plain.base_dataloader, fast.base_dataloader):
        torch.manual_seed(0)
        iter(loader)  # made, never read
        after.append(torch.rand(1).item())
    assert after[0] == after[1]
    dispatched = _shard_pair(13, world=1, rank=0, dispatch=True)[1]
    assert type(dispatched.base_dataloader) is not _TensorBatchLoader  # dispatchers keep Accelerate's loader
