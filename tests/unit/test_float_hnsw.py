"""FloatHNSW (faiss's HNSW over unit rows): exact answers with a wide beam, saved and loaded
the same, bad files and bad queries refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megaclass.index.faiss_engines import faiss_available

pytestmark = pytest.mark.skipif(not faiss_available(), reason="faiss not installed")


def test_a_wide_beam_finds_the_exact_cosine_top_k_and_the_saved_index_answers_the_same(tmp_path):
    from megaclass.index import FloatHNSW

    generator = torch.Generator().manual_seed(0)
    vectors, queries = torch.randn(3000, 24, generator=generator), torch.randn(40, 24)
    index = FloatHNSW.build(vectors.numpy())  # an array, as a memory-mapped export's rows
    assert len(index) == 3000 and index.bytes_per_vector == 4 * 24 + 4 * 32
    cosines = F.normalize(queries, dim=1) @ F.normalize(vectors, dim=1).t()
    want_scores, want_ids = cosines.topk(5, 1)
    scores, ids = index.search(queries, 5, ef=3000)
    assert torch.equal(ids, want_ids) and torch.allclose(scores, want_scores, atol=1e-5)
    _, narrow = index.search(queries, 5, ef=16)  # a narrow beam: most, not all
    hits = (narrow[:, :, None] == want_ids[:, None, :]).any(2).float().mean()
    assert hits >= 0.8
    index.save(tmp_path / "index.faiss")
    loaded = FloatHNSW.load(tmp_path / "index.faiss")
    assert torch.equal(loaded.search(queries, 5, ef=16)[1], narrow)


def test_bad_files_and_queries_are_refused(tmp_path):
    import faiss

    from megaclass.index import FloatHNSW

    (tmp_path / "junk.faiss").write_bytes(b"not a faiss index at all")
    with pytest.raises(ValueError, match="not a readable faiss index"):
        FloatHNSW.load(tmp_path / "junk.faiss")
    faiss.write_index(faiss.IndexFlatL2(8), str(tmp_path / "flat.faiss"))
    with pytest.raises(ValueError, match="IndexFlatL2, not an inner-product HNSW"):
        FloatHNSW.load(tmp_path / "flat.faiss")
    index = FloatHNSW.build(np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32))
    with pytest.raises(ValueError, match=r"queries must be \[Q, 8\]"):
        index.search(torch.randn(2, 7), 3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        index.search(torch.randn(2, 8), 0)
