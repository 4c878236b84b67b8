"""BinaryGraph: the graph's shape, search against the exact top-k (both engines), additions,
saving and loading, bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from megaclass.index import binary_graph
from megaclass.index.binary_codes import asymmetric_cosine, popcount, project, unpack_signs
from megaclass.index.binary_graph import BinaryGraph, BuildDistance, GraphSettings, partition_knn
from megaclass.index.faiss_engines import faiss_available

SMALL = GraphSettings(num_bits=64, degree=16, candidates=32, partition_size=600, overlap=2)
ENGINES = [
    "torch",
    pytest.param(
        "faiss", marks=pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
    ),
]


def clustered(n: int, dim: int = 32, seed: int = 0) -> torch.Tensor:
    """Points around 40 fixed centres (tight, well apart: a graph of near neighbours alone
    would fall apart into clusters); ``seed`` draws the points."""
    centres = torch.randn(40, dim, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(seed + 1)
    which = torch.randint(0, 40, (n,), generator=generator)
    return centres[which] + 0.3 * torch.randn(n, dim, generator=generator)


def exact_topk(vectors: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    return (F.normalize(queries, dim=1) @ F.normalize(vectors, dim=1).t()).topk(k, 1).indices


def recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, truth, strict=True))
    return hits / truth.numel()


@pytest.fixture(scope="module")
def built() -> tuple[BinaryGraph, torch.Tensor]:
    vectors = clustered(2000)
    return BinaryGraph(SMALL, backend="torch").build(vectors), vectors


def test_the_graph_has_bounded_degree_no_self_edges_and_reaches_every_vector(built):
    index, vectors = built
    graph = index.graph.long()
    assert graph.shape == (len(vectors), SMALL.degree) and graph.dtype == torch.int64
    near = SMALL.degree - SMALL.random_edges
    assert (graph[:, :near] >= 0).all(), "2,000 vectors leave no list of near links short"
    assert not (graph == torch.arange(len(graph))[:, None]).any()
    assert all(len(set(row[row >= 0].tolist())) == int((row >= 0).sum()) for row in graph)
    reached = torch.zeros(len(graph), dtype=torch.bool)
    frontier = index.medoids[:1]
    while len(frontier):  # breadth-first from the search's entry point
        reached[frontier] = True
        nxt = graph[frontier].flatten().unique()
        nxt = nxt[nxt >= 0]
        frontier = nxt[~reached[nxt]]
    assert reached.all()
    assert index.bytes_per_vector == 64 / 8 + 4 * 16


def test_each_partition_graph_is_the_exact_knn_by_hamming_or_cosine():
    codes = torch.randint(-(2**62), 2**62, (300, 1))
    hamming = BuildDistance("hamming", codes, 64)
    neighbours, distances = partition_knn(hamming.points(torch.arange(300)), 5, hamming)
    true = popcount(codes[:, None, 0] ^ codes[None, :, 0])  # [m, m]
    true.fill_diagonal_(1000)
    want = true.sort(1).values[:, :5]
    assert torch.equal(distances, want)
    assert torch.equal(true.gather(1, neighbours), want)

    vectors = torch.randn(300, 7)
    cosine = BuildDistance("cosine", vectors, 64)
    neighbours, distances = partition_knn(cosine.points(torch.arange(300)), 5, cosine)
    unit = F.normalize(vectors, dim=1)
    true = 1 - unit @ unit.t()
    true.fill_diagonal_(9)
    assert torch.equal(neighbours, true.topk(5, 1, largest=False).indices)
    assert torch.allclose(distances / 2**14, true.gather(1, neighbours), atol=1e-4)
    between = cosine.between(neighbours, torch.arange(300))  # another product: +-1 step
    assert (between - distances).abs().max() <= 1


def test_edges_folded_in_rounds_and_lists_made_mutual_by_blocks_give_the_same_graph(
    built, monkeypatch
):
    vectors = built[1]
    partitions_only = dataclasses.replace(SMALL, search_passes=0)
    once = BinaryGraph(partitions_only, backend="torch").build(vectors)
    monkeypatch.setattr(binary_graph, "_EDGES_PER_ROUND", 5000)  # ~10 rounds instead of one
    monkeypatch.setattr(binary_graph, "_MUTUAL_ROWS", 300)  # 7 blocks, the last one short
    again = BinaryGraph(partitions_only, backend="torch").build(vectors)
    assert torch.equal(again.graph, once.graph)


def test_folding_edges_in_keeps_each_rows_nearest_distinct_however_skewed(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    rows, k, total, far = 40, 4, 60, 99
    keys = torch.randint(0, 30 * total, (rows, k), generator=generator)  # distance * total + id
    ids, dists = binary_graph._unique_nearest(keys, k, total, far)  # nearest first
    ids[::3, 2:], dists[::3, 2:] = -1, far  # short lists
    hub = torch.zeros(300, dtype=torch.int64)  # row 0: 300 edges, the others a few
    src = torch.cat([hub, torch.randint(1, rows, (80,), generator=generator)])
    dst = torch.randint(0, total, (len(src),), generator=generator)
    distances = torch.randint(0, 30, (len(src),), generator=generator)
    want = []
    for row in range(rows):
        nearest = {}
        pairs = list(zip(ids[row].tolist(), dists[row].tolist(), strict=True))
        pairs += list(zip(dst[src == row].tolist(), distances[src == row].tolist(), strict=True))
        for node, distance in pairs:
            if node >= 0:
                nearest[node] = min(distance, nearest.get(node, far))
        best = sorted((distance, node) for node, distance in nearest.items())[:k]
        want.append([node for _, node in best] + [-1] * (k - len(best)))
    for block in (1 << 22, 16):  # one block, or a block per few rows
        monkeypatch.setattr(binary_graph, "_FOLD_BLOCK", block)
        folded = binary_graph._folded(ids.clone(), dists.clone(), src, dst, distances, total, far)
        assert folded[0].tolist() == want


def test_a_neighbour_offered_twice_at_distances_rounded_apart_is_kept_once():
    total = 100
    keys = torch.tensor([[5 * total + 7, 3 * total + 9, 4 * total + 7, 6 * total + 2]])
    ids, distances = binary_graph._unique_nearest(keys, 3, total, far=99)
    assert ids.tolist() == [[9, 7, 2]] and distances.tolist() == [[3, 4, 6]]
    folded = binary_graph._folded(  # the same id arriving again, a step farther
        ids, distances, torch.tensor([0, 0]), torch.tensor([7, 1]), torch.tensor([5, 1]), total, 99
    )
    assert folded[0].tolist() == [[1, 9, 7]] and folded[1].tolist() == [[1, 3, 4]]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_search_pass_finds_the_neighbours_no_partition_held(engine):
    """Unclustered vectors in partitions of 100: a vector shares a partition with few of its
    true neighbours, and searching the graph for each vector finds most of the rest."""
    vectors = torch.randn(2000, 32, generator=torch.Generator().manual_seed(0))
    unit = F.normalize(vectors, dim=1)
    truth = (unit @ unit.t()).fill_diagonal_(-2).topk(10, 1).indices

    def share_of_true_neighbours_linked(passes: int) -> float:
        settings = GraphSettings(
            num_bits=64, degree=16, candidates=32, partition_size=100, search_passes=passes
        )
        graph = BinaryGraph(settings, backend=engine).build(vectors).graph.long()
        near = graph[:, : settings.degree - settings.random_edges]
        return float((near[:, :, None] == truth[:, None, :]).any(1).float().mean())

    partitions_only, one_pass = (
        share_of_true_neighbours_linked(0),
        share_of_true_neighbours_linked(1),
    )
    assert partitions_only < 0.4 and one_pass > max(0.65, 2 * partitions_only)


@pytest.mark.parametrize("engine", ENGINES)
def test_search_finds_the_exact_neighbours_and_all_of_them_with_a_wide_beam(built, engine):
    index, vectors = built
    index.requested_backend, index._faiss = engine, None
    queries = clustered(200, seed=1)
    truth = exact_topk(vectors, queries, 10)
    scores, ids = index.search(queries, 10, ef=64)
    assert recall(ids, truth) >= 0.95
    want = F.normalize(queries, dim=1) @ F.normalize(vectors, dim=1).t()
    assert torch.allclose(scores, want.gather(1, ids), atol=1e-5)  # exact cosines, re-ranked
    scores, _ = index.search(queries[:20], 10, ef=len(vectors))  # the beam holds every vector
    assert torch.allclose(scores, want[:20].topk(10, 1).values, atol=1e-5)  # exact, ties aside


@pytest.mark.parametrize("engine", ENGINES)
def test_without_float_vectors_search_ranks_by_the_asymmetric_score(built, engine):
    """The float query against each code's sign bits: the beam's best codes are the best of
    all codes by that score, and the scores estimate the cosine from it."""
    index, _ = built
    bare = BinaryGraph(SMALL, backend=engine)
    bare.load_state_dict(index.state_dict())
    queries = clustered(50, seed=2)
    scores, ids = bare.search(queries, 5, ef=32)
    projected = project(queries, bare.rotation)  # [50, bits]
    every = projected @ unpack_signs(bare.codes).t()  # [50, N]: each code's asymmetric score
    found = every.gather(1, ids)
    assert torch.allclose(scores, asymmetric_cosine(found, projected), atol=1e-3)
    best = every.topk(5, 1).values
    assert (found - best).abs().max(1).values.lt(1e-3).float().mean() >= 0.9


def test_added_vectors_are_found():
    vectors = clustered(2000)
    index = BinaryGraph(SMALL, backend="torch").build(vectors[:1500])
    ids = index.add(vectors[1500:])
    assert ids.tolist() == list(range(1500, 2000)) and len(index) == 2000
    assert index.graph.shape == (2000, SMALL.degree)
    assert (index.graph[1500:, : SMALL.degree - SMALL.random_edges] >= 0).all()
    _, found = index.search(vectors[1500:], 1, ef=32)
    assert (found[:, 0] == ids).float().mean() >= 0.95  # each finds itself


def test_saved_and_loaded_it_answers_the_same(built, tmp_path):
    index, vectors = built
    path = tmp_path / "graph.safetensors"
    index.save(path)
    loaded = BinaryGraph.load(path, vectors=vectors, backend="torch")
    assert loaded.settings == index.settings
    queries = clustered(30, seed=3)
    assert torch.equal(loaded.search(queries, 5)[1], index.search(queries, 5)[1])
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable BinaryGraph"):
        BinaryGraph.load(path)
    with pytest.raises(ValueError, match="vectors are"):
        index.save(tmp_path / "again.safetensors")
        BinaryGraph.load(tmp_path / "again.safetensors", vectors=vectors[:10])


def test_bad_input_is_refused(built):
    index, _ = built
    with pytest.raises(ValueError, match=r"queries must be \[Q, 32\]"):
        index.search(torch.randn(3, 31), 5)
    with pytest.raises(ValueError, match="1 <= k <= ef"):
        index.search(torch.randn(3, 32), 10, ef=5)
    with pytest.raises(RuntimeError, match="empty"):
        BinaryGraph().search(torch.randn(1, 32), 1)
    with pytest.raises(ValueError, match="candidates >= degree"):
        GraphSettings(degree=32, candidates=16)
    with pytest.raises(ValueError, match="at least 2 vectors"):
        BinaryGraph().build(torch.randn(1, 8))
