"""Where a sampled softmax's negatives fall under a trained model's full softmax.
Usage: negative_mass.py RUN... [--batches N] [--warm-up W] [--set head.knn.KEY=VALUE ...]

For each single-rank run folder, its trained model (newest checkpoint) scores every class for N
training batches (the run's own batch size and order). Each of the samplers ``knn`` and
``random``, with the run config's settings (``--set`` overrides them, as ``megaclass train``
does), is asked for the classes of each batch: the classes it scores outright and those it draws
from the rest (knn counting labels, for a frequent share or a frequency fill, over W batches
first). Per sample, with p the full softmax (the run's logits, without a margin) and Z its
partition function, it prints the means of:
- ``labels``, ``chosen``: the share of the negatives' probability (1 - p of the label) on the
  batch's other labels and on the classes the sampler adds outright;
- ``rest``: the share on the classes left to the uniform draw;
- ``rel. s.e.``: the relative standard error of the sampled softmax's estimate of Z, which is
  exact over the outright classes and (n / d) x the sum over d classes drawn without
  replacement from the n others (s.e. = n sqrt((1 - d / n) var / d), var the variance of
  exp(logit) over the n, as a share of Z; summed in variance over the strata of a frequency
  fill).
The sampled loss is log of the estimate, so the error in the estimate is the error in the loss
(``benchmarks/results/seqrec.md``, "Why knn trailed on Sports").
"""

import argparse
from pathlib import Path

import torch

from megaclass.train.loop import build_head, load_trained
from megaclass.train.tasks import prediction_rows


def _trained(run: Path, overrides: list[str]):
    model, _ = load_trained(run, overrides)
    model.backbone.eval()
    return model.config, model


def _head_with(config, model, sampler_name: str, warm_up: int):
    """A head over the trained rows with the run config's ``sampler_name`` settings; a sampler
    that counts labels (knn's frequent share, frequency fill) first sees ``warm_up`` batches."""
    sampler = getattr(config.head, sampler_name)
    head = build_head(config, model.dataset.num_classes, None, model.head.weight.device, sampler)
    head.weight.data.copy_(model.head.weight.data)
    head.refresh_sampler()
    counts = getattr(sampler, "counts_labels", lambda: False)()
    for step in range(warm_up if counts else 0):
        embeddings, labels = _batch(model, config, step)
        sampler.select(labels, embeddings, head.weight, training=True)
        head.refresh_sampler()
    return head


def _batch(model, config, step: int):
    """Training batch ``step`` as the head takes it: embeddings [n, D], labels [n]."""
    inputs, labels = model.dataset.train_batch(step, config.train.batch_size)
    return prediction_rows(model.backbone(inputs), labels)


def _shares(logits, labels, outright, drawn, strata):
    """logits [n, C] of the full softmax, labels [n], outright [C] bool (the batch's labels and
    the sampler's chosen classes), drawn [C] bool (the classes drawn from the others), strata
    [C] int64 (the buckets the draw was stratified by; all 0 for a uniform draw) ->
    (share of negative mass outright [n], share left to the draw [n], rel. s.e. of Z [n])."""
    weights = (logits - logits.max(dim=1, keepdim=True).values).exp()  # [n, C]
    total = weights.sum(dim=1)
    label_weight = weights.gather(1, labels[:, None]).squeeze(1)
    negative = total - label_weight
    outright_mass = weights[:, outright].sum(dim=1) - label_weight  # the label is outright too
    variance = torch.zeros_like(total)
    for stratum in strata[~outright].unique().tolist():
        members = ~outright & (strata == stratum)
        u, d = int(members.sum()), int((drawn & members).sum())
        if d > 0 and u > 1:  # (a stratum with nothing drawn: _split gives it no weight)
            variance += u * u * (1 - d / u) * weights[:, members].var(dim=1) / d
    rest = weights[:, ~outright].sum(dim=1)
    return outright_mass / negative, rest / negative, variance.sqrt() / total


@torch.no_grad()
def measure(run: Path, batches: int, warm_up: int, overrides: list[str]) -> None:
    config, model = _trained(run, overrides)
    heads = {name: _head_with(config, model, name, warm_up) for name in ("knn", "random")}
    label_share, sums = [], {name: [[], [], []] for name in heads}
    num_classes = model.dataset.num_classes
    no_strata = torch.zeros(num_classes, dtype=torch.int64)  # a uniform draw: one stratum
    for step in range(warm_up, warm_up + batches):  # batches the samplers have not counted
        embeddings, labels = _batch(model, config, step)
        logits = _cosines_or_dots(model.head, embeddings) * model.head.margin.scale
        batch_labels = torch.zeros(num_classes, dtype=torch.bool)
        batch_labels[labels] = True
        label_share.append(_shares(logits, labels, batch_labels, batch_labels, no_strata)[0])
        for name, head in heads.items():
            selection = head.sampler.select(labels, embeddings, head.weight, training=False)
            offsets = selection.logit_offsets
            is_drawn = (
                torch.zeros_like(selection.rows, dtype=torch.bool)
                if offsets is None
                else offsets != 0
            )
            outright, drawn = batch_labels.clone(), torch.zeros_like(batch_labels)
            outright[selection.rows[~is_drawn]] = True
            drawn[selection.rows[is_drawn]] = True
            frequent = getattr(head.sampler, "frequent", None)
            strata = (
                no_strata if frequent is None or frequent.strata is None else frequent.strata.bucket
            )
            for part, value in zip(
                sums[name], _shares(logits, labels, outright, drawn, strata), strict=True
            ):
                part.append(value)
    labels_mean = torch.cat(label_share).mean()
    print(f"{run} ({batches} batches, {sum(len(s) for s in label_share):,} samples):")
    for name, (outright, rest, error) in sums.items():
        outright, rest, error = torch.cat(outright), torch.cat(rest), torch.cat(error)
        print(
            f"  {name:>6}: labels {labels_mean:.3f}, chosen {outright.mean() - labels_mean:.3f}"
            f", rest {rest.mean():.3f}, rel. s.e. of Z {error.mean():.3f}"
        )


def _cosines_or_dots(head, embeddings: torch.Tensor) -> torch.Tensor:
    """[n, D] -> [n, C], the head's logits before scale and margin."""
    rows = head.weight.float()
    if head.margin.normalize:
        rows = torch.nn.functional.normalize(rows, dim=1)
        embeddings = torch.nn.functional.normalize(embeddings, dim=1)
    return embeddings.float() @ rows.t()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warm-up", type=int, default=200)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    for folder in args.runs:
        measure(folder, args.batches, args.warm_up, args.overrides)
