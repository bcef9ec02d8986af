"""Visual grounding of answer tokens and the hallucination flag: the torch-free half.

The model re-runs live in :mod:`engine.methods.grounding`; everything that only needs numbers
lives here, so the dashboard (which never imports torch) and the quality bench apply the same
formulas to stored results.

Per answer token k (``p_k``: the recorded answer token's probability, teacher-forced on the
stored answer; ``q_k``: the same with the image masked):

- **drop** ``d_k = clip((p_k - q_k) / p_k, 0, 1)``: the share of the token's probability the
  image accounts for. Relative, not absolute, so a token the model was unsure of (p = 0.3)
  that needs the image as much as a confident one scores as high; clipped, because a token
  the masked image makes *more* likely depends on the image no more than one it leaves
  alone (the flag asks "did the image support this word", not "did it argue against it").
- **image share** ``s_k``: the share of the token's positive LM relevancy on image tokens
  (relevancy mode ``llm``, the only mode whose row spans text and image tokens; the other
  modes are maps over patches only and cannot say how much the text mattered).
- **grounding** ``g_k = d_k`` (:func:`grounding_score`): the drop alone; the share is stored
  and shown beside it but not mixed in. Measured on the weak demo checkpoint (README): the
  share does not tell wrong from right content words (ROC AUC 0.48 on 240 words, 0.50 on
  another 48), the drop does (0.70, 0.69), and their mean is worse than the drop alone (0.61,
  0.64). The share says where relevancy mass sits, not what the token needs: the demo's
  end-of-sequence token, which no image changes, has an image share of 0.8-0.9.

Words: answer tokens grouped by the trace's stored word ids (:func:`answer_words`). A
**content word** is alphabetic and not in :data:`STOPWORDS`: function words ("the", "is")
and punctuation make no claim about the image, and the language prior predicts them without
it, so a low grounding there says nothing. "yes" and "no" *are* content words: the answer to
"is there a red circle?" is a claim about the image, and the bait question's hallucination
is exactly a "yes".

A word's grounding is the **max** over its tokens (:func:`word_grounding`): the model commits
to a word at one token (usually the first), and the rest are completions predicted from the
word's prefix with or without the image - a min would flag nearly every multi-token word, the
first token misses words whose first piece is shared by several candidates.

**Flag** (:func:`flag_words`): a content word whose grounding is below ``threshold``,
:data:`DEFAULT_THRESHOLD` = 0.1 unless given: "the image accounts for under a tenth of the
word's probability". Chosen on 240 content words of 200 weak-checkpoint demo traces (seed 11):
Youden's J (true minus false positive rate) is flat at 0.30-0.32 from 0.05 to 0.2 and falls
to 0.17 by 0.3, because half of the wrong words have a drop of exactly 0 (the model says
"triangle" or "yes" as readily without the image); 0.1 is the round number inside the flat
part.

:func:`roc_auc` (Mann-Whitney, midranks for ties) scores how well a score separates two
classes, e.g. wrong from right content words (:func:`wrong_words`).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from store.frames import relevancy_image_share
from store.schema import Relevancy

GROUNDING_KIND = "grounding"  # result kind of the grounding method
DEFAULT_THRESHOLD = 0.1  # flag a content word below this grounding (module docstring)
# Function words that make no claim about an image: articles, pronouns, prepositions,
# conjunctions, auxiliaries. Deliberately short (a long list would hide real words such as
# "top" or "over", which answer position questions); "yes" and "no" are left out on purpose.
_STOPWORDS = """a an the this that these those there here it its they them their he she his her we
    you your i me my our of in on at to from by with for as into onto about and or but if
    then so than is are was were be been being am do does did has have had will would can
    could shall should may might must"""
STOPWORDS = frozenset(_STOPWORDS.split())


@dataclass(frozen=True)
class AnswerWord:
    """Consecutive answer tokens sharing a stored word id."""

    index: int  # order within the answer
    tokens: tuple[int, ...]  # answer-token indices k (0 = first answer token)
    text: str


def answer_words(texts: Sequence[str], word_ids: Sequence[int]) -> list[AnswerWord]:
    """The answer's words: runs of consecutive tokens with one word id (``texts`` and
    ``word_ids`` are the answer's part of the stored token table). The recorder's word ids
    already merge sub-word pieces by what the tokenizer decodes, for any tokenizer."""
    words: list[AnswerWord] = []
    start = 0
    for k in range(1, len(texts) + 1):
        if k == len(texts) or int(word_ids[k]) != int(word_ids[start]):
            text = "".join(texts[start:k]).strip()
            words.append(AnswerWord(len(words), tuple(range(start, k)), text))
            start = k
    return words


def word_key(text: str) -> str:
    """The form words are compared in: Unicode NFKC, no surrounding space, case folded."""
    return unicodedata.normalize("NFKC", text).strip().casefold()


def is_content(text: str) -> bool:
    """Alphabetic and not a stopword (module docstring)."""
    key = word_key(text)
    return key.isalpha() and key not in STOPWORDS


def relative_drop(p: np.ndarray, masked: np.ndarray) -> np.ndarray:
    """``clip((p - masked) / p, 0, 1)`` per token; 0 where ``p`` is 0."""
    p, masked = np.asarray(p, np.float64), np.asarray(masked, np.float64)
    drop = np.divide(p - masked, p, out=np.zeros_like(p), where=p > 0)
    return np.clip(drop, 0.0, 1.0)


def image_share(relevancy: Relevancy, image_positions: np.ndarray) -> np.ndarray:
    """``[N]``: each answer token's share of positive ``llm`` relevancy on the image. Where the
    image is read through cross-attention keys (Mllama), the keys' part counts as image."""
    llm = np.asarray(relevancy.llm, np.float64)
    positions = np.asarray(image_positions, np.int64)
    if relevancy.llm_keys is not None:
        keys = np.asarray(relevancy.llm_keys, np.float64)
        positions = np.concatenate([positions, llm.shape[1] + np.arange(keys.shape[1])])
        llm = np.concatenate([llm, keys], axis=1)
    return relevancy_image_share(llm, positions)


def grounding_score(drop: np.ndarray) -> np.ndarray:
    """Per token: the grounding score, the drop alone (module docstring says why)."""
    return np.asarray(drop, np.float64).copy()


def word_grounding(grounding: np.ndarray, words: Sequence[AnswerWord]) -> np.ndarray:
    """``[W]``: each word's grounding, the max over its tokens (module docstring)."""
    values = np.asarray(grounding, np.float64)
    return np.asarray([values[list(w.tokens)].max() for w in words], np.float64)


def flag_words(words: Sequence[AnswerWord], grounding: np.ndarray, threshold: float) -> list[bool]:
    """Per word: a content word whose grounding (:func:`word_grounding`) is below
    ``threshold``."""
    scores = word_grounding(grounding, words)
    return [is_content(w.text) and bool(s < threshold) for w, s in zip(words, scores, strict=True)]


def wrong_words(words: Sequence[AnswerWord], reference: str) -> list[bool]:
    """Per word: a content word that is not among the reference answer's words (the label
    the flag is scored against; function words are never wrong)."""
    known = {word_key(w) for w in reference.split()}
    return [is_content(w.text) and word_key(w.text) not in known for w in words]


def roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve of ``scores`` for the positive ``labels``: the probability a
    random positive scores above a random negative, ties counting half (Mann-Whitney U from
    midranks). NaN when either class is empty."""
    labels = np.asarray(labels, bool)
    scores = np.asarray(scores, np.float64)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    midranks = ends - (counts - 1) / 2  # 1-based rank of each distinct value, ties averaged
    rank_sum = midranks[inverse][labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))
