"""The sharded head at world sizes 1, 2 and 3 (gloo, uneven shards and uneven local batches)
against the dense reference and against world size 1."""

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import megaclass
from megaclass import margins
from megaclass.distributed import shard_range
from tests.distributed.harness import run_ranks
from tests.reference import ALL_MARGINS, reference_loss

NUM_CLASSES, DIM, FEATURES = 1007, 16, 10
LOCAL_BATCHES = {1: [29], 2: [15, 14], 3: [11, 9, 9]}  # 29 rows in every case


def _global_problem():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(29, DIM, generator=g)
    y = torch.randint(0, NUM_CLASSES, (29,), generator=g)
    y[6] = -100
    w = torch.randn(NUM_CLASSES, DIM, generator=g)
    return x, y, w


def _local_rows(rank, world_size):
    sizes = LOCAL_BATCHES[world_size]
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _head_case(group):
    """Loss and gradients for every margin, chunked and unchunked."""
    rank, world_size = group.rank(), group.size()
    x, y, w = _global_problem()
    rows = _local_rows(rank, world_size)
    results = {}
    for index, margin in enumerate(ALL_MARGINS):
        for chunk_size in (None, 50):
            head = megaclass.ClassifierHead(
                NUM_CLASSES, DIM, margin=margin, process_group=group, chunk_size=chunk_size
            )
            start, stop = head.class_range
            with torch.no_grad():
                head.weight.copy_(w[start:stop])
            local_x = x[rows].clone().requires_grad_()
            loss = head(local_x, y[rows]).loss
            loss.backward()
            results[index, chunk_size] = (loss.detach(), local_x.grad, head.weight.grad)
    return results


def _ddp_case(group):
    """A DDP backbone under the sharded head: backbone gradients after DDP's averaging."""
    rank, world_size = group.rank(), group.size()
    g = torch.Generator().manual_seed(2)
    inputs = torch.randn(29, FEATURES, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (29,), generator=g)
    torch.manual_seed(0)
    backbone = DistributedDataParallel(nn.Linear(FEATURES, DIM), process_group=group)
    head = megaclass.ClassifierHead(
        NUM_CLASSES, DIM, margin=margins.ArcFace(scale=16.0), process_group=group
    )
    rows = _local_rows(rank, world_size)
    loss = head(backbone(inputs[rows]), labels[rows]).loss
    loss.backward()
    return loss.detach(), [p.grad for p in backbone.parameters()], head.weight.grad


def _bad_label_on_one_rank(group):
    rank = group.rank()
    head = megaclass.ClassifierHead(NUM_CLASSES, DIM, process_group=group)
    labels = torch.tensor([1, 2, NUM_CLASSES + 3 if rank == 1 else 3])
    try:
        head(torch.randn(3, DIM), labels)
    except ValueError as error:
        return str(error)
    return None


@pytest.fixture(scope="module")
def head_results():
    return {ws: run_ranks(ws, _head_case) for ws in (1, 2, 3)}


def _dense_reference(margin):
    x, y, w = _global_problem()
    x = x.double().requires_grad_()
    w = w.double().requires_grad_()
    loss = reference_loss(x, w, y, margin)
    loss.backward()
    return loss.detach(), x.grad, w.grad


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_sharded_loss_and_gradients_equal_dense_reference(head_results, world_size):
    per_rank = head_results[world_size]
    for (index, chunk_size), _ in per_rank[0].items():
        want_loss, want_gx, want_gw = _dense_reference(ALL_MARGINS[index])
        got = [rank_result[index, chunk_size] for rank_result in per_rank]
        label = f"{ALL_MARGINS[index]} chunk={chunk_size}"
        for loss, _, _ in got:
            assert _rel(loss, want_loss) <= 1e-5, label
        # Each rank gets world_size x d loss / d (its embeddings), for DDP's averaging.
        grad_x = torch.cat([gx for _, gx, _ in got]) / world_size
        assert _rel(grad_x, want_gx) <= 1e-5, label
        assert _rel(torch.cat([gw for _, _, gw in got]), want_gw) <= 1e-5, label


def test_world_size_3_equals_world_size_1(head_results):
    one, three = head_results[1][0], head_results[3]
    for key, (loss, gx, gw) in one.items():
        assert _rel(three[0][key][0], loss) <= 1e-6
        assert _rel(torch.cat([r[key][1] for r in three]) / 3, gx) <= 1e-5
        assert _rel(torch.cat([r[key][2] for r in three]), gw) <= 1e-5


def test_ddp_backbone_gradients_match_a_single_process():
    ((loss1, grads1, head1),) = run_ranks(1, _ddp_case)
    three = run_ranks(3, _ddp_case)
    for loss3, grads3, _ in three:
        assert _rel(loss3, loss1) <= 1e-6
        for a, b in zip(grads3, grads1, strict=True):
            assert _rel(a, b) <= 1e-5
    assert _rel(torch.cat([r[2] for r in three]), head1) <= 1e-5


def test_bad_label_on_one_rank_raises_on_every_rank():
    messages = run_ranks(3, _bad_label_on_one_rank)
    assert all(m is not None and f"label {NUM_CLASSES + 3}" in m for m in messages)
    assert all("rank 1" in m for m in messages)


def _topk_case(group):
    rank, world_size = group.rank(), group.size()
    x, _, w = _global_problem()
    head = megaclass.ClassifierHead(
        NUM_CLASSES, DIM, margin=margins.CosFace(), process_group=group, chunk_size=50
    )
    start, stop = head.class_range
    with torch.no_grad():
        head.weight.copy_(w[start:stop])
    return head.predict_topk(x[_local_rows(rank, world_size)], k=5)


def test_exact_top5_over_shards_equals_dense_top5():
    x, _, w = _global_problem()
    cos = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(w, dim=1).t()
    want = cos.topk(5, dim=1).indices
    for world_size in (1, 3):
        per_rank = run_ranks(world_size, _topk_case)
        assert torch.equal(torch.cat([ids for _, ids in per_rank]), want)


def _sampled_step(group, sampler, margin, warm_up=False):
    """Loss, embedding grad, dense weight grad, active global ids and the head (its sampler
    refreshed after the step), on one rank; ``warm_up``: a training forward pass and a refresh
    before (so that a sampler counting labels has counts)."""
    rank, world_size = group.rank(), group.size()
    x, y, w = _global_problem()
    head = megaclass.ClassifierHead(
        NUM_CLASSES, DIM, margin=margin, sampler=sampler, process_group=group, chunk_size=50
    )
    start, stop = head.class_range
    with torch.no_grad():
        head.weight.copy_(w[start:stop])
    head.refresh_sampler()
    local_x = x[_local_rows(rank, world_size)].clone().requires_grad_()
    if warm_up:
        head(local_x, y[_local_rows(rank, world_size)])
        head.refresh_sampler()
    out = head(local_x, y[_local_rows(rank, world_size)])
    out.loss.backward()
    head.refresh_sampler()
    grad = head.weight.grad.coalesce()
    return out, local_x.grad, grad.to_dense(), grad.indices()[0] + start, head


def _sampled_case(group, rate):
    sampler = megaclass.samplers.Random(rate)
    out, grad_x, grad_w, active, _ = _sampled_step(group, sampler, margins.ArcFace(scale=16.0))
    return out.loss.detach(), grad_x, grad_w, active, out.num_active


def test_random_rate_1_on_three_ranks_equals_the_dense_reference():
    want_loss, want_gx, want_gw = _dense_reference(margins.ArcFace(scale=16.0))
    per_rank = run_ranks(3, _sampled_case, 1.0)
    assert all(_rel(loss, want_loss) <= 1e-5 for loss, *_ in per_rank)
    assert _rel(torch.cat([r[1] for r in per_rank]) / 3, want_gx) <= 1e-5
    assert _rel(torch.cat([r[2] for r in per_rank]), want_gw) <= 1e-5


def test_random_sampling_on_three_ranks_keeps_every_label_active():
    _, y, _ = _global_problem()
    per_rank = run_ranks(3, _sampled_case, 0.05)
    active = torch.cat([r[3] for r in per_rank])
    assert set(y[y >= 0].tolist()) <= set(active.tolist())
    assert all(r[4] == len(active) for r in per_rank)


def _knn_case(group, budget, build="exact", frequent_share=0.0, k=5, walk_k=0, fill="uniform"):
    sampler = megaclass.samplers.KNN(
        k=k,
        budget=budget,
        build=build,
        nprobe=1000,
        random_share=0.25 if walk_k == 0 else 0.0,
        frequent_share=frequent_share,
        walk_k=walk_k,
        fill=fill,
    )
    out, grad_x, grad_w, active, head = _sampled_step(
        group, sampler, margins.CosFace(scale=16.0), warm_up=walk_k > 0
    )
    counts = frequent_ids = None
    if head.sampler.frequent is not None:
        counts = head.sampler.frequent.counts
        frequent_ids = head.sampler.frequent.rows + head.class_range[0]
    return out.loss.detach(), grad_x, grad_w, active, head.sampler.graph, counts, frequent_ids


def test_knn_on_three_ranks_counts_every_label_on_its_own_shard():
    _, y, _ = _global_problem()
    per_rank = run_ranks(3, _knn_case, 0.1, "exact", 0.5)
    counts = torch.cat([r[5] for r in per_rank])
    assert torch.equal(counts, torch.bincount(y[y >= 0], minlength=NUM_CLASSES))
    frequent = torch.cat([r[6] for r in per_rank])
    assert set(frequent.tolist()) == set(y[y >= 0].tolist())  # fewer labels than the share
    active = set(torch.cat([r[3] for r in per_rank]).tolist())
    assert set(frequent.tolist()) <= active


def test_knn_on_three_ranks_builds_the_exact_graph_and_equals_full_at_full_budget():
    _, y, w = _global_problem()
    cos = torch.nn.functional.normalize(w, dim=1) @ torch.nn.functional.normalize(w, dim=1).t()
    cos.fill_diagonal_(float("-inf"))
    per_rank = run_ranks(3, _knn_case, 1.0)
    assert torch.equal(torch.cat([r[4] for r in per_rank]), cos.topk(5, dim=1).indices)
    want_loss, want_gx, want_gw = _dense_reference(margins.CosFace(scale=16.0))
    assert all(_rel(r[0], want_loss) <= 1e-5 for r in per_rank)
    assert _rel(torch.cat([r[1] for r in per_rank]) / 3, want_gx) <= 1e-5
    assert _rel(torch.cat([r[2] for r in per_rank]), want_gw) <= 1e-5
    sampled = run_ranks(3, _knn_case, 0.05)
    assert set(y[y >= 0].tolist()) <= set(torch.cat([r[3] for r in sampled]).tolist())


def test_knn_frequency_fill_on_three_ranks_keeps_every_label_and_equals_full_at_full_budget():
    _, y, _ = _global_problem()
    per_rank = run_ranks(3, _knn_case, 1.0, "exact", 0.0, 5, 0, "frequency")
    want_loss, want_gx, want_gw = _dense_reference(margins.CosFace(scale=16.0))
    assert all(_rel(r[0], want_loss) <= 1e-5 for r in per_rank)
    assert _rel(torch.cat([r[1] for r in per_rank]) / 3, want_gx) <= 1e-5
    assert _rel(torch.cat([r[2] for r in per_rank]), want_gw) <= 1e-5
    sampled = run_ranks(3, _knn_case, 0.2, "exact", 0.0, 5, 0, "frequency")
    active = torch.cat([r[3] for r in sampled])
    assert set(y[y >= 0].tolist()) <= set(active.tolist())
    assert torch.equal(
        torch.cat([r[5] for r in sampled]), torch.bincount(y[y >= 0], minlength=NUM_CLASSES)
    )


def test_knn_walks_on_three_ranks_find_every_samples_best_classes_of_each_shard():
    x, _, w = _global_problem()
    per_rank = run_ranks(3, _knn_case, 0.5, "exact", 0.1, NUM_CLASSES - 1, 3)  # complete graph
    active = set(torch.cat([r[3] for r in per_rank]).tolist())
    cosines = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(w, dim=1).t()
    for start, stop in (shard_range(NUM_CLASSES, 3, rank) for rank in range(3)):
        best = cosines[:, start:stop].topk(3, dim=1).indices + start
        assert set(best.reshape(-1).tolist()) <= active


def test_ivf_graph_on_three_ranks_probing_every_list_is_the_exact_graph():
    _, _, w = _global_problem()
    cos = torch.nn.functional.normalize(w, dim=1) @ torch.nn.functional.normalize(w, dim=1).t()
    cos.fill_diagonal_(float("-inf"))
    for world_size in (2, 3):
        per_rank = run_ranks(world_size, _knn_case, 0.05, "ivf")
        graph = torch.cat([r[4] for r in per_rank]).long()
        assert torch.equal(graph, cos.topk(5, dim=1).indices)


def _ann_case(group, k, uniform=0.0, search="ivf"):
    sampler = megaclass.samplers.ANN(
        k=k, group_size=8, nprobe=1000, num_bits=64, uniform=uniform, search=search
    )
    out, grad_x, grad_w, active, _ = _sampled_step(group, sampler, margins.CosFace(scale=16.0))
    return out.loss.detach(), grad_x, grad_w, active, out.num_active


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize(
    "k, uniform, search",
    [(NUM_CLASSES, 0.0, "ivf"), (NUM_CLASSES, 0.0, "exact"), (3, 1.0, "ivf")],
    ids=["retrieved", "retrieved-exactly", "drawn"],
)
def test_ann_scoring_every_class_on_several_ranks_equals_the_dense_reference(
    world_size, k, uniform, search
):
    want_loss, want_gx, want_gw = _dense_reference(margins.CosFace(scale=16.0))
    per_rank = run_ranks(world_size, _ann_case, k, uniform, search)
    assert all(_rel(r[0], want_loss) <= 1e-5 for r in per_rank)
    assert _rel(torch.cat([r[1] for r in per_rank]) / world_size, want_gx) <= 1e-5
    assert _rel(torch.cat([r[2] for r in per_rank]), want_gw) <= 1e-5


def test_ann_on_three_ranks_retrieves_from_every_shard_and_keeps_every_label():
    _, y, _ = _global_problem()
    per_rank = run_ranks(3, _ann_case, 9)  # 3 classes per sample from each shard
    active = torch.cat([r[3] for r in per_rank])
    labels = set(y[y >= 0].tolist())
    assert labels <= set(active.tolist())
    assert all(r[4] == len(active) < NUM_CLASSES / 2 for r in per_rank)
    assert all(set(r[3].tolist()) - labels for r in per_rank)  # retrieved on every shard


LOOKUP_CLASSES = 11  # shards of 6/5 and 4/4/3 rows


def _lookup_ids(rank):
    """Rank r looks up rows of every shard, some twice; rank 2 looks up nothing."""
    return [torch.tensor([[0, 10], [5, 0], [7, 3]]), torch.tensor([[10, 4, 4]]), torch.tensor([])][
        rank
    ].long()


def _lookup_case(group):
    rank = group.rank() if group is not None else 0
    head = megaclass.ClassifierHead(LOOKUP_CLASSES, 4, process_group=group)
    ids = _lookup_ids(rank)
    rows = head.lookup(ids)
    (rows * (ids[..., None] + rank + 1)).sum().backward()  # a different weighting per rank
    return rows.detach(), head.weight.grad.to_dense(), head.class_range


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_lookup_of_rows_on_any_shard_equals_indexing_the_whole_table(world_size):
    results = [_lookup_case(None)] if world_size == 1 else run_ranks(world_size, _lookup_case)
    table = megaclass.ClassifierHead(LOOKUP_CLASSES, 4).weight.detach()  # seeded by class id
    expected_grad = torch.zeros_like(table)
    for rank in range(world_size):
        ids = _lookup_ids(rank)
        weighting = (ids[..., None] + rank + 1).expand(*ids.shape, 4).float()
        expected_grad.index_add_(0, ids.reshape(-1), weighting.reshape(-1, 4))
    for rank, (rows, grad, (start, stop)) in enumerate(results):
        assert torch.equal(rows, table[_lookup_ids(rank)])
        # divided by the world size: a DDP backbone's gradients arrive world_size times too big
        torch.testing.assert_close(grad, expected_grad[start:stop] / world_size)


def test_lookup_rejects_ids_outside_the_classes():
    head = megaclass.ClassifierHead(LOOKUP_CLASSES, 4)
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 11\), got \[0, 11\]"):
        head.lookup(torch.tensor([0, 11]))
