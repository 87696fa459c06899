"""Structured embedding initialisation from the training stream (DESIGN 3.2, ``model.depenc.embedding_init: ppmi_svd``)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import svds


def ppmi_svd_embeddings(stream: np.ndarray, vocab_size: int, dim: int, window: int = 2, std: float = 0.02) -> torch.Tensor:
    """(vocab_size, dim) embeddings: truncated SVD of the positive PMI matrix of co-occurrences within
    ``window`` tokens of the training stream, U * sqrt(S), rescaled to the usual init std."""
    stream = np.asarray(stream, dtype=np.int64)
    rows, cols = [], []
    for off in range(1, window + 1):  # symmetric window
        rows += [stream[:-off], stream[off:]]
        cols += [stream[off:], stream[:-off]]
    r, c = np.concatenate(rows), np.concatenate(cols)
    counts = sp.coo_matrix((np.ones_like(r, dtype=np.float64), (r, c)), shape=(vocab_size, vocab_size)).tocsr()
    total = counts.sum()
    row_p = np.asarray(counts.sum(axis=1)).ravel() / total
    col_p = np.asarray(counts.sum(axis=0)).ravel() / total
    coo = counts.tocoo()
    pmi = np.log(coo.data / total) - np.log(row_p[coo.row]) - np.log(col_p[coo.col])
    keep = pmi > 0
    ppmi = sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=counts.shape)
    k = min(dim, vocab_size - 1)
    u, s, _ = svds(ppmi, k=k, random_state=0)
    emb = u * np.sqrt(s)
    if k < dim:
        emb = np.pad(emb, ((0, 0), (0, dim - k)))
    emb = emb / (emb.std() + 1e-12) * std
    return torch.tensor(emb, dtype=torch.float32)
