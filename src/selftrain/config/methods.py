"""One recipe schema per method, built from the shared sections: SRIT (``SRITRecipe``) and
DPO-ST / self-training (``DPOSTRecipe``), told apart by ``method``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, field_validator, model_validator

from selftrain.config import sections as s


class SRITSamplingConfig(s.SamplingConfig):
    """SRIT's stage 2: which training questions the student answers itself, and how."""

    n_questions: int = Field(300, gt=0)  # training questions the student answers itself
    # where those questions start in the train split: 0 re-asks the demonstrated questions;
    # teacher.n_questions asks only questions the teacher never demonstrated (no fallback)
    offset: int = Field(0, ge=0)


class DPOSTSamplingConfig(s.SamplingConfig):
    """DPO-ST's DPO step: the round's SFT model samples k rationales per question (the
    paper's values); ``dpo_st.sft_k`` paths are sampled for the SFT step."""

    k: int = Field(5, gt=0, le=s.MAX_K)
    temperature: float = Field(0.7, gt=0)
    max_new_tokens: int = Field(300, gt=0, le=s.MAX_NEW_TOKENS)


class DPOSTSFTConfig(s.OptimizerConfig):
    """SFT in DPO-ST: the warm-up on gold rationales and every round's SFT step (fixed epochs,
    no early stopping). Defaults: the paper's Flan-T5 values."""

    batch_size: int = Field(96, gt=0, le=s.MAX_BATCH)
    epochs: int = Field(8, gt=0)
    warmup_epochs: int | None = Field(None, gt=0)  # epochs of the warm-up SFT; None: epochs
    max_steps: int | None = Field(None, gt=0)  # caps every SFT run's optimizer steps
    weight_decay: float = Field(0.01, ge=0)


class DPOSTDPOConfig(s.DPOConfig):
    """The DPO step of DPO-ST (reference: the round's SFT model). Defaults: the paper's Flan-T5
    values (sigmoid loss, beta 0.1, batch 96, 150 steps, lr 7e-7, no NLL term)."""

    lr: float = Field(7e-7, gt=0)
    batch_size: int = Field(96, gt=0, le=s.MAX_BATCH)
    max_steps: int | None = Field(150, gt=0)  # None: ``epochs`` passes over the pairs
    weight_decay: float = Field(0.01, ge=0)


class EvalTaskConfig(s.Strict):
    """Another task's split evaluated after every round (e.g. out-of-domain benchmarks)."""

    name: str  # registry name: multiarith, asdiv, svamp, ...
    label: str | None = None  # column name in tables; None: the task name
    args: dict[str, Any] = Field(
        default_factory=dict
    )  # task constructor arguments (data_dir, style, ...)
    split: str = "test"
    n: int | None = Field(None, gt=0)  # first n questions; None: all


class DPOSTConfig(s.Strict):
    """DPO-augmented self-training (Wang, Li & Lu, ACL 2024); defaults are the paper's."""

    rounds: int = Field(3, gt=0)
    # arms trained from the same warm-up besides ``method`` (dpo_st or self_training)
    baselines: list[Literal["dpo_st", "self_training"]] = Field(default_factory=list)
    n_questions: int | None = Field(None, gt=0)  # training questions; None: all but the dev set
    # the first N training questions keep their gold rationale (warm-up data, gold in every
    # pool); the rest are answer-only, learned from self-samples alone (self-training's
    # semi-supervised setting). None: every question has its gold rationale (the paper)
    gold_questions: int | None = Field(None, gt=0)
    dev_holdout: int = Field(0, ge=0)  # last N train questions held out as split "dev"
    # a quick run: at most this many training questions and questions per evaluation set
    limit: int | None = Field(None, gt=0)
    similarity_threshold: float = Field(0.7, gt=0, le=1)  # token-set Jaccard above it: duplicate
    pairs_per_question: int = Field(3, gt=0)  # the m least similar chosen x rejected pairs
    # SFT step: the DPO model (self-training: the SFT model) samples pseudo-labels
    sft_k: int = Field(3, gt=0, le=s.MAX_K)
    pseudo_label_cap: int | None = Field(None, gt=0)  # per question; None: the percentile below
    cap_percentile: float = Field(90.0, gt=0, le=100)
    sft_init: Literal["base", "previous"] = "base"  # next SFT from the base or the last SFT model
    eval_dpo_model: bool = False  # also evaluate each round's DPO model
    eval_tasks: list[EvalTaskConfig] = Field(default_factory=list)
    # evaluate the warm-up and each arm's final model with the calculator switched the other way
    calculator_ablation: bool = True
    calculator_ablation_n: int | None = Field(None, gt=0)  # questions per split; None: all
    sft: DPOSTSFTConfig = DPOSTSFTConfig()
    dpo: DPOSTDPOConfig = DPOSTDPOConfig()

    @model_validator(mode="after")
    def _gold_within_questions(self) -> DPOSTConfig:
        if self.gold_questions and self.n_questions and self.gold_questions > self.n_questions:
            raise ValueError(
                f"dpo_st.gold_questions ({self.gold_questions}) is more than dpo_st.n_questions "
                f"({self.n_questions})"
            )
        return self


class _Common(s.Strict):
    """The sections every method reads."""

    name: str = "srit-arithmetic"
    seed: int = 0
    threads: int | None = None  # torch threads; None: torch's default
    # fill in ``<<expr=`` annotations with a safe calculator while decoding (sampling and eval)
    calculator: bool = True
    student: s.StudentConfig = s.StudentConfig()
    task: s.TaskConfig = s.TaskConfig()
    eval: s.EvalConfig = s.EvalConfig()
    # experiment trackers (transformers' names): tensorboard, wandb, trackio, all (those
    # installed), none; one name or a list. Files under <run_dir>/tracking (selftrain.tracking)
    report_to: list[Literal["tensorboard", "wandb", "trackio", "all"]] = Field(default_factory=list)

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_list(cls, v: Any) -> Any:
        v = [v] if isinstance(v, str) else [] if v is None else v
        if isinstance(v, list) and "none" in v:
            if len(v) > 1:
                raise ValueError("'none' cannot be combined with trackers")
            return []
        return v


class SRITRecipe(_Common):
    """Self-refine instruction-tuning (pipeline/srit.py)."""

    method: Literal["srit"] = "srit"
    teacher: s.TeacherConfig = s.TeacherConfig()
    sft: s.SFTConfig = s.SFTConfig()
    sampling: SRITSamplingConfig = SRITSamplingConfig()
    pairs: s.PairsConfig = s.PairsConfig()
    rft: s.RFTConfig = s.RFTConfig()
    dpo: s.DPOConfig = s.DPOConfig()
    # the control: SFT on the demonstrations trained on for as many steps as RFT and DPO took
    sft_more: bool = True


class DPOSTRecipe(_Common):
    """DPO-augmented self-training, or self-training alone (pipeline/dpo_st.py)."""

    # self_training: the same loop without the DPO step (RFT)
    method: Literal["dpo_st", "self_training"]
    sampling: DPOSTSamplingConfig = DPOSTSamplingConfig()
    dpo_st: DPOSTConfig = DPOSTConfig()


Recipe = SRITRecipe | DPOSTRecipe
_RECIPE: TypeAdapter[Recipe] = TypeAdapter(Annotated[Recipe, Field(discriminator="method")])


def parse_recipe(data: dict[str, Any]) -> Recipe:
    """A recipe from its keys (``method`` absent: srit); raises pydantic's ValidationError."""
    return _RECIPE.validate_python({"method": "srit", **data})
