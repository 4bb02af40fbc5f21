"""Attention attribution: how strongly each output sentence attends to each context sentence.

    matrix = attribute(attention, token_sentence, num_sentences, output_sentence_of)   # [output sentences, context]

``attention[i, j]`` is the attention (averaged over layers and heads) that output token i paid to prompt token j while
it was generated. Prompt tokens are mapped to the context sentence that contains them (or -1: template, question),
output tokens to their output sentence; each row of the result sums the attention its tokens paid to each context
sentence, normalised so that a row sums to 1 over the context sentences.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import BinaryIO

import numpy as np


def locate(text: str, pieces: Sequence[str], start: int = 0) -> list[tuple[int, int]]:
    """Character spans of ``pieces`` found in ``text`` in order, each after the previous one ((-1, -1) if absent).

    >>> locate("A b. C d.", ["A b.", "C d."])
    [(0, 4), (5, 9)]
    """
    spans, cursor = [], start
    for piece in pieces:
        found = text.find(piece, cursor)
        if found < 0:
            spans.append((-1, -1))
            continue
        spans.append((found, found + len(piece)))
        cursor = found + len(piece)
    return spans


def token_segments(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """For each token's character offsets, the index of the span containing its start, or -1.

    >>> token_segments([(0, 1), (2, 4), (5, 6)], [(0, 4), (5, 9)])
    [0, 0, 1]
    """
    found = [(a, b, i) for i, (a, b) in enumerate(spans) if a >= 0]  # in text order, as ``locate`` returns them
    starts = np.asarray([a for a, _b, _i in found], dtype=np.int64)
    out = []
    for start, _end in offsets:
        j = int(np.searchsorted(starts, start, side="right")) - 1
        out.append(found[j][2] if j >= 0 and start < found[j][1] else -1)
    return out


def output_sentence_of(token_texts: Sequence[str]) -> list[int]:
    """The output sentence of each generated token: a new sentence starts after a token ending in . ! or ?.

    >>> output_sentence_of(["Ada", " was", " born", ".", " She", " wrote", "."])
    [0, 0, 0, 0, 1, 1, 1]
    """
    out, sentence = [], 0
    for text in token_texts:
        out.append(sentence)
        if text.rstrip().endswith((".", "!", "?")):
            sentence += 1
    return out


def attribute(attention: np.ndarray, token_sentence: Sequence[int], num_sentences: int,
              output_sentence: Sequence[int]) -> np.ndarray:
    """The [output sentences x context sentences] attribution matrix; rows sum to 1 (or 0 when a row saw none)."""
    num_out = (max(output_sentence) + 1) if len(output_sentence) else 0
    matrix = np.zeros((num_out, num_sentences), dtype=np.float64)
    columns = np.asarray(token_sentence)
    for i, row_sentence in enumerate(output_sentence):
        weights = attention[i, : len(columns)]
        mask = columns >= 0
        np.add.at(matrix[row_sentence], columns[mask], weights[mask])
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def render_heatmap(matrix: np.ndarray, output_labels: Sequence[str], context_labels: Sequence[str],
                   path: str | BinaryIO, title: str = "") -> None:
    """Write the attribution matrix as a PNG heat map (output sentences down, context sentences across) to a file
    path or a binary stream."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here
    import matplotlib.pyplot as plt

    height = max(3.5, 0.45 * len(output_labels) + 2.5)  # room for the rotated context labels
    width = max(6.0, min(24.0, 0.35 * len(context_labels) + 4))
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0.0)
    ax.set_yticks(range(len(output_labels)), [_short(label, 50) for label in output_labels], fontsize=8)
    ax.set_xticks(range(len(context_labels)), [_short(label, 28) for label in context_labels], fontsize=6,
                  rotation=90)
    ax.set_xlabel("context sentence")
    ax.set_ylabel("output sentence")
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.03, label="share of attention")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
