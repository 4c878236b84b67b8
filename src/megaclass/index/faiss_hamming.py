"""faiss as the CPU backend of ``BinaryIVF``'s Hamming scan.

The codes and list assignments stay ``BinaryIVF``'s own (its float coarse quantizer); they are
mirrored into a faiss ``IndexBinaryIVF`` whose lists are filled with those assignments
(``add_core`` with precomputed lists) and searched with the queries' own probes
(``search_preassigned``), so faiss only does what it does fastest: XOR-popcount over the lists.
Results equal the tensor scan's distances; rows at equal distance may come in another order.
"""

from __future__ import annotations

import numpy as np
import torch


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class FaissHammingLists:
    """codes [C, W] int64 (packed bits) and lists [C] int64 of rows 0..C-1, in faiss."""

    def __init__(
        self, codes: torch.Tensor, lists: torch.Tensor, num_lists: int, num_bits: int
    ) -> None:
        import faiss

        self._faiss = faiss
        self.index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(num_bits), num_bits, num_lists)
        self.index.is_trained = True  # the lists are assigned by BinaryIVF, never by faiss
        self.replace(torch.arange(len(codes)), codes, lists, new=True)

    def replace(
        self, rows: torch.Tensor, codes: torch.Tensor, lists: torch.Tensor, new: bool = False
    ) -> None:
        """(Re)insert rows [n] with their codes [n, W] and lists [n]."""
        ids = np.ascontiguousarray(rows.cpu().numpy(), dtype=np.int64)
        if not new:
            self.index.remove_ids(ids)
        # Named arrays: swig_ptr does not keep its array alive.
        code_bytes = np.ascontiguousarray(codes.cpu().numpy()).view(np.uint8)
        list_ids = np.ascontiguousarray(lists.cpu().numpy(), dtype=np.int64)
        swig_ptr = self._faiss.swig_ptr
        self.index.add_core(len(ids), swig_ptr(code_bytes), swig_ptr(ids), swig_ptr(list_ids))

    def search(
        self, query_codes: torch.Tensor, probes: torch.Tensor, count: int, num_bits: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query_codes [q, W], probes [q, p] -> (distances [q, count] int64, rows [q, count]),
        nearest first, -1 rows (distance num_bits) where fewer were probed."""
        self.index.nprobe = probes.shape[1]
        code_bytes = np.ascontiguousarray(query_codes.cpu().numpy()).view(np.uint8)
        distances, rows = self.index.search_preassigned(
            code_bytes, count, np.ascontiguousarray(probes.cpu().numpy()), None
        )
        rows = torch.from_numpy(rows).to(probes.device)
        distances = torch.from_numpy(distances.astype(np.int64)).to(probes.device)
        return torch.where(rows < 0, num_bits, distances), rows
