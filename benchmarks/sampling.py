"""Sampling: selftrain's sampler vs transformers' ``model.generate``, tokens per second.

Both engines get the same model weights, the same prompts (the generated arithmetic task's
train questions, chat-templated as the pipeline does, in the same order), the same number of
sequences per batch, the same k, temperature, top-p, max_new_tokens and dtype. The peer is the
code a user would write: ``model.generate(input_ids, attention_mask, do_sample=True,
temperature, top_p, top_k=0, max_new_tokens, num_return_sequences=k)`` on left-padded prompts,
stopping at EOS, then ``batch_decode``. With the calculator, the peer is ``generate`` with a
``LogitsProcessor`` that forces the same calculator tokens (the same ``CalculatorHook``), so
both produce annotated paths. Tokens/s counts generated tokens up to and including EOS per
wall-clock second, texts decoded, for each engine. Runs alternate (peer, selftrain, peer,
selftrain, ...) after one untimed warm-up each; the median run counts.

    python benchmarks/sampling.py --quick
    python benchmarks/sampling.py                      # the issue's sizes: 64 questions, k=8
    python benchmarks/sampling.py --vllm               # + selftrain's vLLM engine (GPU)

A second peer, ``llama.cpp`` (llama-cpp-python's batched API: :class:`LlamaCpp`), runs the
same prompts at the same sizes on the model's GGUF file where there is one (the embedded
SmolLM2 file; ``--llama-gguf`` for another, e.g. an exported SFT student); its rows print
``selftrain / llama.cpp``.

The last line is ``speedup X.XX``: the geometric mean over the configurations run of
(selftrain tokens/s) / (generate tokens/s), selftrain being its vLLM engine with ``--vllm``
and its built-in sampler otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
import torch


def make_prompts(student, n: int) -> list[list[int]]:
    task, examples = C.questions(n, offset=288)  # the default recipe samples from question 288
    prompts = [student.prompt_ids(task.prompt(e)) for e in examples]
    return sorted(prompts, key=len)  # both engines get the same length-sorted batches


class CalculatorForcing:
    """A transformers ``LogitsProcessor``: after a token that can open a result (``=``), it
    asks selftrain's ``CalculatorHook`` for the result of the row's open ``<<expr=`` and
    forces its tokens one step at a time, as selftrain's sampler does."""

    def __init__(self, hook, prompt_width: int, eos_id: int):
        self.hook, self.width, self.eos = hook, prompt_width, eos_id
        self.queues: dict[int, deque[int]] = {}

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        last = input_ids[:, -1].tolist()
        for row, token in enumerate(last):
            queue = self.queues.get(row)
            if not queue and token in self.hook.triggers:
                generated = input_ids[row, self.width :].tolist()
                if self.eos not in generated:
                    fill = self.hook.forced(generated)
                    if fill:
                        queue = self.queues[row] = deque(fill)
            if queue:
                forced = queue.popleft()
                scores[row] = float("-inf")
                scores[row, forced] = 0.0
        return scores


def run_generate(student, prompts, args, calculator: bool, greedy: bool = False) -> float:
    """The peer: ``model.generate`` per batch; returns generated tokens (EOS included)."""
    from transformers import GenerationConfig, LogitsProcessorList

    from selftrain.sampling import CalculatorHook
    from selftrain.sampling.forward import _left_pad

    model = student.model
    per_batch = max(1, args.batch_size // args.k)
    cfg = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else args.temperature,
        top_p=None if greedy else args.top_p,
        top_k=None if greedy else 0,
        max_new_tokens=args.max_new_tokens,
        num_return_sequences=1 if greedy else args.k,
        eos_token_id=student.eos_id,
        pad_token_id=student.pad_id,
    )
    hook = CalculatorHook(student.tokenizer) if calculator else None
    tokens = 0
    torch.manual_seed(args.seed)
    texts = []
    for start in range(0, len(prompts), per_batch):
        ids, mask = _left_pad(prompts[start : start + per_batch], student.pad_id, student.device)
        procs = LogitsProcessorList()
        if hook is not None:
            procs.append(CalculatorForcing(hook, ids.shape[1], student.eos_id))
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=mask, generation_config=cfg, logits_processor=procs
            )
        for row in out[:, ids.shape[1] :].tolist():
            n = row.index(student.eos_id) + 1 if student.eos_id in row else len(row)
            tokens += n
            texts.append(student.tokenizer.decode(row[:n], skip_special_tokens=True))
    run_generate.texts = texts
    return tokens


def run_ours(student, prompts, args, calculator: bool, greedy: bool = False) -> float:
    """selftrain's sampler (the pipeline's entry point); returns generated tokens (EOS
    included: a row shorter than max_new_tokens ended with one)."""
    from selftrain.sampling import SamplingParams, generate

    params = SamplingParams(
        k=1 if greedy else args.k,
        greedy=greedy,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        calculator=calculator,
    )
    tokens = 0
    texts = {}
    for batch in generate(student, list(enumerate(prompts)), params):
        for key, outs, lengths in batch:
            texts[key] = outs
            tokens += sum(n + (n < args.max_new_tokens) for n in lengths)
    run_ours.texts = [t for key in sorted(texts) for t in texts[key]]
    return tokens


def run_vllm(student, prompts, args, calculator: bool) -> float:
    """selftrain's vLLM engine (GPU machines with vllm installed): the same prompts as token
    ids, k samples each, on one engine kept for every run (as a selftrain run keeps it); its
    start and the first wake-up are in the warm-up run."""
    import tempfile

    from selftrain.config import VLLMConfig
    from selftrain.runtime import Runtime
    from selftrain.sampling import SamplingParams, make_engine

    if getattr(run_vllm, "engine", None) is None:
        folder = tempfile.mkdtemp(prefix="selftrain-vllm-")
        run_vllm.engine = make_engine("vllm", VLLMConfig(), Runtime.local(args.device), folder)
    params = SamplingParams(
        k=args.k,
        greedy=False,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        calculator=calculator,
    )
    tokens = 0
    for batch in run_vllm.engine.generate(student, list(enumerate(prompts)), params):
        for _, _texts, lengths in batch:
            tokens += sum(n + (n < args.max_new_tokens) for n in lengths)
    return tokens


class LlamaCpp:
    """llama.cpp through llama-cpp-python's low-level batched API, as llama.cpp's own
    ``batched`` example drives it: one context with a KV stream per sequence (``n_seq_max`` =
    the batch's sequences), each prompt decoded once and its KV cache copied to its k
    sequences (``llama_memory_seq_cp``: the prefill shared, as selftrain's sampler shares
    it), then every live sequence's next token decoded together each step and drawn by
    llama.cpp's sampler chain (temperature, then a seeded draw). The weights are the GGUF
    file's own (SmolLM2's embedded file is Q4_1: llama.cpp multiplies them quantized, where
    the torch engines run the dequantized fp32 weights). Loaded once per model, outside the
    timed runs; the model file is ``gguf``."""

    def __init__(self, gguf: str, args):
        import llama_cpp as L

        self.L, self.args = L, args
        self._quiet = L.llama_log_callback(lambda level, text, data: None)  # kept alive here
        L.llama_log_set(self._quiet, None)
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(gguf.encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        seqs = args.batch_size
        cp = L.llama_context_default_params()
        cp.n_seq_max = seqs
        cp.n_ctx = seqs * 256  # per sequence: the prompt (< 128 tokens) and max_new_tokens
        cp.n_batch = cp.n_ubatch = 2048
        cp.n_threads = cp.n_threads_batch = torch.get_num_threads()
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not make a context")
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(2048, 0, 1)
        self.calls = 0

    def _sampler(self, greedy: bool):
        L = self.L
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if greedy:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        else:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(self.args.temperature))
            if self.args.top_p < 1.0:
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(self.args.top_p, 1))
            self.calls += 1
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(self.args.seed + self.calls))
        return chain

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """Decode (token, position, sequence, wants logits) entries as one batch."""
        L, b = self.L, self.batch
        b.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i] = token, pos, 1
            b.seq_id[i][0], b.logits[i] = seq, logits
        if L.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def __call__(self, student, prompts, calculator: bool, greedy: bool = False) -> float:
        """Generated tokens (EOS included) of ``prompts``, k per prompt (1 when greedy)."""
        from selftrain.sampling import CalculatorHook

        L, args = self.L, self.args
        k = 1 if greedy else args.k
        hook = CalculatorHook(student.tokenizer) if calculator else None
        chain = self._sampler(greedy)
        per_batch = max(1, args.batch_size // k)
        tokens, texts = 0, []
        for start in range(0, len(prompts), per_batch):
            group = prompts[start : start + per_batch]
            L.llama_memory_clear(self.mem, True)
            entries, last = [], {}
            for i, p in enumerate(group):  # each prompt once, into its first sequence
                for j, t in enumerate(p):
                    entries.append((t, j, i * k, j == len(p) - 1))
                last[i] = len(entries) - 1
            for chunk in range(0, len(entries), 2048):
                self._decode(entries[chunk : chunk + 2048])
            for i in range(len(group)):
                for j in range(1, k):
                    L.llama_memory_seq_cp(self.mem, i * k, i * k + j, -1, -1)
            outputs = {s: [] for s in range(len(group) * k)}
            index = {s: last[s // k] % 2048 for s in outputs}  # logits row of each sequence
            forced: dict[int, deque[int]] = {}
            live = sorted(outputs)
            while live:
                step = []
                for s in live:
                    if forced.get(s):
                        t = forced[s].popleft()
                    else:
                        t = L.llama_sampler_sample(chain, self.ctx, index[s])
                    out = outputs[s]
                    out.append(t)
                    if t == student.eos_id or len(out) >= args.max_new_tokens:
                        continue
                    if hook is not None and not forced.get(s):
                        fill = hook.forced(out)
                        if fill:
                            forced[s] = deque(fill)
                    step.append(s)
                live = step
                if live:
                    p = {s: len(group[s // k]) + len(outputs[s]) - 1 for s in live}
                    self._decode([(outputs[s][-1], p[s], s, True) for s in live])
                    index = {s: i for i, s in enumerate(live)}
            for s in sorted(outputs):
                out = outputs[s]
                tokens += len(out)
                text = out[:-1] if out and out[-1] == student.eos_id else out
                texts.append(student.tokenizer.decode(text, skip_special_tokens=True))
        L.llama_sampler_free(chain)
        self.texts = texts
        return tokens


def greedy_check(student, prompts, args) -> bool:
    """Greedy outputs of both engines on a few prompts: identical texts?"""
    sub = argparse.Namespace(**{**vars(args), "max_new_tokens": min(32, args.max_new_tokens)})
    few = prompts[: min(4, len(prompts))]
    run_generate(student, few, sub, calculator=False, greedy=True)
    run_ours(student, few, sub, calculator=False, greedy=True)
    return run_generate.texts == run_ours.texts


def _gguf_of(model_name: str, args) -> Path | None:
    """The GGUF file llama.cpp runs for ``model_name``: ``--llama-gguf``, else the embedded
    SmolLM2 file for the untrained default student; None (no llama.cpp rows) for other
    models, or where llama-cpp-python is not installed."""
    import importlib.util

    if args.no_llama or importlib.util.find_spec("llama_cpp") is None:
        return None
    if args.llama_gguf:
        return Path(args.llama_gguf)
    if model_name == "smollm2-135m-instruct" and args.adapter is None:
        from selftrain.models import smollm2_gguf

        return smollm2_gguf()
    return None


def bench_model(model_name: str, args, repeats: int, rows: list, results: list) -> list[float]:
    """The engines on one model, each calculator mode; appends table rows and results and
    returns the speedups (selftrain's engine over generate)."""
    student = C.load_student(model_name, dtype=args.dtype, adapter=args.adapter, device=args.device)
    student.model.eval()
    prompts = make_prompts(student, args.questions)
    name = C.short_name(model_name)
    same = greedy_check(student, prompts, args)
    print(f"{name}: greedy output identical to generate: {'yes' if same else 'NO'}", flush=True)
    llama = None
    gguf = _gguf_of(model_name, args)
    if gguf is not None:
        llama = LlamaCpp(str(gguf), args)
        few = prompts[: min(4, len(prompts))]
        sub = argparse.Namespace(**{**vars(args), "max_new_tokens": min(32, args.max_new_tokens)})
        llama.args = sub
        llama(student, few, calculator=False, greedy=True)
        llama.args = args
        same = sum(a == b for a, b in zip(llama.texts, run_generate.texts, strict=False))
        print(
            f"{name}: llama.cpp ({Path(gguf).name}) greedy texts equal to generate's: "
            f"{same} of {len(few)}"
            + ("" if same == len(few) else " (its weights or arithmetic differ)"),
            flush=True,
        )
    ours = "selftrain-vllm" if args.vllm else "selftrain"
    few = prompts[: max(1, args.batch_size // args.k)]  # the warm-up: one batch
    speedups = []
    for mode in args.calculator.split(","):
        calc = mode == "on"
        runs = {
            "generate": lambda calc=calc: run_generate(student, prompts, args, calc),
            "selftrain": lambda calc=calc: run_ours(student, prompts, args, calc),
        }
        if llama is not None:
            runs = {"llama.cpp": lambda calc=calc: llama(student, prompts, calc), **runs}
        if args.vllm:
            runs["selftrain-vllm"] = lambda calc=calc: run_vllm(student, prompts, args, calc)
        warm = {
            "generate": lambda calc=calc: run_generate(student, few, args, calc),
            "llama.cpp": lambda calc=calc: llama(student, few, calc),
            "selftrain": lambda calc=calc: run_ours(student, few, args, calc),
            "selftrain-vllm": lambda calc=calc: run_vllm(student, few, args, calc),
        }
        timings = C.alternate(runs, repeats, warm)
        ratio = timings[ours].rate() / timings["generate"].rate()
        speedups.append(ratio)
        for t in timings.values():
            runs_s = " ".join(f"{x:.1f}" for x in t.seconds)
            rows.append([name, mode, t.engine, int(t.units[0]), runs_s, t.rate()])
        rows.append([name, mode, f"speedup ({ours})", "", "", ratio])
        rates = {f"{e}_tok_s": t.rate() for e, t in timings.items()}
        record = {"model": name, "calculator": calc, "speedup": ratio, **rates}
        note = ""
        if "llama.cpp" in timings:
            record["vs_llama_cpp"] = timings[ours].rate() / timings["llama.cpp"].rate()
            rows.append([name, mode, f"{ours} / llama.cpp", "", "", record["vs_llama_cpp"]])
            note = f", {record['vs_llama_cpp']:.2f}x llama.cpp"
        results.append(record)
        print(f"{name}, calculator {mode}: speedup {ratio:.2f}{note}", flush=True)
    return speedups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(parser)
    parser.add_argument("--models", default="smollm2-135m-instruct,tiny-llama")
    parser.add_argument("--questions", type=int, default=None, help="default 64 (quick: 8)")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 96 (quick: 64)")
    parser.add_argument(
        "--batch-size", type=int, default=128, help="rows decoded together (generate: sequences)"
    )
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--calculator", default="off,on", help="calculator modes to run")
    parser.add_argument("--adapter", default=None, help="a run's LoRA checkpoint to merge first")
    parser.add_argument("--vllm", action="store_true", help="add selftrain's vLLM engine (GPU)")
    parser.add_argument(
        "--llama-gguf",
        default=None,
        help="the GGUF llama.cpp runs (default: the embedded SmolLM2 file for the untrained "
        "student; for --adapter, a 'selftrain export --gguf f32' of it)",
    )
    parser.add_argument("--no-llama", action="store_true", help="no llama.cpp rows")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.questions = args.questions or (8 if args.quick else 64)
    args.max_new_tokens = args.max_new_tokens or (64 if args.quick else 96)
    args.batch_size = min(args.batch_size, args.questions * args.k)
    repeats = args.repeats or (2 if args.quick else 3)
    C.setup_threads(args.threads)
    print(f"machine: {C.machine()}")
    print(
        f"sampling: {args.questions} questions x k={args.k}, max_new_tokens={args.max_new_tokens},"
        f" batch {args.batch_size} sequences, T={args.temperature}, top_p={args.top_p},"
        f" {args.dtype}, {repeats} timed runs each (median), alternating",
        flush=True,
    )
    rows: list = []
    results: list = []
    speedups = []
    for model_name in args.models.split(","):
        speedups += bench_model(model_name, args, repeats, rows, results)
    print(C.table(rows, ["model", "calculator", "engine", "tokens", "seconds per run", "tok/s"]))
    C.finish(args, results, speedups)


if __name__ == "__main__":
    main()
