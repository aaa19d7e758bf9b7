"""Pieces shared by the SFT and DPO loops: batching and log-probs."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from selftrain.models import Student
from selftrain.training.frozen import FrozenStates, layers_from
from selftrain.training.fused_lora import merged_lora


def collate(
    seqs: Sequence[tuple[list[int], list[int]]], pad_id: int, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad ``(prompt_ids, completion_ids)`` pairs into input ids, attention mask and
    labels. Labels cover the completion only (its EOS included); prompt and padding are -100,
    set from lengths, so a pad id equal to EOS never hides the EOS."""
    width = max(len(p) + len(c) for p, c in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (p, c) in enumerate(seqs):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(c)
    return ids.to(device), mask.to(device), labels.to(device)


class TokenScorer(nn.Module):
    """The log-probabilities of chosen tokens under a causal LM, as one module ``forward``, so
    that DDP and FSDP (which hook into a module's forward) can wrap it.

    The output layer (49k x 576 for SmolLM2: a fifth of the model's compute per token) is
    applied only at the positions that predict a scored token, not over the prompt and the
    padding as the model's own forward would. LoRA layers run as one matmul each in fp32
    (:mod:`.fused_lora`)."""

    def __init__(self, model: nn.Module, autocast: bool = False, fuse_lora: bool = True):
        super().__init__()
        self.model = model
        self.autocast = autocast
        self.fuse_lora = fuse_lora  # LoRA layers as one matmul in fp32 (fused_lora.py)
        # what accelerate's FSDP2 wrapping reads off a transformers model
        self._no_split_modules = getattr(model, "_no_split_modules", None)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        rows: torch.Tensor,
        src: torch.Tensor,
        targets: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        hidden: torch.Tensor | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """``[n]`` log-probability of token ``targets[i]`` predicted from position ``src[i]``
        of row ``rows[i]`` (fp32). With ``hidden`` (the rows' states after the first
        ``start`` layers, :mod:`selftrain.training.frozen`) only the layers above run."""
        model = self.model
        device = input_ids.device.type
        decoder = model.get_decoder()
        kwargs = {"attention_mask": attention_mask, "position_ids": position_ids}
        with (
            torch.autocast(device, dtype=torch.bfloat16, enabled=self.autocast),
            merged_lora(model, self.fuse_lora and not self.autocast),
        ):
            if hidden is None:
                out = decoder(input_ids=input_ids, **kwargs).last_hidden_state
            else:
                with layers_from(decoder, start):
                    out = decoder(inputs_embeds=hidden, **kwargs).last_hidden_state
            logits = model.get_output_embeddings()(out[rows, src])
        return -F.cross_entropy(logits.float(), targets, reduction="none")


def scorer_of(student: Student) -> TokenScorer:
    """A :class:`TokenScorer` over the student's model (no copy of any weight)."""
    cfg = student.cfg
    return TokenScorer(student.model, autocast=cfg.autocast_bf16, fuse_lora=cfg.fused_lora)


def token_logps(
    scorer: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    frozen: FrozenRows | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: the summed log-probability of the labelled tokens, and their count.
    ``scorer`` is a :class:`TokenScorer`, possibly wrapped by DDP or FSDP; with ``frozen``,
    the rows' cached states below the trainable layers."""
    target = labels[:, 1:]
    where = target != -100
    rows, src = where.nonzero(as_tuple=True)
    logp_tok = scorer(ids, mask, rows, src, target[where], **_frozen_kwargs(frozen, ids))
    logp = torch.zeros(ids.shape[0], dtype=logp_tok.dtype, device=ids.device)
    return logp.index_add(0, rows, logp_tok), where.sum(-1)


def can_pack_pairs(model: nn.Module) -> bool:
    """Whether the model's attention takes the boolean 4D masks of :func:`collate_pairs`
    (SDPA does; eager attention adds masks as floats)."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) == "sdpa"


def collate_pairs(
    pairs: Sequence[tuple[list[int], list[int], list[int]]], pad_id: int, device
) -> dict[str, torch.Tensor]:
    """Pack each ``(prompt, chosen, rejected)`` into one row, ``prompt + chosen + rejected``,
    so the prompt is run once for both answers (DPO's prompts are a third to a half of its
    tokens here).

    The rejected tokens take the positions right after the prompt and attend to the prompt
    and to themselves, never to the chosen tokens, so each answer sees exactly what it would
    see alone. Returns input ids, position ids, a ``[B, 1, L, L]`` boolean attention mask
    (padding attends to itself only, so no row of it is empty), and for every labelled
    token: its row, the position whose hidden state predicts it (for the first rejected
    token: the prompt's last), its id, and its sequence (``i`` for pair ``i``'s chosen,
    ``n + i`` for its rejected, as in ``collate`` of chosen then rejected)."""
    n = len(pairs)
    width = max(len(p) + len(c) + len(r) for p, c, r in pairs)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    segment = torch.full((n, width), -1, dtype=torch.long)  # 0 prompt, 1 chosen, 2 rejected
    rows, src, tgt, seq = [], [], [], []
    for i, (p, c, r) in enumerate(pairs):
        lp, lc, lr = len(p), len(c), len(r)
        ids[i, : lp + lc + lr] = torch.tensor(p + c + r)
        pos[i, : lp + lc] = torch.arange(lp + lc)
        pos[i, lp + lc : lp + lc + lr] = torch.arange(lp, lp + lr)
        segment[i, :lp] = 0
        segment[i, lp : lp + lc] = 1
        segment[i, lp + lc : lp + lc + lr] = 2
        chosen_src = list(range(lp - 1, lp + lc - 1))
        rejected_src = [lp - 1, *range(lp + lc, lp + lc + lr - 1)] if lr else []
        rows += [i] * (lc + lr)
        src += chosen_src + rejected_src
        tgt += c + r
        seq += [i] * lc + [n + i] * lr
    q, k = segment[:, :, None], segment[:, None, :]
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    mask = causal & (q >= 0) & ((k == 0) | (k == q))
    mask |= torch.eye(width, dtype=torch.bool)  # padding: itself only
    out = {"input_ids": ids, "position_ids": pos, "attention_mask": mask[:, None]}
    for name, values in (("rows", rows), ("src", src), ("targets", tgt), ("seq", seq)):
        out[name] = torch.tensor(values, dtype=torch.long)
    return {name: t.to(device) for name, t in out.items()}


def packed_pair_logps(
    scorer: nn.Module, batch: dict[str, torch.Tensor], frozen: FrozenRows | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities and token counts of a :func:`collate_pairs` batch: ``[2n]``,
    the n chosen answers then the n rejected ones (as :func:`token_logps` of ``collate`` of
    chosen then rejected sequences)."""
    n = batch["input_ids"].shape[0]
    logp_tok = scorer(
        batch["input_ids"],
        batch["attention_mask"],
        batch["rows"],
        batch["src"],
        batch["targets"],
        position_ids=batch["position_ids"],
        **_frozen_kwargs(frozen, batch["input_ids"]),
    )
    logp = torch.zeros(2 * n, dtype=logp_tok.dtype, device=logp_tok.device)
    logp = logp.index_add(0, batch["seq"], logp_tok)
    return logp, torch.bincount(batch["seq"], minlength=2 * n)


def pair_logps(
    scorer: nn.Module,
    pairs: Sequence[tuple[list[int], list[int], list[int]]],
    pad_id: int,
    pack: bool,
    frozen: FrozenRows | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[2n]`` summed log-probs and counts of the pairs' chosen then rejected answers:
    packed (:func:`collate_pairs`) where the attention takes it (``pack``, see
    :func:`can_pack_pairs`) and every prompt has a token to predict the first answer token
    from, else one padded sequence per answer. ``frozen``: the packed rows' cached states
    (:func:`pair_states`; packed pairs only)."""
    device = module_device(scorer)
    if pack and all(p for p, _, _ in pairs):
        return packed_pair_logps(scorer, collate_pairs(pairs, pad_id, device), frozen)
    seqs = [(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs]
    return token_logps(scorer, *collate(seqs, pad_id, device))


class FrozenRows:
    """Which rows of a :class:`~selftrain.training.frozen.FrozenStates` a batch holds."""

    def __init__(self, states: FrozenStates, items: Sequence[int]):
        self.states, self.items = states, list(items)


def _frozen_kwargs(frozen: FrozenRows | None, ids: torch.Tensor) -> dict:
    if frozen is None:
        return {}
    hidden = frozen.states.rows(frozen.items, ids.shape[1], ids.device)
    return {"hidden": hidden, "start": frozen.states.layers}


def frozen_rows(states: FrozenStates | None, items: Sequence[int]) -> FrozenRows | None:
    return None if states is None else FrozenRows(states, items)


def sequence_states(
    student: Student, data: Sequence[tuple[list[int], list[int]]], spill=None
) -> FrozenStates | None:
    """The frozen layers' states of ``(prompt, completion)`` sequences (rows as
    :func:`collate` makes them), or None where nothing is cached."""
    device = student.device

    def inputs(items: list[int]) -> dict[str, torch.Tensor]:
        ids, mask, _ = collate([data[i] for i in items], student.pad_id, device)
        return {"input_ids": ids, "attention_mask": mask}

    lengths = [len(p) + len(c) for p, c in data]
    return FrozenStates.build(student, len(data), inputs, lengths, spill=spill)


def pair_states(
    student: Student, pairs: Sequence[tuple[list[int], list[int], list[int]]], spill=None
) -> FrozenStates | None:
    """The frozen layers' states of the pairs packed one row each (:func:`collate_pairs`),
    or None where they are not packed or nothing is cached."""
    if not (can_pack_pairs(student.model) and all(p for p, _, _ in pairs)):
        return None
    device = student.device

    def inputs(items: list[int]) -> dict[str, torch.Tensor]:
        batch = collate_pairs([pairs[i] for i in items], student.pad_id, device)
        keys = ("input_ids", "attention_mask", "position_ids")
        return {k: batch[k] for k in keys}

    lengths = [sum(map(len, pair)) for pair in pairs]
    return FrozenStates.build(student, len(pairs), inputs, lengths, spill=spill)


def module_device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def batch_plan(
    n: int, batch_size: int, rng: random.Random, lengths: Sequence[int], total: int
) -> Iterator[list[int]]:
    """``total`` optimizer steps' batches of indexes: epoch after epoch of :func:`batches`."""
    plan: list[list[int]] = []
    for _ in range(total):
        if not plan:
            plan = batches(n, batch_size, rng, lengths)
        yield plan.pop(0)


def batches(n: int, batch_size: int, rng: random.Random, lengths: Sequence[int]) -> list[list[int]]:
    """Shuffled batches of indexes; within windows of 16 batches, items are sorted by length
    so each batch pads little while the order stays random."""
    idx = list(range(n))
    rng.shuffle(idx)
    window = batch_size * 16
    out = []
    for w in range(0, n, window):
        chunk = sorted(idx[w : w + window], key=lambda i: lengths[i])
        out.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(out)
    return out
