"""Cross-modal retrieval: embedding ranking, and re-ranking by the matching head.

Every direction among text, image and audio (and the paired queries
text+audio -> image, image+audio -> text) is scored by two protocols, side
by side:

* ``embedding``: cosine similarity of the towers' pooled embeddings (the
  contrastive task's projections; for a paired query, the sum of both
  modalities' similarities), for every candidate;
* ``rerank``: the ``rerank`` best candidates by embedding are re-scored by
  ``logit_scale x similarity + log P("matched")`` of the matching head on the
  cross-modal encoding of (query, candidate), the unused modality left out as
  the head saw in training: the contrastive model's and the head's evidence
  together (their log-probabilities add), never the head alone, which
  throws the similarity away. The rest keep their embedding order below.

A candidate is correct when it shows the query's image (image on either
side), otherwise when it is the query's own narrative.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from opt_scale.data.masking import MATCHED
from opt_scale.tasks.config import MATCHING_CLASSES
from opt_scale.tasks.pretrainer import OPTPretrainer

MODALITIES = ("text", "image", "audio")
DIRECTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "text->image": (("text",), "image"), "image->text": (("image",), "text"),
    "text->audio": (("text",), "audio"), "audio->text": (("audio",), "text"),
    "image->audio": (("image",), "audio"), "audio->image": (("audio",), "image"),
    "text+audio->image": (("text", "audio"), "image"), "image+audio->text": (("image", "audio"), "text"),
}


@dataclass
class EncodedSet:
    """Per-sample tower outputs (CPU) and pooled embeddings of an eval set."""
    keys: list[str] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)           # modality -> [N, dim]
    towers: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)


@torch.no_grad()
def encode_set(net: OPTPretrainer, batches, device) -> EncodedSet:
    out = EncodedSet(towers={m: [] for m in MODALITIES})
    embs = {m: [] for m in MODALITIES}
    for b in batches:
        towers = net.model.encode_towers(b.text_ids.to(device), b.text_len.to(device), b.pixels.to(device),
                                         b.mel.to(device), b.mel_len.to(device))
        for m, (tokens, valid) in zip(MODALITIES, towers):
            embs[m].append(net.contrastive.embed(m, tokens, valid).cpu())
            for i in range(len(tokens)):
                n = int(valid[i].sum())
                out.towers[m].append((tokens[i, :n].half().cpu(), valid[i, :n].cpu()))
        out.keys += b.keys
        out.image_ids += b.image_ids
    # A rank may hold no sample (fewer samples than ranks): an empty share, not an error.
    dim = net.contrastive.cfg.dim
    out.embeddings = {m: torch.cat(v) if v else torch.zeros(0, dim) for m, v in embs.items()}
    return out


def gather_sets(local: EncodedSet) -> EncodedSet:
    """Every rank's share (of :func:`iter_eval_batches`' split), back in
    sample order: the same set one process encodes (a collective)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return local
    from opt_scale.engine.distributed import all_gather_objects

    from .data import interleave_shares
    parts = all_gather_objects(local)
    out = EncodedSet(keys=interleave_shares([p.keys for p in parts]),
                     image_ids=interleave_shares([p.image_ids for p in parts]),
                     towers={m: interleave_shares([p.towers[m] for p in parts]) for m in MODALITIES})
    out.embeddings = {m: torch.stack(interleave_shares([list(p.embeddings[m]) for p in parts]))
                      for m in MODALITIES}
    return out


def correct_matrix(data: EncodedSet, query_mods: tuple[str, ...], target: str) -> torch.Tensor:
    """[N, N] bool: is candidate c a right answer for query q."""
    if "image" in query_mods or target == "image":
        ids = data.image_ids
    else:
        ids = data.keys
    codes = {v: i for i, v in enumerate(dict.fromkeys(ids))}
    t = torch.tensor([codes[v] for v in ids])
    return t[:, None] == t[None, :]


def recall_at_k(scores: torch.Tensor, correct: torch.Tensor, ks=(1, 5, 10)) -> dict[int, float]:
    """Share of queries with a correct candidate among their ``k`` best."""
    order = scores.argsort(dim=1, descending=True)
    hits = correct.gather(1, order)
    never = torch.full((len(hits),), hits.shape[1] + 1)
    first = torch.where(hits.any(1), hits.float().argmax(1), never)
    return {k: float((first < k).float().mean()) for k in ks}


def pad_stack(items: list[tuple[torch.Tensor, torch.Tensor]], device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(1, max(t.shape[0] for t, _ in items))
    D = items[0][0].shape[1]
    tokens = torch.zeros(len(items), L, D, dtype=dtype, device=device)
    valid = torch.zeros(len(items), L, dtype=torch.bool, device=device)
    for i, (t, v) in enumerate(items):
        tokens[i, : t.shape[0]] = t.to(device, dtype)
        valid[i, : v.shape[0]] = v.to(device)
    return tokens, valid


@torch.no_grad()
def triplet_logits(net: OPTPretrainer, data: EncodedSet, triples: list[tuple[int, int, int]],
                   shown: tuple[str, ...], device, batch_size: int = 64, rank: int = 0,
                   world_size: int = 1) -> torch.Tensor:
    """Matching-head logits [n, 5] of (text of t, image of i, audio of a) for
    each (t, i, a) in ``triples``, only the ``shown`` modalities kept.

    With ``world_size`` > 1 (a collective: every rank passes the same
    triples) each rank scores every world_size-th triple and all get the
    whole result, so no rank does the others' work while they wait."""
    if world_size > 1:
        from opt_scale.engine.distributed import all_gather_objects
        parts = all_gather_objects(triplet_logits(net, data, triples[rank::world_size], shown, device, batch_size))
        out = torch.zeros(len(triples), len(MATCHING_CLASSES))
        for r, part in enumerate(parts):
            out[r::world_size] = part
        return out
    from opt_scale.tasks.heads import pair_cosines
    from opt_scale.tasks.pretrainer import shown_pairs
    dtype = next(net.parameters()).dtype
    keep_row = torch.tensor([m in shown for m in MODALITIES], device=device)
    logits = []
    for start in range(0, len(triples), batch_size):
        chunk = triples[start:start + batch_size]
        towers = [pad_stack([data.towers[m][row[j]] for row in chunk], device, dtype)
                  for j, m in enumerate(MODALITIES)]
        keep = keep_row.expand(len(chunk), 3)
        out = net.model.fuse(towers, keep)
        index = torch.tensor(chunk)
        sims = pair_cosines(*(data.embeddings[m][index[:, j]] for j, m in enumerate(MODALITIES))).to(device)
        logits.append(net.matching(out.cls, similarities=sims, shown_pairs=shown_pairs(keep)).float().cpu())
    return torch.cat(logits) if logits else torch.zeros(0, len(MATCHING_CLASSES))


def triplet_matched(net: OPTPretrainer, data: EncodedSet, triples: list[tuple[int, int, int]],
                    shown: tuple[str, ...], device, batch_size: int = 64, rank: int = 0,
                    world_size: int = 1) -> torch.Tensor:
    """log P(matched) of each (t, i, a) in ``triples`` (see :func:`triplet_logits`)."""
    logits = triplet_logits(net, data, triples, shown, device, batch_size, rank, world_size)
    return torch.log_softmax(logits, -1)[:, MATCHED]


def matched_scores(net: OPTPretrainer, data: EncodedSet, pairs: list[tuple[int, int]],
                   query_mods: tuple[str, ...], target: str, device, batch_size: int = 64) -> torch.Tensor:
    """log P(matched) from the matching head for (query, candidate) pairs."""
    triples = [tuple(c if m == target else q for m in MODALITIES) for q, c in pairs]
    return triplet_matched(net, data, triples, tuple(query_mods) + (target,), device, batch_size)


PROTOCOLS = ("embedding", "rerank")


def retrieval_scores(net: OPTPretrainer, data: EncodedSet, direction: str, rerank: int, device,
                     rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
    """[N, N] scores per protocol. ``rerank``: the top candidates re-scored
    lead, the rest keep their similarity order behind them (absent when
    ``rerank`` is 0). Queries are split over ranks."""
    query_mods, target = DIRECTIONS[direction]
    sims = sum(data.embeddings[m] @ data.embeddings[target].t() for m in query_mods)
    out = {"embedding": sims}
    k = min(rerank, len(data))
    if k == 0:
        return out
    scale = float(net.contrastive.logit_scale().detach())
    top = sims.topk(k, dim=1).indices
    mine = list(range(rank, len(data), world_size))
    pairs = [(q, int(c)) for q in mine for c in top[q]]
    head = matched_scores(net, data, pairs, query_mods, target, device)
    local = torch.full_like(sims, float("nan"))
    if len(pairs):
        q, c = torch.tensor(pairs).unbind(1)
        local[q, c] = (scale * sims[q, c] + head).to(local.dtype)
    if dist.is_initialized() and world_size > 1:
        from opt_scale.engine.distributed import all_gather_objects
        local = torch.stack(all_gather_objects(local)).nan_to_num(float("-inf")).max(0).values
        local[torch.isneginf(local)] = float("nan")
    # Below every re-scored candidate, in their similarity order.
    below = sims - sims.max() - 1 + torch.nan_to_num(local, nan=float("inf")).min()
    out["rerank"] = torch.where(torch.isnan(local), below, local)
    return out


def evaluate_retrieval(net: OPTPretrainer, data: EncodedSet, rerank: int, device, ks=(1, 5, 10),
                       rank: int = 0, world_size: int = 1) -> dict[str, dict[str, dict[str, float]]]:
    """protocol -> direction -> {"R@k": percent}."""
    results: dict = {}
    for direction, (query_mods, target) in DIRECTIONS.items():
        correct = correct_matrix(data, query_mods, target)
        for protocol, scores in retrieval_scores(net, data, direction, rerank, device, rank, world_size).items():
            recalls = recall_at_k(scores, correct, ks)
            results.setdefault(protocol, {})[direction] = {f"R@{k}": 100 * v for k, v in recalls.items()}
    return results
