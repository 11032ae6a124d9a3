"""The `text_similarity` grader's metrics, each a score in [0, 1] of an input against one reference, offline.

OpenAI's graders guide names the metrics and the library behind some (fuzzy_match "using rapidfuzz") but
not their settings; each function says which definition it follows. Two rules hold for all: two texts
with no tokens (both empty) score 1.0, and one empty against one not empty scores 0.0.

Not computed here, and refused when a grader is validated (`UNAVAILABLE` says why): `cosine` needs an
embeddings model (OpenAI's uses text-embedding-3-large), `meteor` needs the WordNet data, which NLTK
downloads at run time and this deployment cannot.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# Words in any script (lower-cased for ROUGE, as the trainer's own ROUGE-L in trainer/evaluate.py does)
_WORD = re.compile(r"\w+")
# Words and single punctuation marks, case kept, for BLEU and GLEU (close to sacrebleu's 13a tokeniser)
_TOKEN = re.compile(r"\w+|[^\w\s]")

UNAVAILABLE = {
    "cosine": "needs an embeddings model (OpenAI computes it with text-embedding-3-large), and none is served "
    "here",
    "meteor": "needs NLTK's WordNet data, which is not installed and cannot be downloaded here",
}


def fuzzy_match(text: str, reference: str) -> float:
    """rapidfuzz's `fuzz.ratio` / 100: the normalised InDel similarity, 1 - (insertions + deletions) / (len a + len b).

    OpenAI says fuzzy_match uses rapidfuzz without naming the scorer; `fuzz.ratio` on the raw strings is its
    plain one (WRatio, which OpenAI's Python grader example uses, also tries partial and token-sorted
    matches). Equal to 2 * LCS / (len a + len b) with LCS the longest common subsequence of characters.
    """
    if not text and not reference:
        return 1.0
    return 2 * _lcs_length(text, reference) / (len(text) + len(reference))


def bleu(text: str, reference: str) -> float:
    """Sentence BLEU-4 (Papineni et al. 2002; NLTK's `sentence_bleu`): uniform weights over 1- to 4-grams,
    the brevity penalty, and NIST "exp" smoothing of empty n-gram orders (Chen and Cherry 2014, method 3, what
    sacrebleu's sentence_bleu uses by default). Case-sensitive; words and punctuation marks are tokens."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hypothesis, references = _TOKEN.findall(text), _TOKEN.findall(reference)
    if not hypothesis or not references:
        return _empty(hypothesis, references)
    score = sentence_bleu([references], hypothesis, smoothing_function=SmoothingFunction().method3)
    return float(score)


def gleu(text: str, reference: str) -> float:
    """Sentence GLEU, Google's BLEU (Wu et al. 2016; NLTK's `sentence_gleu`): the smaller of n-gram precision
    and recall over all 1- to 4-grams. Tokens as for BLEU."""
    from nltk.translate.gleu_score import sentence_gleu

    hypothesis, references = _TOKEN.findall(text), _TOKEN.findall(reference)
    if not hypothesis or not references:
        return _empty(hypothesis, references)
    return float(sentence_gleu([references], hypothesis, min_len=1, max_len=4))


def rouge(n: int | str) -> Callable[[str, str], float]:
    """ROUGE-N (n = 1..5) or ROUGE-L (n = "L") F1 from Google's rouge-score (Lin 2004), no stemming, on
    lower-cased words of any script (rouge-score's own tokeniser drops every non-ASCII word)."""
    key = f"rouge{n}"

    def score(text: str, reference: str) -> float:
        from rouge_score import rouge_scorer

        if not _WORD.findall(text) or not _WORD.findall(reference):
            return _empty(_WORD.findall(text), _WORD.findall(reference))
        scorer = rouge_scorer.RougeScorer([key], tokenizer=_WordTokenizer())
        return float(scorer.score(reference, text)[key].fmeasure)

    return score


METRICS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": fuzzy_match,
    "bleu": bleu,
    "gleu": gleu,
    **{f"rouge_{n}": rouge(n) for n in range(1, 6)},
    "rouge_l": rouge("L"),
}


class _WordTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())


def _empty(a: list[str], b: list[str]) -> float:
    return 1.0 if not a and not b else 0.0


def _lcs_length(a: str, b: str) -> int:
    """Longest common subsequence of characters, bit-parallel (Hyyrö 2004, as rapidfuzz computes it).

    One big-integer step per character of `b`, so two 10,000-character texts take milliseconds, not the
    10^8 steps of the textbook table.
    """
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, char in enumerate(a):
        masks[char] = masks.get(char, 0) | (1 << i)
    full = (1 << len(a)) - 1
    row = full
    for char in b:
        matches = row & masks.get(char, 0)
        row = ((row + matches) | (row - matches)) & full
    return len(a) - row.bit_count()
