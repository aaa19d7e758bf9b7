import torch
from transformers import GenerationConfig

from selftrain.sampling import CalculatorHook, SamplingParams, generate
from selftrain.sampling.decoder import decode_stream
from selftrain.sampling.forward import _left_pad


def _decode(model, prompts, params, eos_id, **kwargs) -> list[list[int]]:
    """:func:`decode_stream`'s outputs prompt-major: ``k`` continuations of each prompt."""
    done = dict(decode_stream(model, prompts, params, eos_id, **kwargs))
    return [seq for i in range(len(prompts)) for seq in done[i]]


def _prompts(s, n=6):
    qs = ["What is 2+3?", "Tom has 5 apples.", "x", "A much longer question about marbles here?"]
    return [(i, s.prompt_ids(qs[i % len(qs)] + " " * (i // len(qs)))) for i in range(n)]


def test_greedy_matches_transformers_generate(make_student):
    s = make_student(lora=True)
    with torch.no_grad():  # make the adapters matter
        for n, p in s.model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    items = _prompts(s)
    ours = {
        k: t[0]
        for batch in generate(s, items, SamplingParams(max_new_tokens=12))
        for k, t, _ in batch
    }
    ids, mask = _left_pad([p for _, p in items], s.pad_id, "cpu")
    cfg = GenerationConfig(
        max_new_tokens=12, do_sample=False, eos_token_id=s.eos_id, pad_token_id=s.pad_id
    )
    with torch.no_grad():
        out = s.model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
    for (key, _), row in zip(items, out[:, ids.shape[1] :].tolist(), strict=True):
        row = row[: row.index(s.eos_id)] if s.eos_id in row else row
        assert ours[key] == s.decode(row)


def test_k_samples_per_prompt_reproducible_by_seed(make_student):
    s = make_student()
    items = _prompts(s, 5)
    p = SamplingParams(k=3, greedy=False, temperature=1.5, max_new_tokens=8, batch_size=6)
    run1 = [x for b in generate(s, items, p) for x in b]
    run2 = [x for b in generate(s, items, p) for x in b]
    other = [x for b in generate(s, items, SamplingParams(**{**p.__dict__, "seed": 1})) for x in b]
    assert sorted(k for k, _, _ in run1) == list(range(5))
    assert all(len(texts) == 3 and len(lengths) == 3 for _, texts, lengths in run1)
    assert all(n <= 8 for _, _, lengths in run1 for n in lengths)
    assert run1 == run2
    assert run1 != other


def test_a_paths_tokens_do_not_depend_on_batch_size_order_or_resume(make_student):
    """Exact resume: a path is drawn from (seed, question, path index, step) alone, so another
    batch size, another order, or only the questions a killed run left give the same paths."""
    s = make_student()
    items = _prompts(s, 6)
    p = SamplingParams(k=3, greedy=False, temperature=1.5, max_new_tokens=8, batch_size=6)

    def paths(items, **change) -> dict:
        params = SamplingParams(**{**p.__dict__, **change})
        return {key: texts for b in generate(s, items, params) for key, texts, _ in b}

    whole = paths(items)
    assert paths(items, batch_size=2) == whole
    assert paths(items, batch_size=18) == whole
    assert paths(items[::-1]) == whole
    assert paths(items[4:]) == {key: whole[key] for key, _ in items[4:]}  # a resumed run


class CountingLM(torch.nn.Module):
    """Emits last_token + 1 until it reaches `stop`, then EOS: rows finish at different steps."""

    def __init__(self, vocab=32, eos=2, stop=12):
        super().__init__()
        self.vocab, self.eos, self.stop = vocab, eos, stop
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, logits_to_keep=0, **_):
        last = input_ids[:, -1]
        nxt = torch.where(last + 1 >= self.stop, torch.full_like(last, self.eos), last + 1)
        logits = torch.full((input_ids.shape[0], 1, self.vocab), -1e9)
        logits[torch.arange(len(nxt)), 0, nxt] = 0.0
        return type("Out", (), {"logits": logits})()


def test_decode_stream_drops_finished_rows_and_keeps_each_rows_tokens():
    lm = CountingLM()
    starts = [3, 10, 7, 5, 11, 4, 9, 8]
    prompts = [[1, s] for s in starts]
    out = _decode(lm, prompts, SamplingParams(max_new_tokens=20), eos_id=2)
    assert out == [list(range(s + 1, 12)) for s in starts]
    capped = _decode(lm, prompts, SamplingParams(max_new_tokens=3), eos_id=2)
    assert capped == [list(range(s + 1, min(12, s + 4))) for s in starts]
    assert _decode(lm, prompts, SamplingParams(max_new_tokens=0), eos_id=2) == [[]] * 8
    k2 = _decode(lm, prompts[:2], SamplingParams(k=2, max_new_tokens=20), eos_id=2)
    assert k2 == [list(range(4, 12))] * 2 + [[11]] * 2


class ScriptedLM(torch.nn.Module):
    """Writes ``script`` one token per step whatever it is fed (prefill is step 0)."""

    def __init__(self, script: list[int], vocab: int, eos: int):
        super().__init__()
        self.script, self.vocab, self.eos, self.step = script, vocab, eos, 0
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **_):
        t = self.script[self.step] if self.step < len(self.script) else self.eos
        self.step += 1
        logits = torch.full((input_ids.shape[0], 1, self.vocab), -1e9)
        logits[:, 0, t] = 0.0
        return type("Out", (), {"logits": logits})()


def test_calculator_forces_the_result_of_an_open_annotation(tokenizer):
    text = "So 12*3=<<12*3=99>>99 and <<5/0=7>>7 then <<2+2=5>>5\n#### 99"
    script = tokenizer.encode(text, add_special_tokens=False)
    eos = tokenizer.eos_token_id

    def run(hook):
        lm = ScriptedLM(script, len(tokenizer), eos)
        params = SamplingParams(k=2, max_new_tokens=len(script) + 2)
        return [tokenizer.decode(r) for r in _decode(lm, [[1, 5], [1, 6]], params, eos, hook=hook)]

    assert run(None) == [text] * 4
    # 12*3 is filled in (forced tokens replace the model's), 5/0 is left alone, and the
    # forced '4>>' (2 tokens) replaces the model's '5>>' without shifting what follows.
    fixed = "So 12*3=<<12*3=36>>99 and <<5/0=7>>7 then <<2+2=4>>5\n#### 99"
    assert run(CalculatorHook(tokenizer)) == [fixed] * 4
