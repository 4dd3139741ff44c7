"""C4's rules (Raffel et al. 2020) as datatrove applies them: clean line by line, then judge the document.

Lines are dropped for a word over ``max_word_length``, no terminal punctuation (optional), fewer than
``min_words_per_line`` words, "javascript" or a cookie/terms policy phrase; wiki citations are
stripped. The document is dropped for "lorem ipsum", a curly bracket, or fewer than
``min_num_sentences`` sentences left. A kept document's text becomes its kept lines.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from lmhpc.curate.filters.base import FilterResult, ScoredFilter
from lmhpc.curate.filters.config import C4FilterConfig
from lmhpc.curate.filters.text import TextView

CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
END_PUNCTUATION = (".", "?", "!", '"', "'")
def _marks_class() -> str:
    """A character class of the combining marks of the Basic Multilingual Plane."""
    ranges: list[tuple[int, int]] = []
    for code in range(0x300, 0x10000):
        if unicodedata.category(chr(code))[0] == "M":
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    return "[" + "".join(f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges) + "]"


# A sentence ends at a terminal mark standing as a word of its own (not inside 3.14 or after a combining
# mark, not an ellipsis) followed by more words, as spaCy's sentencizer sees it.
_TERMINALS = "!?\u0589\u061f\u06d4\u0964\u0965\u104a\u104b\u1362\u1367\u1368\u17d4\u17d5\u3002\uff01\uff0e\uff1f"
SENTENCE_BREAK = re.compile(
    rf"(?:[{_TERMINALS}]|(?<!\.)(?<!{_marks_class()})\.(?!\.)(?!(?<=[^\W_]\.)[^\W_]))[^\w\n]*(?=[^\W_])"
)


def count_sentences(line: str) -> int:
    """Sentences in one line: one, plus one per sentence break followed by more words."""
    return 1 + len(SENTENCE_BREAK.findall(line)) if line else 0


class C4QualityFilter(ScoredFilter):
    """C4 line cleaning plus document rules; replaces the text of a kept document with its kept lines."""

    name = "c4"

    def __init__(self, cfg: C4FilterConfig, samples_per_reason: int = 0, write_scores: bool = True) -> None:
        super().__init__(samples_per_reason, write_scores)
        self.cfg = cfg
        self.policy = tuple(p.lower() for p in cfg.policy_phrases) if cfg.filter_policy else ()

    def reusable(self, scores: dict[str, Any]) -> bool:
        # scores of a document whose lines were not cleaned yet cannot replace the cleaning
        return bool(scores.get("cleaned"))

    def measure(self, doc: TextView) -> dict[str, Any]:
        c = self.cfg
        max_word = c.max_word_length
        min_words = c.min_words_per_line
        sentences = 0
        kept: list[str] = []
        lines = doc.lines
        for raw in lines:
            line = raw.strip()
            words = None
            if max_word is not None and len(line) > max_word:
                words = line.split()
                if any(len(w) > max_word for w in words):
                    continue
            if min_words is not None and words is None:
                words = line.split()  # counted before citations are stripped
            if c.remove_citations and "[" in line:
                line = CITATION.sub("", line)
            if c.filter_no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith("...")):
                continue
            if min_words is not None and len(words) < min_words:
                continue
            lower = line.lower()
            if c.filter_lorem_ipsum and "lorem ipsum" in lower:
                return {"lorem_ipsum": 1, "curly_bracket": 0, "sentences": sentences, "cleaned": 0}
            if c.filter_javascript and "javascript" in lower:
                continue
            if c.filter_curly_bracket and "{" in line:
                return {"lorem_ipsum": 0, "curly_bracket": 1, "sentences": sentences, "cleaned": 0}
            if self.policy and any(p in lower for p in self.policy):
                continue
            sentences += count_sentences(line)
            kept.append(line)
        scores = {
            "lorem_ipsum": 0,
            "curly_bracket": 0,
            "sentences": sentences,
            "lines_in": len(lines),
            "lines_kept": len(kept),
            "cleaned": 0,
        }
        min_sentences = c.min_num_sentences
        if min_sentences is None or sentences >= min_sentences:
            doc.replace_text("\n".join(kept).strip())
            scores["cleaned"] = 1
        return scores

    def decide(self, s: dict[str, Any]) -> FilterResult:
        if s["lorem_ipsum"]:
            return False, "lorem_ipsum"
        if s["curly_bracket"]:
            return False, "curly_bracket"
        if self.cfg.min_num_sentences is not None and s["sentences"] < self.cfg.min_num_sentences:
            return False, "too_few_sentences"
        return True
