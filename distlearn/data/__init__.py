"""Data sets as the reference's dict of loaders: tables, arrays, text, any torch or Hugging Face set.

``SklearnDataset`` serves the data sets scikit-learn ships (no download) and
``CSVDataset`` a user's own table. Both split with a fixed seed (stratified for
classification), standardise features with statistics of the training part only,
and return ``{"train_loader": DataLoader, "test_loader": DataLoader}`` over
``TensorDataset``s that yield ``(features, labels)`` batches:

- features: float32, shape ``(batch, n_features)``;
- classification labels: int64 class indices ``0..n_classes-1``, shape ``(batch,)``,
  what ``nn.CrossEntropyLoss`` expects next to ``(batch, n_classes)`` logits;
- regression targets: float32, shape ``(batch, 1)``, the shape of an MLP with
  ``out_features=1``, so ``nn.MSELoss`` compares element by element (a ``(batch,)``
  target against a ``(batch, 1)`` output would broadcast to ``(batch, batch)``).

``n_features``, ``n_classes`` and ``n_outputs`` size a model before any loader exists
(experiment configs fill ``in_features``/``out_features`` from them).

The training loader shuffles with its own seeded ``torch.Generator``, never the
global RNG, so its batch order is reproducible from ``seed`` alone.

In-memory tensors take a fast path (:class:`~distlearn.runtime.loader.TensorBatches`, see
:mod:`distlearn.runtime.loader`): whole batches by one ``index_select`` per tensor, exactly the
batches of a plain ``TensorDataset`` loader, however Accelerate prepares it.

Other sources, each with the same ``load()`` and size attributes:

- :class:`NumpyDataset`: ``.npy``/``.npz`` arrays;
- :class:`TextDataset`: a character-level language-modelling set over a text file,
  by default the English help texts that ship with Python (``pydoc_data.topics``);
- :class:`TorchDataset`: any ``torch.utils.data.Dataset`` class by path, with a
  ``collate_fn`` by path;
- :class:`HFDataset`: Hugging Face ``datasets`` from local files (needs the
  ``distlearn[hf]`` extra).

The parts: ``splits`` (split and standardise arrays, wrap them into loaders), ``tabular``
(scikit-learn, CSV and NumPy sets), ``text``, ``torch_dataset``, ``hf``, and ``checks`` (the
parameter checks and the dotted-path lookup they share).
"""

from __future__ import annotations

from ..runtime.loader import TensorBatches, batched, index_tensor_batches, tensor_loaders
from .checks import resolve_object
from .hf import HF_FORMATS, HFDataset, require_hf
from .splits import make_loaders, split_arrays
from .tabular import SKLEARN_DATASETS, TASKS, CSVDataset, NumpyDataset, SklearnDataset
from .text import TextDataset, python_help_text
from .torch_dataset import TorchDataset

__all__ = [
    "CSVDataset", "HFDataset", "NumpyDataset", "SklearnDataset", "TextDataset", "TorchDataset",
    "HF_FORMATS", "SKLEARN_DATASETS", "TASKS", "TensorBatches", "batched", "index_tensor_batches", "make_loaders",
    "python_help_text", "require_hf", "resolve_object", "split_arrays", "tensor_loaders",
]
