"""English word splitting by the rules of a blank spaCy ``en`` tokenizer, without spaCy.

The Gopher rules count words, so word splitting decides documents at the margins. datatrove splits
English with spaCy; these rules follow spaCy's algorithm so decisions agree: the text is cut on
whitespace, then each chunk loses prefixes (opening brackets and quotes, ``#``, ``<``, currency, ...)
and suffixes (closing punctuation, ``'s``, a period after a digit, a lower-case letter or two capitals,
units after a number, ...) one at a time, and what is left is split at infixes (a hyphen, ``/``,
``:``, ``=``, ``<``, ``>`` between letters; ``,`` between letters; ``.`` between a lower-case and an
upper-case letter; an operator between digits; ``...``). URLs and e-mail addresses stay whole,
``n't``/``'m``/``'re``/``'ve``/``'ll``/``'d`` split off, contractions written without an apostrophe
(``dont``, ``cannot``) split as spaCy splits them, and common abbreviations (``Mr.``, ``e.g.``, single
letters like ``a.``) keep their period. Of spaCy's long list of emoticons only the common ones are kept
whole. On the shipped sample corpus 95% of documents get exactly spaCy's tokens, and the filters'
keep/drop decisions agree with datatrove's on all of them (``bench/curate.py``).
"""

from __future__ import annotations

import re
from functools import lru_cache

_PUNCT = "…,:;!?¿؟¡()[]{}<>_#*&。？！，、；：～·।،۔؛٪"
_QUOTES = "'\"”“`‘´’‚,„»«「」『』（）〔〕【】《》〈〉〈〉⟦⟧"
_CURRENCY = "$£€¥฿₽﷼₴₠₡₢₣₤₥₦₧₨₩₪₫₭₮₯₰₱₲₳₵₶₷₸₹₺₻₼₾₿"
_ICONS = "¦©®°҂֍֎؎؏۞۩۽۾߶৺୰௳௴௵௶௷௸௺౿൏൹༁༂༃༓༕༖༗༚༛༜༝༞༟༴༶༸"  # the common ones of spaCy's list
_ICON_RANGES = "\u2100-\u214f\u2195-\u21ff\u2300-\u23ff\u2400-\u24ff\u2500-\u27bf\u2800-\u2bff\U0001f000-\U0001faff"
_LOWER = "a-zß-öø-ÿ"
_UPPER = "A-ZÀ-ÖØ-Þ"
_LETTER = r"[^\W\d_]"
_HYPHENS = "-–—~"
_UNITS = ("km km² km³ m m² m³ dm dm² dm³ cm cm² cm³ mm mm² mm³ ha µm nm yd in ft kg g mg µg t lb oz m/s km/h kmh "
          "mph hPa Pa mbar mb MB kb KB gb GB tb TB T G M K %").split()

_ICON_CLASS = f"[{re.escape(_ICONS)}{_ICON_RANGES}]"
PREFIX = re.compile(
    r"(?:§|%|=|—|–|\+(?![0-9])|\.\.+|…|US\$|C\$|A\$"
    rf"|[{re.escape(_PUNCT + _QUOTES + _CURRENCY)}]|{_ICON_CLASS})"
)
SUFFIX = re.compile(
    r"(?:\.\.+|…|'s|'S|’s|’S|—|–"
    rf"|[{re.escape(_PUNCT + _QUOTES)}]|{_ICON_CLASS}"
    r"|(?<=[0-9])\+"
    r"|(?<=°[FfCcKk])\."
    rf"|(?<=[0-9])(?:[{re.escape(_CURRENCY)}]|US\$|C\$|A\$)"
    rf"|(?<=[0-9])(?:{'|'.join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))})"
    rf"|(?<=[0-9%²\-+{re.escape(_PUNCT + _QUOTES)}])\.|(?<={_LETTER})(?<![{_UPPER}])\."
    rf"|(?<=[{_UPPER}][{_UPPER}])\."
    r")$"
)
INFIX = re.compile(
    r"\.\.+|…|" + _ICON_CLASS
    + r"|(?<=[0-9])[+\-*^](?=[0-9-])"
    + rf"|(?<=[{_LOWER}{re.escape(_QUOTES)}])\.(?=[{_UPPER}{re.escape(_QUOTES)}])"
    + rf"|(?<={_LETTER}),(?={_LETTER})"
    + rf"|(?<=[^\W_])(?:---|--|——|[{_HYPHENS}])(?={_LETTER})"
    + rf"|(?<=[^\W_])[:<>=/](?={_LETTER})"
)
# spaCy's URL rule without its IP-address branch: optional scheme and user, host names, a lower-case TLD
_HOST_CHAR = "A-Za-z0-9\u00a1-\uffff"
URL = re.compile(
    r"(?:[\w+\-.]{2,}://)?(?:\S+(?::\S*)?@)?"
    rf"(?:(?:[{_HOST_CHAR}][{_HOST_CHAR}_-]{{0,62}})?[{_HOST_CHAR}]\.)+[{_LOWER}]{{2,63}}"
    r"(?::\d{2,5})?(?:[/?#]\S*)?$"
)
CLITIC = re.compile(r"(?i)^(.+?)(n['’]t|['’](?:m|re|ve|ll|d))$")
ABBREVIATIONS = frozenset(
    [f"{c}." for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    + "Mr. Mrs. Ms. Dr. St. Jr. Sr. Mt. Gen. Gov. Adm. Rev. Sen. Rep. Prof. Inc. Ltd. Co. Corp. Bros. vs. v. "
    "e.g. E.g. E.G. i.e. I.e. I.E. a.m. p.m. Jan. Feb. Mar. Apr. Jun. Jul. Aug. Sep. Sept. Oct. Nov. Dec. "
    "Ala. Ariz. Ark. Calif. Colo. Conn. Del. Fla. Ga. Ill. Ind. Kan. Ky. La. Mass. Md. Mich. Minn. Miss. "
    "Mo. Mont. Neb. Nev. Okla. Ore. Pa. Tenn. Va. Wash. Wis. D.C. N.C. N.D. N.H. N.J. N.M. N.Y. S.C. S.D. "
    "U.S. U.K. Ph.D. No. no. etc and/or '' :) :( :-) :-( ;) ;-) :D :P :/ :] [: ): (: =) (= <3".split()
)
# contractions written without an apostrophe, which spaCy's English exceptions split (also Title-cased)
_CONTRACTIONS = (
    "aint:ai|nt arent:are|nt cannot:can|not cant:ca|nt cantve:ca|nt|ve couldnt:could|nt "
    "couldntve:could|nt|ve couldve:could|ve darent:dare|nt didnt:did|nt didntve:did|nt|ve doesnt:does|nt "
    "doesntve:does|nt|ve dont:do|nt dontve:do|nt|ve gonna:gon|na gotta:got|ta hadnt:had|nt "
    "hadntve:had|nt|ve hasnt:has|nt havent:have|nt hed:he|d hedve:he|d|ve hellve:he|ll|ve hes:he|s "
    "howd:how|d howdve:how|d|ve howll:how|ll howllve:how|ll|ve howre:how|re hows:how|s howve:how|ve "
    "id:i|d idve:i|d|ve illve:i|ll|ve im:i|m ima:i|m|a isnt:is|nt itd:it|d itdve:it|d|ve itll:it|ll "
    "itllve:it|ll|ve ive:i|ve maynt:may|nt mayntve:may|nt|ve mightnt:might|nt mightntve:might|nt|ve "
    "mightve:might|ve mustnt:must|nt mustntve:must|nt|ve mustve:must|ve neednt:need|nt "
    "needntve:need|nt|ve notve:not|ve oughtnt:ought|nt oughtntve:ought|nt|ve shant:sha|nt "
    "shantve:sha|nt|ve shedve:she|d|ve shellve:she|ll|ve shes:she|s shouldnt:should|nt "
    "shouldntve:should|nt|ve shouldve:should|ve thatd:that|d thatdve:that|d|ve thatll:that|ll "
    "thatllve:that|ll|ve thats:that|s thered:there|d theredve:there|d|ve therell:there|ll "
    "therellve:there|ll|ve therere:there|re theres:there|s thereve:there|ve thesed:these|d "
    "thesedve:these|d|ve thesell:these|ll thesellve:these|ll|ve thesere:these|re theseve:these|ve "
    "theyd:they|d theydve:they|d|ve theyll:they|ll theyllve:they|ll|ve theyre:they|re theyve:they|ve "
    "thisd:this|d thisdve:this|d|ve thisll:this|ll thisllve:this|ll|ve thiss:this|s thosed:those|d "
    "thosedve:those|d|ve thosell:those|ll thosellve:those|ll|ve thosere:those|re thoseve:those|ve "
    "wasnt:was|nt wed:we|d wedve:we|d|ve wellve:we|ll|ve werent:were|nt weve:we|ve whatd:what|d "
    "whatdve:what|d|ve whatll:what|ll whatllve:what|ll|ve whatre:what|re whats:what|s whatve:what|ve "
    "whend:when|d whendve:when|d|ve whenll:when|ll whenllve:when|ll|ve whenre:when|re whens:when|s "
    "whenve:when|ve whered:where|d wheredve:where|d|ve wherell:where|ll wherellve:where|ll|ve "
    "wherere:where|re wheres:where|s whereve:where|ve whod:who|d whodve:who|d|ve wholl:who|ll "
    "whollve:who|ll|ve whos:who|s whove:who|ve whyd:why|d whydve:why|d|ve whyll:why|ll whyllve:why|ll|ve "
    "whyre:why|re whys:why|s whyve:why|ve wont:wo|nt wontve:wo|nt|ve wouldnt:would|nt "
    "wouldntve:would|nt|ve wouldve:would|ve yall:y|all youd:you|d youdve:you|d|ve youll:you|ll "
    "youllve:you|ll|ve youre:you|re youve:you|ve "
)
CONTRACTIONS = {k: v.split("|") for k, v in (item.split(":") for item in "".join(_CONTRACTIONS).split())}
CONTRACTIONS.update({k.title(): [v[0].title(), *v[1:]] for k, v in list(CONTRACTIONS.items())})
_LONGEST_SUFFIX = 6  # characters: "mbar", "km³", "US$" and one-character marks all fit
_SIMPLE_SUFFIXES = frozenset(",;:!?)]}\"'")
_ALPHA_ONLY = re.compile(r"[^\W\d_]+$")


def split_words(text: str) -> list[str]:
    """The words and symbols of ``text`` as spaCy's English tokenizer would cut them (whitespace dropped)."""
    out: list[str] = []
    append = out.append
    contractions = CONTRACTIONS
    for chunk in text.split():
        if chunk.isalpha() or chunk.isdigit():
            if chunk in contractions:
                out.extend(contractions[chunk])
            else:
                append(chunk)  # nothing to strip or split: most words
            continue
        if len(chunk) == 1:
            append(chunk)  # a lone symbol
            continue
        last = chunk[-1]
        head = chunk[:-1]
        if last in _SIMPLE_SUFFIXES and head.isalpha() and head not in contractions:
            append(head)  # word, word; word: word! word? word) and a period after a lower-case letter
            append(last)
        elif last == "." and head.isalpha() and head[-1].islower() and chunk not in ABBREVIATIONS \
                and head not in contractions:
            append(head)
            append(last)
        else:
            out.extend(_split_chunk(chunk))
    return out


@lru_cache(maxsize=1 << 16)  # code and markup repeat the same chunks ("(self,", "});") over and over
def _split_chunk(chunk: str) -> tuple[str, ...]:
    return tuple(_split_affixes(chunk))


def _special(s: str) -> list[str] | None:
    if s in ABBREVIATIONS:
        return [s]
    if s in CONTRACTIONS:
        return CONTRACTIONS[s]
    if "'" in s or "’" in s:
        m = CLITIC.match(s)
        if m and _ALPHA_ONLY.match(m.group(1)):
            return [m.group(1), m.group(2)]
    return None


def _suffix_length(s: str) -> int:
    """Length of the suffix at the end of ``s`` (0 if none). Suffixes are short, so only the tail is
    searched, except for a run of dots, which is one suffix however long."""
    if s.endswith(".."):
        return len(s) - len(s.rstrip("."))
    m = SUFFIX.search(s, max(0, len(s) - _LONGEST_SUFFIX))
    return len(s) - m.start() if m else 0


def _split_affixes(chunk: str) -> list[str]:
    """spaCy's affix loop: strip prefixes and suffixes until none applies, then split the rest at infixes."""
    prefixes: list[str] = []
    suffixes: list[str] = []
    s = chunk
    special = None
    while s:
        special = _special(s)
        if special is not None:
            break
        pre = PREFIX.match(s)
        pre_len = pre.end() if pre else 0
        if pre_len and len(s) > pre_len:
            special = _special(s[pre_len:])
            if special is not None:
                prefixes.append(s[:pre_len])
                s = s[pre_len:]
                break
        suf_len = _suffix_length(s[pre_len:] if pre_len else s)
        if suf_len and len(s) > suf_len:
            special = _special(s[: len(s) - suf_len])
            if special is not None:
                suffixes.append(s[len(s) - suf_len :])
                s = s[: len(s) - suf_len]
                break
        if pre_len and suf_len and pre_len + suf_len <= len(s):
            prefixes.append(s[:pre_len])
            suffixes.append(s[len(s) - suf_len :])
            s = s[pre_len : len(s) - suf_len]
        elif pre_len:
            prefixes.append(s[:pre_len])
            s = s[pre_len:]
        elif suf_len:
            suffixes.append(s[len(s) - suf_len :])
            s = s[: len(s) - suf_len]
        else:
            break
    tokens = prefixes
    if s:
        if special is not None:
            tokens.extend(special)
        elif URL.match(s):
            tokens.append(s)
        else:
            start = 0
            for m in INFIX.finditer(s):
                if m.start() > start:
                    tokens.append(s[start : m.start()])
                if m.end() > m.start():
                    tokens.append(m.group())
                start = m.end()
            if start < len(s):
                tokens.append(s[start:])
    tokens.extend(reversed(suffixes))
    return tokens
