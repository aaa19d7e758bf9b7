"""Multiple-choice and yes/no benchmarks: every split of the real files, every gold answer
(and natural variants) judged right and perturbed ones judged wrong, letter and yes/no
extraction on tricky strings, error messages for broken files, and the hub formats."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from selftrain.tasks import benchmark, get, names
from selftrain.tasks.base import Example
from selftrain.tasks.choice import ChoiceTask
from selftrain.tasks.data import DataError, data_dir
from selftrain.tasks.mmlu import MMLU_GROUPS, MMLU_SUBJECTS, mmlu_subjects
from selftrain.verify.choices import (
    extract_choice_letter,
    extract_yes_no,
    find_choice_letter,
    judge_choice,
    match_choice_text,
    normalise_option,
)

# Sizes from SOURCES.md (PIQA: valid.jsonl + valid-labels.lst; CSQA: dev is "validation").
SIZES = {
    "aqua": {"test": 254},
    "csqa": {"train": 9741, "validation": 1221},
    "obqa": {"train": 4957, "test": 500},
    "siqa": {"test": 1954},
    "piqa": {"validation": 1838},
    "arc_challenge": {"train": 1119, "test": 1172},
    "strategyqa": {"test": 2290},
    "mmlu": {"dev": 285, "validation": 1531, "test": 14042},
}
CHOICE_TASKS = [name for name in SIZES if name != "strategyqa"]
# Test-split sizes of the four MMLU groups (hendrycks/test categories; they sum to 14,042).
MMLU_GROUP_TEST_SIZES = {"stem": 3018, "humanities": 4705, "social_sciences": 3077, "other": 3242}


@pytest.fixture(scope="module")
def root() -> Path:
    try:
        return data_dir()
    except DataError as exc:
        pytest.skip(f"benchmark data directory not found (expected ../shared/data): {exc}")


@pytest.fixture(scope="module")
def loaded(root: Path) -> dict[str, Any]:
    """Each task with every split read once."""
    tasks = {}
    for name in SIZES:
        task = get(name, data_dir=root)
        for split in task.splits():
            task.load(split)
        tasks[name] = task
    return tasks


def _label_like(text: str) -> bool:
    """An option text that is itself a label ("B", "(c)"): alone it reads as that letter."""
    return len(normalise_option(text).strip("()[]")) == 1


# -- the real files --------------------------------------------------------------------------


def test_registered() -> None:
    assert set(SIZES) <= set(names())


@pytest.mark.parametrize("name", list(SIZES))
def test_split_sizes_match_sources(loaded: dict[str, Any], name: str) -> None:
    task = loaded[name]
    assert task.sizes() == SIZES[name]
    assert task.test_split in SIZES[name]
    for split in task.splits():
        examples = task.load(split)
        assert len({ex.id for ex in examples}) == len(examples), f"{name}/{split}: duplicate ids"
        assert task.load(split, 3) == examples[:3]


def test_csqa_has_no_unjudged_test_split(loaded: dict[str, Any]) -> None:
    assert loaded["csqa"].test_split == "validation"
    assert "test" not in loaded["csqa"].splits()


@pytest.mark.parametrize("name", CHOICE_TASKS)
def test_every_choice_item_judged(loaded: dict[str, Any], name: str) -> None:
    """For every item: the gold written as the model is asked to write it, and the variants
    a model might write, are right; another letter or another option's text is wrong."""
    task: ChoiceTask = loaded[name]
    failures: list[str] = []
    for split in task.splits():
        for ex in task.load(split):
            choices = ex.meta["choices"]
            labels = [chr(ord("A") + i) for i in range(len(choices))]
            gold, gold_text = ex.answer, choices[ord(ex.answer) - ord("A")]
            assert gold in labels and 2 <= len(choices) <= task.n_options
            others = [lab for lab in labels if lab != gold]
            mentions = ", ".join(f"({lab})" for lab in others)
            right = [
                task.target(ex),
                f"({gold})",
                f"{gold})",
                f"Answer: {gold}",
                f"Answer: {gold}.",
                f"**Answer: ({gold})**",
                f"Options {mentions} looked likely at first, and A seems plausible too. "
                f"Checking each one again, so the answer is {gold}.",
            ]
            if not _label_like(gold_text):
                right += [gold_text, f"The answer is {gold_text}."]
            # A wrong option whose text differs from the gold one (CSQA repeats some texts).
            wrong_label = next(
                lab
                for lab in others
                if normalise_option(choices[ord(lab) - ord("A")]) != normalise_option(gold_text)
            )
            wrong_text = choices[ord(wrong_label) - ord("A")]
            wrong = [
                f"The answer is {wrong_label}.",
                f"({wrong_label})",
                f"Maybe ({gold})... no: the answer is {wrong_label}.",
            ]
            if not _label_like(wrong_text):
                wrong.append(wrong_text)
            if task.extract(task.target(ex)) != gold:
                failures.append(f"{ex.id}: extract(target) != {gold}")
            failures += [
                f"{ex.id}: {c!r} judged wrong" for c in right if not task.is_correct(c, ex)
            ]
            failures += [f"{ex.id}: {c!r} judged right" for c in wrong if task.is_correct(c, ex)]
    assert not failures, f"{len(failures)} failures, e.g. {failures[:5]}"


def test_every_strategyqa_item_judged(loaded: dict[str, Any]) -> None:
    task = loaded["strategyqa"]
    failures = []
    answers = Counter()
    for ex in task.load():
        answers[ex.answer] += 1
        gold = ex.answer
        other = "no" if gold == "yes" else "yes"
        right = [
            task.target(ex),
            task.solution(ex),
            f"{gold.capitalize()}.",
            f"{gold.capitalize()}, because {ex.rationale}",
            f"{ex.rationale} So the answer is {gold}.",
            f"The answer is: **{gold.capitalize()}**",
            "True" if gold == "yes" else "False",
        ]
        wrong = [f"The answer is {other}.", f"{other.capitalize()}.", f"{ex.rationale} {other}."]
        failures += [
            f"{ex.id}: {c[-60:]!r} judged wrong" for c in right if not task.is_correct(c, ex)
        ]
        failures += [f"{ex.id}: {c[-60:]!r} judged right" for c in wrong if task.is_correct(c, ex)]
        assert ex.rationale, f"{ex.id}: no rationale"
    assert not failures, f"{len(failures)} failures, e.g. {failures[:5]}"
    assert answers == {"yes": 1071, "no": 1219}


def test_aqua_solutions_and_raw_rationales(loaded: dict[str, Any]) -> None:
    """Rationale + final line is judged right; the raw AQuA rationales ("Answer : A",
    "D is the correct choice", ...) never yield a wrong letter."""
    task = loaded["aqua"]
    examples = task.load()
    assert all(task.is_correct(task.solution(ex), ex) for ex in examples)
    raw = [task.extract(ex.rationale) for ex in examples]
    assert all(letter in (None, ex.answer) for letter, ex in zip(raw, examples, strict=True))
    assert sum(letter is not None for letter in raw) >= 0.9 * len(examples)


def test_option_texts_parsed(loaded: dict[str, Any]) -> None:
    """Spot checks of the parsed layouts (instruction format, AQuA prefixes, PIQA labels)."""
    obqa = loaded["obqa"].load("train", 1)[0]
    assert obqa.question == "The sun is responsible for"
    assert obqa.meta["choices"] == [
        "puppies learning new tricks",
        "children growing up and getting old",
        "flowers wilting in a vase",
        "plants sprouting, blooming and wilting",
    ]
    assert obqa.answer == "D"
    aqua = loaded["aqua"].load("test", 1)[0]
    assert aqua.meta["choices"][0] == "5(√3 + 1)" and aqua.answer == "A"
    piqa = loaded["piqa"].load("validation", 2)
    assert [ex.answer for ex in piqa] == ["A", "B"]  # valid-labels.lst starts 0, 1
    arc_sizes = Counter(len(ex.meta["choices"]) for ex in loaded["arc_challenge"].load("test"))
    assert arc_sizes == {4: 1165, 3: 4, 5: 3}
    siqa = loaded["siqa"].load("test", 1)[0]
    assert siqa.meta["choices"] == [
        "make a new plan",
        "Go home and see Riley",
        "Find somewhere to go",
    ]


def test_prompt_and_loglikelihood_helpers(loaded: dict[str, Any]) -> None:
    csqa = loaded["csqa"]
    ex = csqa.load("validation", 1)[0]
    prompt = csqa.prompt(ex)
    assert ex.question in prompt and "(A) bank" in prompt and "(E) new york" in prompt
    assert csqa.choice_continuations(ex) == [
        " bank",
        " library",
        " department store",
        " mall",
        " new york",
    ]
    assert csqa.choice_answers(ex) == ["A", "B", "C", "D", "E"]
    sqa = loaded["strategyqa"]
    ex = sqa.load(n=1)[0]
    assert list(sqa.choice_continuations(ex)) == [" yes", " no"]
    assert sqa.choice_answers(ex) == ["yes", "no"]
    assert "(A)" not in sqa.prompt(ex)


# -- MMLU subsets ----------------------------------------------------------------------------


def test_mmlu_groups_partition_subjects() -> None:
    assert len(MMLU_SUBJECTS) == 57
    grouped = [s for group in MMLU_GROUPS for s in mmlu_subjects(group)]
    assert sorted(grouped) == sorted(MMLU_SUBJECTS)  # each subject in exactly one group
    assert {len(mmlu_subjects(g)) for g in MMLU_GROUPS} == {18, 13, 12, 14}
    assert mmlu_subjects(None) == mmlu_subjects("all") == sorted(MMLU_SUBJECTS)
    with pytest.raises(ValueError, match=r"stem.*abstract_algebra"):
        get("mmlu:chemistry")


def test_mmlu_subject_files_all_present(root: Path) -> None:
    for folder in ("dev", "val", "test"):
        on_disk = {
            p.name.removesuffix(f"_{folder}.csv") for p in (root / "mmlu" / folder).glob("*.csv")
        }
        assert on_disk == set(MMLU_SUBJECTS)


def test_mmlu_subsets(loaded: dict[str, Any], root: Path) -> None:
    everything = loaded["mmlu"].load("test")
    assert Counter(ex.meta["subject"] for ex in everything).keys() == set(MMLU_SUBJECTS)
    for group, size in MMLU_GROUP_TEST_SIZES.items():
        task = get(f"mmlu:{group}", data_dir=root)
        assert task.name == f"mmlu:{group}"
        examples = task.load("test")
        assert len(examples) == size
        assert {ex.meta["subject"] for ex in examples} == set(mmlu_subjects(group))
    algebra = get("mmlu:abstract_algebra", data_dir=root, style="fewshot", n_shots=5)
    assert algebra.sizes() == {"dev": 5, "validation": 11, "test": 100}
    ex = algebra.load("test", 1)[0]
    assert ex.id == "mmlu/test/abstract_algebra/0" and ex.meta["subject"] == "abstract_algebra"
    assert ex.meta["choices"] == ["0", "4", "2", "6"] and ex.answer == "B"
    shots = algebra.few_shot_examples()
    assert len(shots) == 5 and all(s.meta["subject"] == "abstract_algebra" for s in shots)
    assert algebra.prompt(ex).count("Question:") == 6


# -- extraction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("The answer is B.", "B"),
        ("The answer is B", "B"),
        ("answer: (B)", "B"),
        ("(B)", "B"),
        ("B)", "B"),
        ("B", "B"),
        ("b", "B"),
        ("Answer: B.", "B"),
        ("Answer - b.", "B"),
        ("the answer is (c)", "C"),
        ("The answer is **B**.", "B"),
        ("**Answer:** C", "C"),
        ("$\\boxed{B}$", "B"),
        ("\\boxed{\\text{(D)}}", "D"),
        ("The correct option is D.", "D"),
        ("D is the correct choice", "D"),
        ("(B) is correct.", "B"),
        ("The Answer is, B.", "B"),
        ("The answer is A because it fits.", "A"),
        ("The answer is A.", "A"),
        ("(A) is wrong and (C) is too broad, so the answer is B.", "B"),
        ("The answer is B. Wait, no: the answer is C.", "C"),
        ("The answer is C.\nAll done.", "C"),
        ("so I pick B.", "B"),
        ("B) enforce", "B"),
        ("(B) enforce", "B"),
        ("I'd go with (C) here.", "C"),
        ("Answer:\n\nE\n", "E"),
        ("Answer: I think it's B", "B"),
    ],
)
def test_extract_choice_letter(text: str, letter: str) -> None:
    assert extract_choice_letter(text, 5) == letter


@pytest.mark.parametrize(
    "text",
    [
        "",
        "A good choice is the bank.",  # the article, not a label
        "The answer is A good place to start.",
        "The answer is A Dyson.",
        "the answer is a dog",
        "I think so.",
        "Answer Choices: (A) bank (B) library",  # an echo of the options names no answer
        "(A) x (B) y",
        "The answer is F.",  # only five options
        "B is not the answer",
        "The answer choices are confusing.",
    ],
)
def test_extract_choice_letter_none(text: str) -> None:
    assert extract_choice_letter(text, 5) is None


def test_letters_limited_to_options() -> None:
    assert extract_choice_letter("The answer is E.", 4) is None
    assert extract_choice_letter("The answer is E. Earlier I said the answer is B.", 4) == "B"
    assert extract_choice_letter("I", 4) is None
    assert extract_choice_letter("I", 9) == "I"


def test_strong_and_weak_letters() -> None:
    assert find_choice_letter("The answer is B.", 4) == ("B", True)
    assert find_choice_letter("(B)", 4) == ("B", True)
    assert find_choice_letter("Vitamin A", 4) == ("A", False)
    assert find_choice_letter("B) enforce", 4) == ("B", False)


def test_judge_choice_with_option_texts() -> None:
    choices = ["ignore", "enforce", "Vitamin A", "both A and B", "mall"]
    assert judge_choice("Vitamin A", "C", choices)  # the option's text, not the letter A
    assert not judge_choice("Vitamin A", "A", choices)
    assert judge_choice("both A and B", "D", choices)
    assert judge_choice("The answer is both A and B.", "D", choices)
    assert judge_choice("They would enforce it.\nenforce", "B", choices)
    assert judge_choice("The answer is enforce.", "B", choices)
    assert judge_choice('The answer is: "Enforce"', "B", choices)  # case-insensitive fallback
    assert not judge_choice("They would enforce it.", "B", choices)  # not an answer statement
    assert judge_choice("The answer is B.\nenforce", "B", choices)
    assert not judge_choice("The answer is A.\nenforce", "B", choices)  # the letter decides
    # A letter stated after "answer is" loses to the exact text of an option there.
    assert judge_choice("The answer is A and D.", "D", ["x", "y", "z", "A and D"])


def test_judge_choice_repeated_and_case_variant_options() -> None:
    repeated = ["home", "hardware store", "home", "hot room", "office"]
    assert judge_choice("home", "A", repeated) and judge_choice("home", "C", repeated)
    assert not judge_choice("home", "B", repeated)
    assert match_choice_text("The answer is home.", repeated) == [0, 2]
    case = ["Cs ⊃ Ej", "Sc ≡ Ej", "sC ≡ eJ", "Sx ≡ Jy"]
    assert judge_choice("Sc ≡ Ej", "B", case) and not judge_choice("sC ≡ eJ", "B", case)


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("The answer is yes.", "yes"),
        ("The answer is No", "no"),
        ("So the answer is: **Yes**", "yes"),
        ("Yes. Frost is common in December.", "yes"),
        ("No, because pears float.", "no"),
        ("Yes it is.", "yes"),
        ("Pears are less dense than water. So, no.", "no"),
        ("Thinking about it... yes", "yes"),
        ("True", "yes"),
        ("false.", "no"),
        ("The answer is true.", "yes"),
        ("No doubt about it: the answer is yes.", "yes"),
        ("Yes at first glance. But the answer is no.", "no"),
    ],
)
def test_extract_yes_no(text: str, answer: str) -> None:
    assert extract_yes_no(text) == answer


@pytest.mark.parametrize(
    "text",
    ["", "It depends.", "Yes and no.", "No doubt it is complicated", "Nothing to say", "Yesterday"],
)
def test_extract_yes_no_none(text: str) -> None:
    assert extract_yes_no(text) is None


# -- broken files ----------------------------------------------------------------------------

OBQA_RECORD = {
    "instruction": "Please choose the correct answer to the question: Predators eat\n\n"
    "Answer1: lions Answer2: humans Answer3: bunnies Answer4: grass\n\n"
    "Answer format: answer1/answer2/answer3/answer4",
    "input": "",
    "output": "the correct answer is answer3",
    "answer": "answer3",
}


def _write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _error(task_name: str, root: Path, split: str | None = None) -> str:
    with pytest.raises(DataError) as info:
        get(task_name, data_dir=root).load(split)
    return str(info.value)


@pytest.mark.parametrize(
    ("name", "rel"),
    [
        ("aqua", "aqua/test.json"),
        ("csqa", "csqa/dev_rand_split.jsonl"),
        ("obqa", "obqa/test.json"),
        ("piqa", "piqa/valid.jsonl"),
        ("strategyqa", "strategyqa/task.json"),
        ("mmlu", "mmlu/test/abstract_algebra_test.csv"),
    ],
)
def test_missing_file_says_where_expected(tmp_path: Path, name: str, rel: str) -> None:
    message = _error(name, tmp_path)
    assert str(tmp_path / rel) in message and "expected" in message and "--data-dir" in message


def test_good_fixture_loads(tmp_path: Path) -> None:
    _write(tmp_path, "obqa/test.json", json.dumps([OBQA_RECORD]))
    (ex,) = get("obqa", data_dir=tmp_path).load("test")
    assert ex == Example(
        "obqa/test/0",
        "Predators eat",
        "C",
        None,
        {"choices": ["lions", "humans", "bunnies", "grass"]},
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"answer": None}, "'answer'"),
        ({"answer": "answer5"}, "'answer'"),
        ({"instruction": "Which is it?\n\nAnswer1: x Answer2: y"}, "'instruction'"),
        ({"instruction": OBQA_RECORD["instruction"].replace(" Answer3:", " Answer9:")}, "Answer3"),
    ],
)
def test_malformed_instruction_record(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    bad = {k: v for k, v in {**OBQA_RECORD, **change}.items() if v is not None}
    path = _write(tmp_path, "obqa/test.json", json.dumps([OBQA_RECORD, bad]))
    message = _error("obqa", tmp_path)
    assert f"{path}: record 2" in message and field in message


def test_malformed_csqa_line(tmp_path: Path) -> None:
    good = {
        "answerKey": "A",
        "id": "x1",
        "question": {
            "question_concept": "c",
            "choices": [{"label": lab, "text": f"t{lab}"} for lab in "ABCDE"],
            "stem": "Which?",
        },
    }
    bad = {**good, "answerKey": "F"}
    path = _write(tmp_path, "csqa/dev_rand_split.jsonl", f"{json.dumps(good)}\n{json.dumps(bad)}\n")
    message = _error("csqa", tmp_path)
    assert f"{path}:2" in message and "'answerKey'" in message
    no_stem = {**good, "question": {"choices": good["question"]["choices"]}}
    _write(tmp_path, "csqa/dev_rand_split.jsonl", f"{json.dumps(no_stem)}\n")
    message = _error("csqa", tmp_path)
    assert f"{path}:1" in message and "'question.stem'" in message
    _write(tmp_path, "csqa/dev_rand_split.jsonl", "{not json\n")
    assert f"{path}:1" in _error("csqa", tmp_path)


def test_malformed_aqua_options(tmp_path: Path) -> None:
    good = {
        "question": "Q?",
        "options": ["A)1", "B)2", "C)3", "D)4", "E)5"],
        "rationale": "r",
        "correct": "C",
    }
    bad = {**good, "options": ["A)1", "2", "C)3", "D)4", "E)5"]}
    path = _write(tmp_path, "aqua/test.json", f"{json.dumps(good)}\n{json.dumps(bad)}\n")
    message = _error("aqua", tmp_path)
    assert f"{path}:2" in message and "'options'" in message and "item 2" in message
    _write(tmp_path, "aqua/test.json", json.dumps({**good, "correct": "Z"}) + "\n")
    assert "'correct'" in _error("aqua", tmp_path)


def test_piqa_label_errors(tmp_path: Path) -> None:
    record = json.dumps({"goal": "g", "sol1": "a", "sol2": "b"})
    _write(tmp_path, "piqa/valid.jsonl", f"{record}\n{record}\n")
    labels = _write(tmp_path, "piqa/valid-labels.lst", "0\n")
    message = _error("piqa", tmp_path)
    assert "valid-labels.lst" in message and "valid.jsonl" in message  # names both files
    labels.write_text("0\n2\n")
    assert f"{labels}:2" in _error("piqa", tmp_path)
    labels.write_text("0\n1\n")
    assert [ex.answer for ex in get("piqa", data_dir=tmp_path).load()] == ["A", "B"]


def test_strategyqa_errors(tmp_path: Path) -> None:
    good = {"input": "Q?", "target_scores": {"Yes": 1, "No": 0}, "target": "Yes. Because."}
    path = _write(
        tmp_path,
        "strategyqa/task.json",
        json.dumps({"examples": [good, {**good, "target_scores": {"Yes": 1, "No": 1}}]}),
    )
    message = _error("strategyqa", tmp_path)
    assert str(path) in message and "examples[1]" in message and "'target_scores'" in message
    path.write_text(json.dumps({"examples": [{**good, "target": "No. Because."}]}))
    assert "'target'" in _error("strategyqa", tmp_path)
    path.write_text(json.dumps({"examples": [good]}))
    (ex,) = get("strategyqa", data_dir=tmp_path).load()
    assert (ex.answer, ex.rationale) == ("yes", "Because.")
    path.write_text(json.dumps([good]))
    assert "'examples'" in _error("strategyqa", tmp_path)


def test_mmlu_csv_errors(tmp_path: Path) -> None:
    path = _write(tmp_path, "mmlu/val/anatomy_val.csv", "Q1?,a,b,c,d,A\nQ2?,a,b,c,B\n")
    message = _error("mmlu:anatomy", tmp_path, "validation")
    assert f"{path}:2" in message and "6 columns" in message
    path.write_text('Q1?,a,b,c,d,A\n"Q2, multi\nline?",a,b,c,d,X\n')
    message = _error("mmlu:anatomy", tmp_path, "validation")
    assert f"{path}:3" in message and "answer" in message
    path.write_text("Q1?,a,b,c,d,A\n")
    assert (
        get("mmlu:anatomy", data_dir=tmp_path).load("validation")[0].id
        == "mmlu/validation/anatomy/0"
    )


# -- hub formats -----------------------------------------------------------------------------


def test_parse_hub_rows() -> None:
    aqua = get("aqua", source="hub").parse_hub(
        {
            "question": "Q?",
            "options": ["A)1", "B)2", "C)3", "D)4", "E)5"],
            "rationale": "r",
            "correct": "D",
        },
        "test",
        0,
    )
    assert (aqua.answer, aqua.meta["choices"], aqua.rationale) == (
        "D",
        ["1", "2", "3", "4", "5"],
        "r",
    )

    csqa = get("csqa", source="hub").parse_hub(
        {
            "id": "abc",
            "question": "Where?",
            "question_concept": "c",
            "choices": {"label": list("ABCDE"), "text": ["a", "b", "c", "d", "e"]},
            "answerKey": "E",
        },
        "validation",
        3,
    )
    assert (csqa.id, csqa.answer, csqa.meta["choices"][-1]) == ("csqa/validation/abc", "E", "e")

    obqa = get("obqa", source="hub").parse_hub(
        {
            "id": "7-980",
            "question_stem": "The sun is responsible for",
            "choices": {"text": ["w", "x", "y", "z"], "label": list("ABCD")},
            "answerKey": "D",
        },
        "test",
        0,
    )
    assert (obqa.question, obqa.answer) == ("The sun is responsible for", "D")

    siqa = get("siqa", source="hub").parse_hub(
        {
            "context": "Tracy didn't go home.",
            "question": "What next?",
            "answerA": "a",
            "answerB": "b",
            "answerC": "c",
            "label": "3\n",
        },
        "test",
        0,
    )
    assert (siqa.question, siqa.answer, siqa.meta["choices"]) == (
        "Tracy didn't go home. What next?",
        "C",
        ["a", "b", "c"],
    )

    piqa = get("piqa", source="hub").parse_hub(
        {"goal": "g", "sol1": "s1", "sol2": "s2", "label": 1}, "validation", 0
    )
    assert (piqa.answer, piqa.meta["choices"]) == ("B", ["s1", "s2"])

    arc = get("arc_challenge", source="hub").parse_hub(
        {
            "id": "Mercury_1",
            "question": "Q?",
            "choices": {"text": ["a", "b", "c", "d"], "label": ["1", "2", "3", "4"]},
            "answerKey": "3",
        },
        "test",
        0,
    )
    assert (arc.answer, arc.id) == ("C", "arc_challenge/test/Mercury_1")

    sqa = get("strategyqa", source="hub").parse_hub(
        {
            "qid": "q1",
            "term": "t",
            "description": "d",
            "question": "Is it?",
            "answer": False,
            "facts": ["Fact one.", "Fact two."],
            "decomposition": [],
        },
        "test",
        0,
    )
    assert (sqa.answer, sqa.rationale, sqa.id) == (
        "no",
        "Fact one. Fact two.",
        "strategyqa/test/q1",
    )

    mmlu = get("mmlu", source="hub").parse_hub(
        {
            "question": "Find the degree.",
            "subject": "abstract_algebra",
            "choices": ["0", "4", "2", "6"],
            "answer": 1,
        },
        "test",
        0,
    )
    assert (mmlu.answer, mmlu.meta["subject"], mmlu.meta["choices"]) == (
        "B",
        "abstract_algebra",
        ["0", "4", "2", "6"],
    )


def test_parse_hub_errors_name_the_row() -> None:
    with pytest.raises(DataError, match=r"allenai/ai2_arc \(test split\) row 4.*'answerKey'"):
        get("arc_challenge", source="hub").parse_hub(
            {
                "question": "Q?",
                "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                "answerKey": "C",
            },
            "test",
            4,
        )
    with pytest.raises(DataError, match=r"row 0.*'label'"):
        get("piqa", source="hub").parse_hub(
            {"goal": "g", "sol1": "a", "sol2": "b", "label": -1}, "validation", 0
        )


def test_mmlu_hub_keeps_only_the_subset(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_load_hub(name: str, config: str | None, split: str) -> list[dict[str, Any]]:
        calls.append((name, config, split))
        return [
            {
                "question": f"Q{i}?",
                "subject": subject,
                "choices": ["a", "b", "c", "d"],
                "answer": i % 4,
            }
            for i, subject in enumerate(["abstract_algebra", "anatomy", "astronomy", "sociology"])
        ]

    monkeypatch.setattr(benchmark, "load_hub", fake_load_hub)
    stem = get("mmlu:stem", source="hub")
    assert [ex.meta["subject"] for ex in stem.load("test")] == ["abstract_algebra", "astronomy"]
    assert stem.load("test", 1)[0].question == "Q0?"
    assert calls == [("cais/mmlu", "all", "test")]
    anatomy = get("mmlu:anatomy", source="hub")
    assert [ex.answer for ex in anatomy.load("validation")] == ["B"]
    assert calls[-1] == ("cais/mmlu", "anatomy", "validation")
