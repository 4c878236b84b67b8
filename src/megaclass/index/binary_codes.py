"""Binary codes of vectors, shared by ``BinaryIVF`` and ``BinaryGraph``.

A vector's code is the signs of a rotation of its normalised self, ``num_bits`` bits packed into
int64 words (``num_bits / 8`` bytes: 16 at 128 bits, against 512 for fp32 at dim 128). The
Hamming distance ``h`` between two codes estimates the angle between their vectors
(``pi h / num_bits``, sign random projections); a float query is better compared with the sign
bits directly (the asymmetric score, ``project`` and ``score_tables``). The rotation is random
orthogonal (blocks of them when there are more bits than dimensions) or learned to reduce the
quantization error (iterative quantization, ITQ: Gong and Lazebnik, 2011).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ROTATIONS = ("random", "itq")
WORD_BITS = 64
_ITQ_ITERATIONS = 30
_RERANK_ROWS = 1 << 15  # candidate rows gathered at once for the exact re-rank (16 MB fp32)
_M1, _M2, _M4 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F
_H01 = 0x0101010101010101


def check_code_settings(num_bits: int, rotation: str) -> None:
    if num_bits < WORD_BITS or num_bits % WORD_BITS:
        raise ValueError(f"num_bits must be a positive multiple of 64, got {num_bits}")
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {ROTATIONS}, got {rotation!r}")


def fit_rotation(
    sample: torch.Tensor, num_bits: int, kind: str, generator: torch.Generator
) -> torch.Tensor:
    """[D, num_bits] from normalised sample rows [n, D]: independent random orthogonal blocks of
    D columns (the last one cut to fit), each refined by ITQ for ``kind="itq"``. Orthogonal
    blocks measure far better than a Gaussian projection when there are more bits than
    dimensions (``benchmarks/results/index.md``). The random part depends on ``generator`` and
    D only."""
    dim = sample.shape[1]
    blocks = []
    for _ in range(-(-num_bits // dim)):
        block = torch.linalg.qr(torch.randn(dim, dim, generator=generator)).Q.to(sample.device)
        if kind == "itq":
            block = block @ _itq_rotation(sample @ block)
        blocks.append(block)
    return torch.cat(blocks, 1)[:, :num_bits]


def _itq_rotation(projected: torch.Tensor) -> torch.Tensor:
    """Orthogonal [b, b] R minimising ||sign(V R) - V R|| over the sample V [n, b] (ITQ:
    alternate the codes and an orthogonal Procrustes fit)."""
    rotation = torch.eye(projected.shape[1], device=projected.device)
    for _ in range(_ITQ_ITERATIONS):
        codes = torch.sign(projected @ rotation)
        u, _, vh = torch.linalg.svd(projected.t() @ codes)
        rotation = u @ vh
    return rotation


def encode(vectors: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Packed sign codes: vectors [n, D], rotation [D, b] -> int64 [n, b / 64]."""
    projected = F.normalize(vectors.float(), dim=1) @ rotation  # [n, b]
    return pack_bits(projected > 0)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """bits [n, b] bool (b a multiple of 64) -> int64 [n, b / 64]; bit j of word w is bit
    64 w + j (bit 63 is the sign bit: two's complement wraps)."""
    n, b = bits.shape
    powers = torch.ones(WORD_BITS, dtype=torch.int64, device=bits.device) << torch.arange(
        WORD_BITS, device=bits.device
    )
    return (bits.view(n, b // WORD_BITS, WORD_BITS).long() * powers).sum(2)


def unpack_signs(codes: torch.Tensor) -> torch.Tensor:
    """codes [n, W] int64 -> [n, 64 W] fp32 of +1 (bit set) and -1: the dot product of two rows
    is ``64 W - 2 h`` for Hamming distance h, exactly (integers below 2^24). A table lookup per
    byte (little-endian: bit j of word w is bit 64 w + j)."""
    code_bytes = codes.contiguous().view(torch.uint8).flatten().long()  # [n 8 W]
    return sign_table(codes.device).index_select(0, code_bytes).view(len(codes), -1)


def sign_table(device: torch.device | str = "cpu") -> torch.Tensor:
    """[256, 8] fp32: row v holds the signs (+1 set, -1 clear) of byte v's bits 0..7."""
    device = torch.device(device)
    table = _SIGNS_OF_BYTE.get(device)
    if table is None:
        bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1  # [256, 8]
        table = _SIGNS_OF_BYTE[device] = (bits * 2 - 1).float().to(device)
    return table


_SIGNS_OF_BYTE: dict[torch.device, torch.Tensor] = {}


def project(queries: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """The float side of the asymmetric distance: queries [q, D] -> normalised and rotated
    [q, b] fp32. A code's asymmetric score ``project(q) . signs(code)`` ranks vectors far better
    than the Hamming distance between the query's own code and theirs (the query keeps its
    magnitudes: ``benchmarks/results/index.md``)."""
    return F.normalize(queries.float(), dim=1) @ rotation


def score_tables(projected: torch.Tensor) -> torch.Tensor:
    """projected [q, b] -> [q, b / 8, 256]: entry (i, v) is the score of byte i of a code equal
    to v, so that a code's asymmetric score is the sum of one entry per byte."""
    q, bits = projected.shape
    return projected.view(q, bits // 8, 8) @ sign_table(projected.device).t()


def asymmetric_scores(tables: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Asymmetric scores of codes [q, c, W] int64 against the queries of ``score_tables``
    [q, B, 256]: -> [q, c] fp32 (one table entry per code byte, summed)."""
    q, c = codes.shape[:2]
    code_bytes = codes.contiguous().view(torch.uint8).view(q, c, -1).long()  # [q, c, B]
    entries = code_bytes + torch.arange(code_bytes.shape[2], device=codes.device) * 256
    return tables.flatten(1).gather(1, entries.view(q, -1)).view(q, c, -1).sum(2)


def asymmetric_cosine(scores: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
    """The cosine estimated from asymmetric scores [q, c] of projected queries [q, b]: for
    Gaussian-like coordinates ``E[p . sign(x R)] = sqrt(2 / pi) |p| sqrt(b) cos``."""
    bits = projected.shape[1]
    scale = math.sqrt(math.pi / 2) / (projected.norm(dim=1, keepdim=True) * math.sqrt(bits))
    return (scores * scale).clamp(-1, 1)


def hamming(codes: torch.Tensor, query_codes: torch.Tensor) -> torch.Tensor:
    """Hamming distances of codes [..., m, W] to query_codes [..., W] (broadcast over the leading
    dims): -> int64 [..., m]."""
    return popcount_(codes ^ query_codes.unsqueeze(-2)).sum(-1)


def popcount(words: torch.Tensor) -> torch.Tensor:
    """Set bits of each int64: [...] -> [...] int64."""
    return popcount_(words.clone())


def popcount_(words: torch.Tensor) -> torch.Tensor:
    """``popcount`` in place, bit-parallel (SWAR; the masks clear what arithmetic shifts drag
    in), with one temporary."""
    shifted = words >> 1
    words -= shifted.bitwise_and_(_M1)
    torch.bitwise_right_shift(words, 2, out=shifted).bitwise_and_(_M2)
    words.bitwise_and_(_M2).add_(shifted)
    torch.bitwise_right_shift(words, 4, out=shifted)
    words.add_(shifted).bitwise_and_(_M4).mul_(_H01)
    return words.bitwise_right_shift_(56)


def angle_scores(distances: torch.Tensor, num_bits: int) -> torch.Tensor:
    """The cosine estimated from Hamming distances: ``cos(pi h / num_bits)`` (fp32)."""
    return torch.cos(distances.float() * (math.pi / num_bits))


def exact_rerank(
    vectors: torch.Tensor, queries: torch.Tensor, candidates: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-rank candidates [q, c] (-1 padded) of ``vectors`` [N, D] by exact cosine to queries
    [q, D]: -> (cosines [q, k'], rows [q, k']), best first, k' = min(k, c), -inf / -1 where
    fewer candidates.

    The candidates' rows are gathered a block of queries at a time (``_RERANK_ROWS`` rows), so
    that no [q, c, D] copy is formed: at 10^6 classes, 1,024 queries and c = 1,000 that was
    0.5 GB. ``vectors`` may be memory-mapped: only the candidates' rows are read.
    """
    unit_queries = F.normalize(queries.float(), dim=1)  # [q, D]
    cosines = torch.empty(candidates.shape, device=queries.device)  # [q, c]
    per_block = max(1, _RERANK_ROWS // max(1, candidates.shape[1]))
    for start in range(0, len(queries), per_block):
        block = slice(start, start + per_block)
        ids = candidates[block].clamp_min(0)  # [b, c]
        rows = vectors.index_select(0, ids.flatten()).view(*ids.shape, -1).float()
        dots = torch.bmm(rows, unit_queries[block, :, None]).squeeze(2)  # [b, c]
        cosines[block] = dots / rows.norm(dim=2).clamp_min(1e-12)
    cosines[candidates < 0] = float("-inf")
    best, picked = cosines.topk(min(k, cosines.shape[1]), dim=1)
    return best, torch.where(best == float("-inf"), -1, candidates.gather(1, picked))
