"""KNN softmax: the exact blocked graph against brute force, the sampler against Full."""

import logging
import math

import pytest
import torch
import torch.nn.functional as F

import megaclass
import megaclass.logs
from megaclass import margins, samplers
from megaclass.index import build_ivf_knn_graph, build_knn_graph, spherical_kmeans
from megaclass.samplers.frequent import FrequentClasses
from megaclass.samplers.walk import walk_graph

NUM_CLASSES, DIM = 1007, 16


def brute_force_graph(weight, k):
    cos = F.normalize(weight, dim=1) @ F.normalize(weight, dim=1).t()
    cos.fill_diagonal_(float("-inf"))
    return cos.topk(k, dim=1).indices


def test_exact_blocked_graph_equals_brute_force():
    weight = torch.randn(NUM_CLASSES, DIM, generator=torch.Generator().manual_seed(0))
    graph = build_knn_graph(weight, NUM_CLASSES, 7, None, chunk_size=100)
    assert torch.equal(graph, brute_force_graph(weight, 7))


def test_graph_of_fewer_classes_than_k_pads_with_minus_one():
    graph = build_knn_graph(torch.randn(3, 4), 3, 5, None)
    assert (graph[:, 2:] == -1).all() and (graph[:, :2] >= 0).all()
    assert not (graph == torch.arange(3)[:, None]).any()


def test_ivf_graph_probing_every_list_equals_brute_force():
    weight = torch.randn(NUM_CLASSES, DIM, generator=torch.Generator().manual_seed(3))
    graph = build_ivf_knn_graph(weight, NUM_CLASSES, 6, None, nprobe=10, num_lists=10)
    assert graph.dtype == torch.int32
    assert torch.equal(graph.long(), brute_force_graph(weight, 6))


def test_ivf_graph_finds_nearly_all_neighbours_of_clustered_classes():
    g = torch.Generator().manual_seed(4)
    centres = torch.randn(64, DIM, generator=g).repeat_interleave(20, dim=0)
    weight = centres + 0.3 * torch.randn(len(centres), DIM, generator=g)
    graph = build_ivf_knn_graph(weight, len(weight), 5, None, nprobe=2)
    exact = brute_force_graph(weight, 5)
    recall = (graph.long()[:, :, None] == exact[:, None, :]).any(2).float().mean()
    assert recall >= 0.95


def test_binary_graph_build_finds_most_neighbours_of_clustered_classes():
    g = torch.Generator().manual_seed(4)
    centres = torch.randn(64, DIM, generator=g).repeat_interleave(20, dim=0)
    weight = centres + 0.3 * torch.randn(len(centres), DIM, generator=g)
    knn = samplers.KNN(k=5, build="binary_graph")
    head = megaclass.ClassifierHead(len(weight), DIM, sampler=knn)
    with torch.no_grad():
        head.weight.copy_(weight)
    head.refresh_sampler()
    graph = knn.graph
    assert graph.shape == (len(weight), 5) and graph.dtype == torch.int32
    exact = brute_force_graph(weight, 5)
    recall = (graph.long()[:, :, None] == exact[:, None, :]).any(2).float().mean()
    assert recall >= 0.8  # the pruned near links: not all of the nearest (0.53 by Hamming)


def test_spherical_kmeans_gives_unit_centroids_closer_to_the_points_than_its_start():
    g = torch.Generator().manual_seed(5)
    points = F.normalize(torch.randn(8, DIM, generator=g).repeat_interleave(50, dim=0), dim=1)
    points = F.normalize(points + 0.2 * torch.randn(400, DIM, generator=g), dim=1)

    def fit(iterations):
        centroids = spherical_kmeans(points, 16, torch.Generator().manual_seed(0), iterations)
        return centroids, float((points @ centroids.t()).max(1).values.mean())

    centroids, fitted = fit(10)
    _, start = fit(0)
    assert torch.allclose(centroids.norm(dim=1), torch.ones(16))
    assert fitted > start + 0.1 and fitted > 0.75  # noise caps the cosine near 0.8


def test_knn_chooses_the_exact_build_up_to_its_threshold():
    knn = samplers.KNN()
    assert not knn.uses_ivf(knn.EXACT_UP_TO) and knn.uses_ivf(knn.EXACT_UP_TO + 1)
    assert samplers.KNN(build="ivf").uses_ivf(10)
    assert not samplers.KNN(build="exact").uses_ivf(10**8)


def _head(sampler, weight):
    head = megaclass.ClassifierHead(
        NUM_CLASSES, DIM, margin=margins.ArcFace(scale=16.0), sampler=sampler, chunk_size=100
    )
    with torch.no_grad():
        head.weight.copy_(weight)
    head.refresh_sampler()
    return head


@pytest.mark.parametrize("fill", ["uniform", "frequency"])
def test_knn_with_a_budget_of_all_classes_equals_full(fill):
    g = torch.Generator().manual_seed(1)
    weight, x = torch.randn(NUM_CLASSES, DIM, generator=g), torch.randn(29, DIM, generator=g)
    y = torch.randint(0, NUM_CLASSES, (29,), generator=g)
    results = []
    for sampler in (samplers.Full(), samplers.KNN(k=4, budget=1.0, fill=fill)):
        head, xx = _head(sampler, weight), x.clone().requires_grad_()
        for _ in range(2):  # the second step of a frequency fill draws by the counts
            head.weight.grad = None
            xx.grad = None
            out = head(xx, y)
            out.loss.backward()
            head.refresh_sampler()
        grad = head.weight.grad
        results.append((out.loss, xx.grad, grad.to_dense() if grad.is_sparse else grad))
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_active_set_is_labels_then_budget_more_nearest_neighbours():
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(NUM_CLASSES, DIM, generator=g)
    labels = torch.tensor([5, 9, 400])
    head = _head(samplers.KNN(k=3, budget=6, random_share=0.0, fill="uniform"), weight)
    head(torch.randn(3, DIM, generator=g), labels).loss.backward()
    active = set(head.weight.grad.coalesce().indices()[0].tolist())
    graph = brute_force_graph(weight, 3)
    assert len(active) == 9
    assert active == set(labels.tolist()) | set(graph[labels, :2].reshape(-1).tolist())


@pytest.mark.parametrize("correction", [True, False])
def test_a_share_of_the_budget_is_drawn_uniformly_with_corrected_logits(correction):
    knn = samplers.KNN(
        k=3, budget=6, random_share=1 / 2, logit_correction=correction, fill="uniform"
    )
    positives = torch.tensor([5, 9, 400, 5])
    neighbours = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 10]])  # global ids, nearest first
    chosen = torch.tensor([1, 4, 5, 7, 9, 400])  # labels, then first neighbours: 3 + 6 - 3
    selection = knn.choose(positives, neighbours, 0, NUM_CLASSES, 6, torch.Generator())
    assert len(selection.rows) == 9 and torch.isin(chosen, selection.rows).all()
    if not correction:
        assert selection.logit_offsets is None
        return
    drawn = ~torch.isin(selection.rows, chosen)
    assert int(drawn.sum()) == 3
    assert torch.allclose(selection.logit_offsets[drawn], torch.tensor(math.log((1007 - 6) / 3)))
    assert not selection.logit_offsets[~drawn].any()


def test_frequent_classes_come_after_the_labels_and_before_the_neighbours():
    knn = samplers.KNN(k=3, budget=6, random_share=0.0, frequent_share=0.5, fill="uniform")
    positives = torch.tensor([5, 9, 400, 5])
    neighbours = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 10]])  # global ids, nearest first
    frequent = torch.tensor([9, 30, 31, 32])  # a label among them counts once
    selection = knn.choose(positives, neighbours, 0, NUM_CLASSES, 6, torch.Generator(), frequent)
    assert selection.rows.tolist() == [1, 4, 5, 7, 9, 30, 31, 32, 400]


def test_walked_classes_come_after_the_frequent_ones_best_first_over_samples():
    knn = samplers.KNN(k=3, random_share=0.0, frequent_share=0.2, walk_k=2, fill="uniform")
    positives, frequent = torch.tensor([5]), torch.tensor([30])
    neighbours = torch.tensor([[1, 2, 3]])
    walked = torch.tensor([[40, 41], [50, -1], [40, 60]])  # 3 samples, best first
    ranked = [5, 30, 40, 50, 41, 60, 1, 2, 3]  # labels, frequent, walked (1sts, 2nds), graph
    for budget in (3, 7):  # besides the one label
        rows = knn.choose(
            positives, neighbours, 0, NUM_CLASSES, budget, torch.Generator(), frequent, walked
        ).rows
        assert rows.tolist() == sorted(ranked[: 1 + budget])


def test_walk_of_a_complete_graph_finds_every_samples_best_classes():
    g = torch.Generator().manual_seed(4)
    weight, queries = torch.randn(60, DIM, generator=g), torch.randn(7, DIM, generator=g)
    graph = brute_force_graph(weight, 59)  # every class neighbours every other
    labels = torch.tensor([3, -1, 8, 8, -1, 0, 59])
    walked = walk_graph(queries, labels, torch.tensor([10, 20]), weight, graph, 0, 5)
    cosines = F.normalize(queries, dim=1) @ F.normalize(weight, dim=1).t()
    assert torch.equal(walked, cosines.topk(5, dim=1).indices)


def test_walk_of_a_shard_stays_on_it_and_keeps_distinct_classes():
    g = torch.Generator().manual_seed(5)
    weight, queries = torch.randn(200, DIM, generator=g), torch.randn(9, DIM, generator=g)
    graph = brute_force_graph(weight, 8)  # global ids; the shard holds classes [100, 200)
    walked = walk_graph(
        queries,
        torch.full((9,), -1),
        torch.tensor([0, 7, 50]),
        weight[100:],
        graph[100:],
        100,
        12,
    )
    assert walked.shape == (9, 12)
    for row in walked:
        found = row[row >= 0]
        assert found.max() < 100 and len(found.unique()) == len(found) >= 4


def test_frequent_classes_are_the_most_counted_training_labels():
    frequent = FrequentClasses(10)
    frequent.count(torch.tensor([3, 3, 3, 7, 7, 1]))
    frequent.refresh(5)  # only classes seen at least once
    assert frequent.rows.tolist() == [1, 3, 7]
    frequent.count(torch.tensor([1, 1, 1, 1]))
    frequent.refresh(2)
    assert frequent.rows.tolist() == [1, 3]
    restored = FrequentClasses(10)
    restored.load_state(frequent.state())
    assert torch.equal(restored.counts, frequent.counts)
    assert torch.equal(restored.rows, frequent.rows)


def test_head_counts_training_labels_and_scores_the_most_frequent_classes():
    knn = samplers.KNN(
        k=2, budget=100, random_share=0.25, frequent_share=0.5, refresh_every=50, fill="uniform"
    )
    head = _head(knn, torch.randn(NUM_CLASSES, DIM))
    g = torch.Generator().manual_seed(3)
    common = torch.arange(50, 100)  # every batch: 50 classes far more frequent than the rest
    labels = []
    for _ in range(4):
        y = torch.cat([common, torch.randint(0, NUM_CLASSES, (8,), generator=g)])
        head(torch.randn(len(y), DIM, generator=g), y).loss.backward()
        head.refresh_sampler()
        labels.append(y)
    seen = torch.bincount(torch.cat(labels), minlength=NUM_CLASSES)
    assert torch.equal(head.sampler.frequent.counts, seen)
    assert set(common.tolist()) <= set(head.sampler.frequent.rows.tolist())
    head.weight.grad = None
    y = torch.tensor([3, 4])  # frequent classes are scored even when the batch lacks them
    head(torch.randn(2, DIM, generator=g), y).loss.backward()
    head.refresh_sampler()
    active = set(head.weight.grad.coalesce().indices()[0].tolist())
    assert set(common.tolist()) | {3, 4} <= active
    with torch.no_grad():
        head(torch.randn(2, DIM, generator=g), y)  # evaluation counts nothing
    head.refresh_sampler()
    assert int(head.sampler.frequent.counts.sum()) == len(torch.cat(labels)) + 2


def test_head_scores_every_samples_best_classes_found_by_a_walk():
    g = torch.Generator().manual_seed(6)
    weight = torch.randn(NUM_CLASSES, DIM, generator=g)
    knn = samplers.KNN(
        k=NUM_CLASSES - 1, budget=300, random_share=0.0, frequent_share=0.1, walk_k=4
    )
    head = _head(knn, weight)  # a complete graph: the walks find the exact best classes
    x, y = torch.randn(16, DIM, generator=g), torch.randint(0, NUM_CLASSES, (16,), generator=g)
    head(x, y)  # a first training step: its labels' counts give the walks their entries
    head.refresh_sampler()
    head(x, y).loss.backward()
    active = set(head.weight.grad.coalesce().indices()[0].tolist())
    cosines = F.normalize(x, dim=1) @ F.normalize(weight, dim=1).t()
    assert set(cosines.topk(4, dim=1).indices.reshape(-1).tolist()) <= active


def test_the_budget_is_filled_with_random_classes_besides_the_labels():
    head = _head(samplers.KNN(k=2, budget=0.1, fill="uniform"), torch.randn(NUM_CLASSES, DIM))
    labels = torch.randint(0, NUM_CLASSES, (64,))
    out = head(torch.randn(64, DIM), labels)
    out.loss.backward()
    active = head.weight.grad.coalesce().indices()[0]
    assert out.num_active == len(active) == 101 + labels.unique().numel()
    assert set(labels.tolist()) <= set(active.tolist())


def test_graph_is_rebuilt_every_refresh_steps():
    head = _head(
        samplers.KNN(k=3, budget=0.05, refresh_every=2, fill="uniform"),
        torch.randn(NUM_CLASSES, DIM),
    )
    x, y = torch.randn(8, DIM), torch.randint(0, NUM_CLASSES, (8,))
    first = head.sampler.graph  # built by the first refresh
    with torch.no_grad():
        head.weight.normal_()
    head(x, y)
    head.refresh_sampler()
    assert head.sampler.graph is first  # within refresh_every
    head(x, y)
    head.refresh_sampler()
    assert not torch.equal(head.sampler.graph, first)
    assert torch.equal(head.sampler.graph, brute_force_graph(head.weight.detach(), 3))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"k": 0},
        {"budget": 0},
        {"refresh_every": 0},
        {"build": "hnsw"},
        {"nprobe": 0},
        {"random_share": 1.5},
        {"frequent_share": -0.1},
        {"frequent_share": 0.8, "random_share": 0.25},
        {"walk_k": 4},
        {"walk_k": -1, "frequent_share": 0.5},
    ],
    ids=str,
)
def test_bad_knn_settings_raise(kwargs):
    with pytest.raises(ValueError):
        samplers.KNN(**kwargs)


def test_budget_is_split_in_proportion_to_shards():
    knn = samplers.KNN(budget=0.1)
    assert knn.local_budget(1007, 336) == 34 and knn.local_budget(1007, 335) == 34
    assert samplers.KNN(budget=500).local_budget(1000, 500) == 250


def _progress_records(caplog):
    return [r for r in caplog.records if r.name == "megaclass.index"]


@pytest.mark.parametrize("build", [build_knn_graph, build_ivf_knn_graph], ids=["exact", "ivf"])
def test_a_graph_build_logs_its_progress(build, caplog, monkeypatch):
    monkeypatch.setattr(megaclass.logs, "PROGRESS_INTERVAL_S", 0.0)  # every block
    weight = torch.randn(20_000, 8, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.INFO, logger="megaclass"):
        build(weight, len(weight), 4, None)
    messages = [r.getMessage() for r in _progress_records(caplog)]
    assert len(messages) >= 3 and all(r.levelno == logging.INFO for r in caplog.records)
    assert all(m.startswith("class graph: ") and " of 20,000 classes (" in m for m in messages)
    assert messages[-1] == "class graph: 20,000 of 20,000 classes (100%)"


def test_a_fast_graph_build_logs_nothing(caplog):
    weight = torch.randn(NUM_CLASSES, DIM, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.INFO, logger="megaclass"):
        build_knn_graph(weight, NUM_CLASSES, 4, None)
    assert _progress_records(caplog) == []


def test_progress_records_are_throttled_in_time(caplog, monkeypatch):
    clock = iter([0.0, 1.0, 4.9, 5.0, 6.0, 10.5])
    monkeypatch.setattr(megaclass.logs.time, "monotonic", lambda: next(clock))
    logger = logging.getLogger("megaclass.test")
    with caplog.at_level(logging.INFO, logger="megaclass"):
        progress = megaclass.logs.ProgressLog(logger, "work", 1000, unit="rows")
        for done in (100, 200, 300, 400, 500):  # at 1.0, 4.9, 5.0, 6.0, 10.5 s
            progress.update(done)
        progress.finish()
    assert [r.getMessage() for r in caplog.records] == [
        "work: 300 of 1,000 rows (30%)",
        "work: 500 of 1,000 rows (50%)",
        "work: 1,000 of 1,000 rows (100%)",
    ]
