"""BinaryIVF against brute force: Hamming search, exact re-rank, incremental updates."""

import logging

import pytest
import torch
import torch.nn.functional as F

import megaclass.logs
from megaclass.index import BinaryIVF, binary_ivf
from megaclass.index.binary_codes import fit_rotation, pack_bits, popcount
from megaclass.index.faiss_engines import faiss_available

ROWS, DIM = 1003, 64


def _weights(seed=0, rows=ROWS):
    """Clustered rows (as trained class weights are): 40 centres plus noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(40, DIM, generator=g)
    return centres[torch.randint(40, (rows,), generator=g)] + 0.5 * torch.randn(
        rows, DIM, generator=g
    )


def _brute_force_hamming(index, queries, k):
    """(distances, rows) of the k rows nearest each query in Hamming distance, ties by row."""
    distances = popcount(index.codes[None] ^ index.encode(queries)[:, None]).sum(2)  # [Q, C]
    keys = distances * len(index.codes) + torch.arange(len(index.codes))
    best = keys.topk(k, dim=1, largest=False).values
    return best // len(index.codes), best % len(index.codes)


def test_popcount_and_packing_count_every_bit_including_the_sign_bit():
    g = torch.Generator().manual_seed(0)
    words = torch.randint(-(2**63), 2**63 - 1, (500,), generator=g, dtype=torch.int64)
    words[:3] = torch.tensor([-1, -(2**63), 0])
    want = [bin(w & (2**64 - 1)).count("1") for w in words.tolist()]
    assert popcount(words).tolist() == want
    bits = torch.rand(7, 128, generator=g) > 0.5
    packed = pack_bits(bits)
    unpacked = (packed[:, :, None] >> torch.arange(64)) & 1
    assert torch.equal(unpacked.reshape(7, 128).bool(), bits)


BACKENDS = [
    "torch",
    pytest.param("faiss", marks=pytest.mark.skipif(not faiss_available(), reason="no faiss")),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rotation,num_bits", [("random", 64), ("itq", 64), ("random", 128)])
def test_search_probing_every_list_equals_exact_hamming_search(rotation, num_bits, backend):
    weight = _weights()
    index = BinaryIVF(num_bits, num_lists=17, rotation=rotation, backend=backend).build(weight)
    assert index.backend == backend
    queries = _weights(seed=1, rows=50)
    scores, rows = index.search(queries, k=20, nprobe=17)
    distances, want = _brute_force_hamming(index, queries, 20)
    assert torch.allclose(scores, torch.cos(distances * torch.pi / num_bits))
    if backend == "torch":  # ties by row
        assert torch.equal(rows, want)
    else:  # ties in any order: each row at its true distance, no row twice
        true = popcount(index.codes[rows] ^ index.encode(queries)[:, None]).sum(2)
        assert torch.equal(true, distances)
        assert all(len(set(r)) == 20 for r in rows.tolist())


def test_rerank_of_every_row_is_exact_cosine_search_and_beats_hamming_order():
    weight, queries = _weights(), _weights(seed=1, rows=50)
    index = BinaryIVF(num_bits=64, num_lists=10).build(weight)
    cosines = F.normalize(queries, dim=1) @ F.normalize(weight, dim=1).t()
    want_scores, want = cosines.topk(10, dim=1)
    scores, rows = index.search(queries, k=10, nprobe=10, rerank=ROWS)
    assert torch.equal(rows, want) and torch.allclose(scores, want_scores, atol=1e-6)

    def recall(found):
        return (
            sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), want.tolist(), strict=True))
            / 500
        )

    hamming_only = index.search(queries, k=10, nprobe=3)[1]
    reranked = index.search(queries, k=10, nprobe=3, rerank=100)[1]
    assert recall(reranked) > recall(hamming_only)


def test_fewer_probed_rows_than_k_are_padded():
    index = BinaryIVF(num_bits=64, num_lists=50).build(_weights(rows=200))
    scores, rows = index.search(_weights(seed=2, rows=5), k=150, nprobe=1)
    assert ((rows == -1) == (scores == float("-inf"))).all()
    assert (rows == -1).any() and (rows[:, 0] >= 0).all()
    for row in rows:
        found = row[row >= 0]
        assert len(found.unique()) == len(found)
        assert (row[len(found) :] == -1).all()  # padding only at the end


def test_itq_lowers_the_quantization_error_of_a_random_rotation():
    weight = F.normalize(_weights(), dim=1)

    def error(rotation):
        projected = weight @ BinaryIVF(64, rotation=rotation).build(weight).rotation
        return (torch.sign(projected) / 8 - projected).pow(2).sum()  # codes scaled to norm 1

    assert error("itq") < 0.9 * error("random")


@pytest.mark.parametrize("kind", ["random", "itq"])
def test_more_bits_than_dimensions_come_from_orthogonal_blocks(kind):
    sample = F.normalize(_weights(), dim=1)  # [n, DIM]
    rotation = fit_rotation(sample, 2 * DIM + 32, kind, torch.Generator().manual_seed(0))
    assert rotation.shape == (DIM, 2 * DIM + 32)
    for block in rotation.split(DIM, dim=1):
        gram = block.t() @ block
        assert torch.allclose(gram, torch.eye(block.shape[1]), atol=1e-4)
    assert not torch.allclose(rotation[:, :64], rotation[:, DIM : DIM + 64], atol=0.1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_update_equals_a_rebuild_with_the_same_quantizer(backend):
    weight = _weights()
    index = BinaryIVF(num_bits=64, num_lists=13, backend=backend).build(weight)
    queries = _weights(seed=3, rows=40)
    index.search(queries, k=5, nprobe=2)  # sorts the lists, which update must invalidate
    changed = torch.tensor([0, 5, 17, 400, 1002])
    weight[changed] = _weights(seed=4, rows=5)  # in place: the index reads the same tensor
    index.update(changed)
    rebuilt = BinaryIVF(num_bits=64, num_lists=13, backend=backend).build(weight.clone())
    rebuilt.rotation, rebuilt.centroids = index.rotation, index.centroids
    rebuilt.build(rebuilt.weight, train=False)
    assert torch.equal(index.codes, rebuilt.codes) and torch.equal(index.lists, rebuilt.lists)
    (scores, rows), (want_scores, want_rows) = (
        index.search(queries, 8, 3),
        rebuilt.search(queries, 8, 3),
    )
    assert torch.equal(scores, want_scores)
    assert backend == "faiss" or torch.equal(rows, want_rows)


def test_bad_settings_and_use_before_build_raise():
    with pytest.raises(ValueError, match="multiple of 64"):
        BinaryIVF(num_bits=100)
    with pytest.raises(ValueError, match="rotation"):
        BinaryIVF(rotation="pca")
    with pytest.raises(ValueError, match="backend"):
        BinaryIVF(backend="annoy")
    with pytest.raises(RuntimeError, match="build"):
        BinaryIVF().search(torch.randn(2, DIM), 3)
    with pytest.raises(ValueError, match="k >= 1"):
        BinaryIVF(64).build(_weights()).search(torch.randn(2, DIM), 0)


def test_a_build_logs_its_progress_and_encodes_block_by_block_as_at_once(caplog, monkeypatch):
    monkeypatch.setattr(megaclass.logs, "PROGRESS_INTERVAL_S", 0.0)
    monkeypatch.setattr(binary_ivf, "_BUILD_ROWS", 100)
    weight = _weights()
    with caplog.at_level(logging.INFO, logger="megaclass"):
        index = BinaryIVF(num_bits=128, backend="torch").build(weight)
    messages = [r.getMessage() for r in caplog.records if r.name == "megaclass.index"]
    assert messages[0] == f"binary IVF index: 100 of {ROWS:,} classes (9%)"
    assert messages[-1] == f"binary IVF index: {ROWS:,} of {ROWS:,} classes (100%)"
    assert torch.equal(index.codes, index.encode(weight))
    assert torch.equal(index.lists, index.assign(weight, 1)[:, 0])
