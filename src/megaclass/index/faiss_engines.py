"""faiss as the CPU engine of ``BinaryIVF``'s Hamming scan and ``BinaryGraph``'s graph search.

The codes and list assignments stay ``BinaryIVF``'s own (its float coarse quantizer); they are
mirrored into a faiss ``IndexBinaryIVF`` whose lists are filled with those assignments
(``add_core`` with precomputed lists) and searched with the queries' own probes
(``search_preassigned``), so faiss only does what it does fastest: XOR-popcount over the lists.
Results equal the tensor scan's distances; rows at equal distance may come in another order.

``BinaryGraph``'s graph (built by megaclass) is likewise handed to faiss as the only level of an
HNSW index whose storage reads the sign codes as product-quantizer codes, so that faiss's C++
search walks it with the asymmetric distance (much faster on CPU than the batched tensor beam
search: ``benchmarks/results/index.md``).
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


class FaissSignGraph:
    """A graph over sign codes searched by faiss with the asymmetric distance: codes [N, W] int64
    and neighbour lists [N, degree] (-1 padded, degree even) become the single level of an
    ``IndexHNSWPQ`` whose product quantizer has one sub-quantizer per code byte and, as its 256
    centroids, the +-1 sign patterns of the byte's 8 bits (``binary_codes.SIGNS_OF_BYTE``). So
    the stored codes are read as they are, and faiss's C++ beam search (one query per thread,
    from ``entry_point``) ranks them by the squared distance between the projected query and
    the code's sign vector: ``|p|^2 + bits - 2 p . s``, the asymmetric score ``p . s`` in
    reverse."""

    def __init__(self, codes: torch.Tensor, graph: torch.Tensor, entry_point: int) -> None:
        import faiss

        from megaclass.index.binary_codes import sign_table

        num_bits, degree = 64 * codes.shape[1], graph.shape[1]
        if degree % 2:
            raise ValueError(f"the faiss graph search needs an even degree, got {degree}")
        num_bytes = num_bits // 8
        self.num_bits = num_bits
        self.index = faiss.IndexHNSWPQ(num_bits, num_bytes, degree // 2, 8)  # level 0: 2 M links
        storage = faiss.downcast_index(self.index.storage)
        patterns = np.tile(sign_table().numpy(), (num_bytes, 1))  # [B 256, 8]
        faiss.copy_array_to_vector(patterns.reshape(-1), storage.pq.centroids)
        code_bytes = np.ascontiguousarray(codes.cpu().numpy()).view(np.uint8)
        faiss.copy_array_to_vector(code_bytes.reshape(-1), storage.codes)
        storage.is_trained = self.index.is_trained = True
        storage.ntotal = self.index.ntotal = len(codes)
        hnsw = self.index.hnsw
        faiss.copy_array_to_vector(np.ones(len(codes), dtype=np.int32), hnsw.levels)
        hnsw.prepare_level_tab(len(codes), True)  # offsets and empty lists for level 0 only
        links = faiss.rev_swig_ptr(hnsw.neighbors.data(), hnsw.neighbors.size())
        links[:] = graph.cpu().numpy().astype(np.int32).reshape(-1)
        hnsw.entry_point, hnsw.max_level = entry_point, 0

    def search(self, projected: torch.Tensor, ef: int) -> tuple[torch.Tensor, torch.Tensor]:
        """projected [q, bits] queries (``binary_codes.project``) -> (asymmetric scores [q, ef]
        fp32, ids [q, ef]), best first, -inf and -1 where fewer were reached."""
        self.index.hnsw.efSearch = ef
        queries = np.ascontiguousarray(projected.cpu().numpy(), dtype=np.float32)
        distances, ids = self.index.search(queries, ef)
        norms = (queries.astype(np.float64) ** 2).sum(1, keepdims=True)
        scores = torch.from_numpy(((norms + self.num_bits - distances) / 2).astype(np.float32))
        ids = torch.from_numpy(ids)
        return scores.masked_fill_(ids < 0, float("-inf")), ids
