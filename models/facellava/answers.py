"""Structured results parsed from Face-LLaVA's free-text answers.

The value types below are part of the `FaceEvent` wire format; the parsers turn an
answer text into one of them, or `None` when the text says nothing we can trust.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.facellava.tasks import Task as Task  # re-exported: callers import it from here too


class EmotionResult(BaseModel):
    """One of the closed emotion vocabulary (`EMOTIONS`), and the word the model used."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["emotion"] = "emotion"
    label: str
    matched_text: str


class AgeResult(BaseModel):
    """An age estimate in years; a range answer keeps its bounds and gives its middle."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["age"] = "age"
    years: float
    range_years: tuple[float, float] | None = None


class AttributesResult(BaseModel):
    """CelebA attribute names the description asserts (`present`) or denies (`absent`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["attributes"] = "attributes"
    present: list[str]
    absent: list[str] = []


class ActionUnit(BaseModel):
    """A FACS action unit: its number and canonical name."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    number: int
    name: str


class ActionUnitsResult(BaseModel):
    """The action units the answer names as active."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["action_units"] = "action_units"
    units: list[ActionUnit]


TaskResult = Annotated[
    EmotionResult | AgeResult | AttributesResult | ActionUnitsResult,
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------------------
# Parsing: text → result, or None. Shared pieces first (sentences, negation), then one
# parser per task. Everything is plain regular expressions over lower-cased text.
# --------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<!\d)[.!?]+(?=\s|$)|\n+")

# Words that open a negated scope ("not angry", "no sign of fear", "without a beard").
# "not only", "no doubt", "no longer" and the like do not negate what follows.
_NEGATION_CUE = re.compile(
    r"n't\b|\b(?:not(?!\s+only\b)|no(?!\s+(?:doubt|question|longer)\b)|never|without|"
    r"neither|nor|none|lacks?|lacking|absence\s+of|free\s+of|devoid\s+of|"
    r"rather\s+than|instead\s+of|hardly|cannot)\b"
)

# Where a negated scope ends: clause punctuation, contrast words, or a comma/"and" that
# starts a new clause ("no glasses, and he has a beard").
_SCOPE_BREAK = re.compile(
    r"[;:()]|\s[-–—]\s"
    r"|\b(?:but|however|although|though|whereas|while|yet|instead(?!\s+of)|rather(?!\s+than)|"
    r"which|who|that)\b"
    r"|(?:,|\band\b|\bwith\b)\s+(?:he|she|they|it|his|her|their|the|there|this|has|have|had|"
    r"is|are|was|were|wears|wearing|shows|showing|appears|appearing|looks|looking|seems|"
    r"seeming|displays|displaying|exhibits|features|also|suggesting|indicating|as|and|with)\b"
)

# "Eyeglasses are not present", "AU4 is absent": a denial that follows the term.
_POST_NEGATION = re.compile(
    r"^[^,;:.]{0,25}?\b(?:is|are|was|were|seems?|appears?)(?:\s+to\s+be)?\s+"
    r"(?:not\b|absent\b|missing\b|inactive\b)|^[^,;:.]{0,25}?\b(?:is|are|was|were)n't\b"
)


def _sentences(text: str) -> list[str]:
    """Split lower-cased answer text into sentences (decimal points do not split)."""
    return [s.strip() for s in _SENTENCE_END.split(text.lower()) if s.strip()]


def _is_negated(sentence: str, start: int, end: int) -> bool:
    """Whether the term at `sentence[start:end]` sits in a negated scope of its sentence."""
    before = sentence[:start]
    cues = list(_NEGATION_CUE.finditer(before))
    if cues:
        gap = before[cues[-1].end() :]
        if not _SCOPE_BREAK.search(gap):
            return True
    after = sentence[end:]
    breaker = _SCOPE_BREAK.search(after)
    clause_after = after[: breaker.start()] if breaker else after
    return bool(_POST_NEGATION.search(clause_after))


def _alternation(words: list[str]) -> str:
    """A regex alternation of phrases, longest first so "full beard" beats "beard"."""
    return "|".join(sorted(words, key=len, reverse=True))


# ---- emotion -------------------------------------------------------------------------

EMOTIONS: tuple[str, ...] = (
    "happy",
    "sad",
    "angry",
    "fearful",
    "surprised",
    "disgusted",
    "neutral",
    "contemptuous",
    "anxious",
    "helpless",
    "disappointed",
)
"""The closed emotion vocabulary, MAFW's eleven classes: the seven basic (happy, sad, angry,
fearful, surprised, disgusted, neutral), contempt, anxiety, helplessness, disappointment."""

# Words that name an emotion. Spaces in a phrase match any whitespace or a hyphen.
_EMOTION_WORDS: dict[str, list[str]] = {
    "happy": [
        "happy", "happiness", "happily", "joy", "joyful", "joyous", "cheerful", "cheerfulness",
        "delighted", "delight", "pleased", "glad", "contentment", "amused", "amusement",
        "elated", "elation", "gleeful", "glee", r"content(?!\s+(?:of|in|is|shown|from))",
    ],
    "sad": [
        "sad", "sadness", "sadly", "sorrow", "sorrowful", "unhappy", "unhappiness", "upset",
        "melancholy", "melancholic", "gloomy", "grief", "grieving", "depressed", "downcast",
        "dejected", "despair", "despondent", "heartbroken", "mournful", "distressed",
        "distress",
    ],
    "angry": [
        "angry", "anger", "angrily", "furious", "fury", "rage", "enraged", "irritated",
        "irritation", "annoyed", "annoyance", "frustrated", "frustration", "hostile",
        "hostility", "outraged", "irate", "mad",
    ],
    "fearful": [
        "fear", "fearful", "afraid", "scared", "frightened", "terrified", "terror", "panic",
        "panicked", "alarmed", "fright",
    ],
    "surprised": [
        "surprise", "surprised", "astonished", "astonishment", "amazed", "amazement",
        "shocked", "shock", "startled", "stunned",
    ],
    "disgusted": [
        "disgust", "disgusted", "revulsion", "repulsed", "revolted", "grossed out",
        "aversion", "distaste",
    ],
    "neutral": [
        "neutral", "neutrality", "calm", "calmness", "expressionless", "emotionless",
        "impassive", "blank expression", "blank face", "stoic", "indifferent", "indifference",
        r"no\s+(?:particular|strong|obvious|clear|visible|discernible|specific|apparent)?\s*"
        r"(?:emotion|emotions|emotional\s+expression)",
    ],
    "contemptuous": [
        "contempt", "contemptuous", "disdain", "disdainful", "scorn", "scornful",
        "condescending", "sneer", "sneering",
    ],
    "anxious": [
        "anxious", "anxiously", "anxiety", "worried", "worry", "worrying", "nervous",
        "nervously", "nervousness", "uneasy", "unease", "uneasiness", "apprehensive",
        "apprehension", "restless", "restlessness",
    ],
    "helpless": [
        "helpless", "helplessly", "helplessness", "powerless", "powerlessness", "hopeless",
        "hopelessness", "resigned", "resignation", "defeated", "at a loss",
    ],
    "disappointed": [
        "disappointed", "disappointment", "disappointedly", "let down", "letdown",
        "disillusioned", "disillusionment", "dissatisfied", "dissatisfaction", "disheartened",
    ],
}  # fmt: skip

# Expression cues used only when no emotion word is asserted ("the person is smiling").
_EMOTION_CUES: dict[str, list[str]] = {
    "happy": ["smile", "smiles", "smiling", "grin", "grins", "grinning", "laugh", "laughs",
              "laughing", "beaming"],
    "sad": ["crying", "cries", "tears", "tearful", "weeping", "sobbing"],
    "angry": ["scowl", "scowls", "scowling", "glaring"],
    "contemptuous": ["smirk", "smirks", "smirking"],
}  # fmt: skip


def _term_pattern(words: list[str]) -> str:
    return r"\b(?:" + _alternation([w.replace(" ", r"[\s-]+") for w in words]) + r")\b"


def _labelled_regex(table: dict[str, list[str]]) -> re.Pattern[str]:
    """One regex whose named groups say which label matched."""
    groups = [f"(?P<{label}>{_term_pattern(words)})" for label, words in table.items()]
    return re.compile("|".join(groups))


_EMOTION_RE = _labelled_regex(_EMOTION_WORDS)
_EMOTION_CUE_RE = _labelled_regex(_EMOTION_CUES)

# "The emotion shown is X", "the dominant emotion appears to be X": a committed label.
_EMOTION_STATEMENT = re.compile(
    r"\bemotions?\b[^.;,]{0,60}?\b(?:is|are|was|appears\s+to\s+be|seems\s+to\s+be|would\s+be|"
    r"can\s+be\s+(?:described|identified|classified|recognized|recognised)\s+as|of)\s+"
    r"(?:(?:that\s+of|one\s+of|a\s+sense\s+of|an?|most\s+likely|likely|probably|clearly|"
    r"primarily|mainly|mostly|predominantly)\s+)*"
)


def _asserted(regex: re.Pattern[str], sentence: str) -> list[tuple[str, re.Match[str]]]:
    """(label, match) of every non-negated labelled term in a sentence, in text order."""
    found = []
    for match in regex.finditer(sentence):
        label = match.lastgroup
        if label and not _is_negated(sentence, match.start(), match.end()):
            found.append((label, match))
    return found


def parse_emotion(text: str) -> EmotionResult | None:
    """The emotion label the answer commits to, or None if it names none.

    Priority: an explicit statement ("the emotion shown is sadness"); else the first
    non-negated emotion word in text order (so "a mix of surprise and fear" → surprised);
    else an expression cue ("smiling" → happy). Negated words never count.
    """
    sentences = _sentences(text)
    for sentence in sentences:
        for statement in _EMOTION_STATEMENT.finditer(sentence):
            match = _EMOTION_RE.match(sentence, statement.end())
            if match and match.lastgroup and not _is_negated(sentence, match.start(), match.end()):
                return EmotionResult(label=match.lastgroup, matched_text=match.group(0))
    for regex in (_EMOTION_RE, _EMOTION_CUE_RE):
        for sentence in sentences:
            found = _asserted(regex, sentence)
            if found:
                label, match = found[0]
                return EmotionResult(label=label, matched_text=match.group(0))
    return None


# ---- age -----------------------------------------------------------------------------

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19,
}  # fmt: skip
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip
_DECADE_WORDS = {
    "twenties": 20, "thirties": 30, "forties": 40, "fifties": 50, "sixties": 60,
    "seventies": 70, "eighties": 80, "nineties": 90,
}  # fmt: skip
_NUMBER_WORD = re.compile(
    r"\b(?:(?P<tens>"
    + "|".join(_TENS)
    + r")(?:[\s-]+(?P<unit>"
    + "|".join(list(_UNITS)[1:10])
    + r"))?|(?P<small>"
    + "|".join(_UNITS)
    + r"))\b"
)

_AGE_UNIT = r"(?:years?|yrs?|y/?o|y\.o\.?)"
_PARTS = r"early|mid|middle|late"


def _band(n: int) -> str:
    """One age band with group suffix n: '[early|mid|late|mid-to-late] 30s|thirties|teens'."""
    return (
        rf"(?:(?P<part{n}>{_PARTS})(?:\s*(?:-|to|-to-)\s*(?P<upto{n}>{_PARTS}))?(?:\s*-\s*|\s+)?)?"
        rf"(?:(?P<dnum{n}>[1-9]0)\s*'?s\b|(?P<dword{n}>" + "|".join(_DECADE_WORDS) + rf")\b"
        rf"|(?P<teens{n}>teens|teenager|teenaged|teenage)\b)"
    )


# Bands joined into a range: "late 20s to early 30s", "in their 20s or 30s".
_BAND_RANGE = re.compile(
    r"\b" + _band(1) + r"\s*(?:to|-|–|—|or|and|through|into)\s*"
    r"(?:(?:the|their|his|her)\s+)?" + _band(2)
)
_AGE_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("bands", _BAND_RANGE),
    ("band", re.compile(r"\b" + _band(1))),
    (
        "range",
        re.compile(
            r"(?:\bbetween\s+(?:the\s+ages?\s+of\s+)?(?P<lo>\d{1,3})\s+and\s+(?P<hi>\d{1,3})"
            r"|\b(?P<lo2>\d{1,3})\s*(?:-|–|—|to)\s*(?P<hi2>\d{1,3})(?!\s*%))"
            r"(?=\s*(?:" + _AGE_UNIT + r"|\)|,|\.|$|\s))"
        ),
    ),
    (
        "single",
        re.compile(
            r"\b(?P<num>\d{1,3}(?:\.\d)?)\s*(?:-\s*)?(?=" + _AGE_UNIT + r"\b|year-old)"
            r"|\b(?:aged?|ages?\s+of|age\s*(?::|is|of|at|around|about|approximately|roughly)"
            r"|around|about|approximately|roughly|nearly|almost|maybe|perhaps|probably|likely"
            r"|estimated(?:\s+at)?|estimate\s+of)"
            r"\s*(?:\w+\s+){0,2}?(?P<num2>\d{1,3}(?:\.\d)?)\b"
            # "is 27." / "looks 40 or so": a bare number only where nothing else follows.
            r"|\b(?:appears\s+to\s+be|seems\s+to\s+be|looks|is)\s+(?P<num3>\d{1,3})"
            r"(?=\s*(?:[.,;!)]|$|\s(?:or|and|years?)\b))"
            # "I estimate them to be 32 based on ...": a number right after "to be" is an
            # age unless a unit or count follows it.
            r"|\bto\s+be\s+(?P<num4>\d{1,3})\b(?!\.\d|\s*(?:%|percent|of\b|people|persons|"
            r"faces|individuals|times|frames|seconds|minutes|hours|days|weeks|months|cm|kg))"
        ),
    ),
]


def _words_to_digits(text: str) -> str:
    """'twenty-five' → '25', 'thirty' → '30' (decade words like 'thirties' stay)."""

    def replace(match: re.Match[str]) -> str:
        if match.group("tens"):
            value = _TENS[match.group("tens")] + _UNITS.get(match.group("unit") or "zero", 0)
        else:
            value = _UNITS[match.group("small")]
        return str(value)

    return _NUMBER_WORD.sub(replace, text)


def _span_years(lo: float, hi_inclusive: float) -> AgeResult:
    """A band of whole years lo..hi: its middle treats the band as [lo, hi + 1)."""
    return AgeResult(years=(lo + hi_inclusive + 1) / 2, range_years=(lo, hi_inclusive))


def _band_bounds(part: str | None, upto: str | None, low: int, width: int) -> tuple[int, int]:
    """Whole years lo..hi of a band starting at `low`, or of its early/mid/late part.

    'mid-20s' → 23..26, 'late 30s' → 36..39, 'mid-to-late 30s' → 33..39; teens are 13..19
    with thirds 13..15, 15..17, 17..19.
    """
    if width == 7:  # teens
        thirds = {"early": (13, 15), "mid": (15, 17), "middle": (15, 17), "late": (17, 19)}
    else:
        thirds = {
            "early": (low, low + 3),
            "mid": (low + 3, low + 6),
            "middle": (low + 3, low + 6),
            "late": (low + width - 4, low + width - 1),
        }
    if part is None:
        return low, low + width - 1
    lo, hi = thirds[part]
    if upto is not None:
        hi = max(hi, thirds[upto][1])
    return lo, hi


def _band_of(match: re.Match[str], n: int) -> tuple[int, int]:
    """The years lo..hi of band n of a `_band` match."""
    part, upto = match.group(f"part{n}"), match.group(f"upto{n}")
    if match.group(f"teens{n}"):
        return _band_bounds(part, upto, 13, 7)
    low = int(match.group(f"dnum{n}") or _DECADE_WORDS[match.group(f"dword{n}")])
    return _band_bounds(part, upto, low, 10)


_SINGLE_GROUPS = ("num", "num2", "num3", "num4")


def _age_from_match(kind: str, match: re.Match[str]) -> AgeResult | None:
    if kind == "range":
        lo = float(match.group("lo") or match.group("lo2"))
        hi = float(match.group("hi") or match.group("hi2"))
        if not 0 < lo < hi <= 120 or hi - lo > 30:
            return None
        return AgeResult(years=(lo + hi) / 2, range_years=(lo, hi))
    if kind == "band":
        return _span_years(*_band_of(match, 1))
    if kind == "bands":
        (lo, _), (_, hi) = _band_of(match, 1), _band_of(match, 2)
        return _span_years(lo, hi) if lo < hi else None
    number = next(match.group(g) for g in _SINGLE_GROUPS if match.group(g) is not None)
    years = float(number)
    return AgeResult(years=years) if 0 < years <= 120 else None


def _age_number_start(kind: str, match: re.Match[str]) -> int:
    if kind != "single":
        return match.start()
    group = next(g for g in _SINGLE_GROUPS if match.group(g) is not None)
    return match.start(group)


def parse_age(text: str) -> AgeResult | None:
    """The first age the answer states: a number, a range, a decade or teens; else None.

    "20-25" → 22.5 with range (20, 25); "in his thirties" → 35 with range (30, 39);
    "mid-20s" → 25 with range (23, 26); "around 35 years old" → 35; "to be 32" → 32;
    "late 20s to early 30s" → 30 with range (26, 33).
    """
    lowered = _words_to_digits(text.lower())
    if re.fullmatch(r"\s*(\d{1,3})\s*\.?\s*", lowered):
        years = float(lowered.strip(" .\n"))
        return AgeResult(years=years) if 0 < years <= 120 else None
    best: tuple[int, AgeResult] | None = None
    for kind, regex in _AGE_PATTERNS:
        for match in regex.finditer(lowered):
            result = _age_from_match(kind, match)
            # Compare where the numbers start: "looks to be 20 to 25" is one range.
            position = _age_number_start(kind, match)
            if result is not None and (best is None or position < best[0]):
                best = (position, result)
                break
    return best[1] if best else None


# ---- attributes ----------------------------------------------------------------------

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip
"""The 40 CelebA attribute names, in CelebA's order."""


def _hair(colour: str) -> str:
    """'<colour> hair', '<colour>, wavy hair', 'hair is <colour>', '<colour>-haired'."""
    return (
        rf"(?:{colour})(?:[\s,-]+(?!hair\b)[a-z]+){{0,2}}?[\s,-]+hair(?:ed)?\b"
        rf"|\bhair\s+(?:is|appears|looks|seems)\s+(?:\w+\s+){{0,2}}?(?:{colour})\b"
    )


_BROW = r"(?:eye)?brows?"
_HAIR_COLOURS_AFTER_DARK = r"brown|blond|blonde|red|gray|grey|auburn|chestnut"

VOCABULARY_FILE = Path(__file__).with_name("answer_vocabulary.toml")
"""The parser's vocabulary (data, not code): which words say which CelebA attribute, and
the names the model uses for action units."""

_SHARED_PIECES = {"{BROW}": _BROW, "{HAIR_COLOURS_AFTER_DARK}": _HAIR_COLOURS_AFTER_DARK}
_RULE_KEYS = frozenset({"attribute", "pattern", "hair", "also", "says", "negatable"})


def _vocabulary_error(what: str) -> ValueError:
    return ValueError(f"{VOCABULARY_FILE.name}: {what}")


def _read_vocabulary() -> dict[str, Any]:
    try:
        return tomllib.loads(VOCABULARY_FILE.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise _vocabulary_error(f"not TOML: {exc}") from exc


_VOCABULARY = _read_vocabulary()


def _rule_text(value: object, rule: dict[str, Any]) -> str:
    """A rule's regex text: a string or a list of strings joined, placeholders filled."""
    if isinstance(value, list) and all(isinstance(piece, str) for piece in value):
        value = "".join(value)
    if not isinstance(value, str):
        raise _vocabulary_error(f"a pattern is a string or a list of strings: {rule!r}")
    for placeholder, piece in _SHARED_PIECES.items():
        value = value.replace(placeholder, piece)
    left = re.search(r"\{[A-Z_]+\}", value)
    if left is not None:
        raise _vocabulary_error(f"unknown placeholder {left.group(0)}: {rule!r}")
    return value


def _attribute_rule(rule: dict[str, Any]) -> tuple[str, re.Pattern[str], bool, bool]:
    """(attribute, compiled regex, says_present, negatable) of one [[attribute]] rule;
    `ValueError` naming the file for a rule it cannot read."""
    if not isinstance(rule, dict):
        raise _vocabulary_error(f"an [[attribute]] rule is a table: {rule!r}")
    name = rule.get("attribute")
    if name not in CELEBA_ATTRIBUTES:
        raise _vocabulary_error(f"not a CelebA attribute: {rule!r}")
    unknown = sorted(set(rule) - _RULE_KEYS)
    if unknown:
        raise _vocabulary_error(f"unknown keys {unknown}: {rule!r}")
    if ("pattern" in rule) == ("hair" in rule):
        raise _vocabulary_error(f"a rule has either pattern or hair: {rule!r}")
    if "also" in rule and "hair" not in rule:
        raise _vocabulary_error(f"also goes with hair: {rule!r}")
    says, negatable = rule.get("says", "present"), rule.get("negatable", True)
    if says not in ("present", "absent") or not isinstance(negatable, bool):
        raise _vocabulary_error(f"says is present or absent, negatable true or false: {rule!r}")
    if "pattern" in rule:
        pattern = _rule_text(rule["pattern"], rule)
    else:
        pattern = _hair(_rule_text(rule["hair"], rule)) + _rule_text(rule.get("also", ""), rule)
    try:
        regex = re.compile(rf"\b(?:{pattern})\b")
    except re.error as exc:
        raise _vocabulary_error(f"{name}: bad regex ({exc})") from exc
    return name, regex, says == "present", negatable


def _action_unit_names(table: object) -> dict[int, list[str]]:
    """`[action_unit_names]`: AU number → regexes; `ValueError` naming the file otherwise."""
    if not isinstance(table, dict):
        raise _vocabulary_error("[action_unit_names] is a table")
    names_of: dict[int, list[str]] = {}
    for number, names in table.items():
        if (
            not number.isdigit()
            or int(number) not in FACS_ACTION_UNITS
            or not isinstance(names, list)
            or not all(isinstance(name, str) for name in names)
        ):
            raise _vocabulary_error(
                f"action_unit_names.{number}: a list of regexes for a FACS action unit"
            )
        for name in names:
            try:
                re.compile(name)
            except re.error as exc:
                raise _vocabulary_error(f"action_unit_names.{number}: bad regex {name!r}") from exc
        names_of[int(number)] = list(names)
    return names_of


# An asserted match of a rule says the attribute is present (or absent, for says =
# "absent"); a negated match says the opposite when the rule is negatable.
_ATTRIBUTE_RES = [_attribute_rule(rule) for rule in _VOCABULARY.get("attribute", [])]
if not _ATTRIBUTE_RES:
    raise _vocabulary_error("no [[attribute]] rules")


def parse_attributes(text: str) -> AttributesResult | None:
    """CelebA attributes the description asserts or denies; None when it names none.

    Synonyms map to CelebA names ("spectacles" → Eyeglasses, "he" → Male, "without a
    beard" → No_Beard present). Negation is scoped to its clause within one sentence.
    The first mention of an attribute decides it; lists come back in CelebA order.
    """
    decided: dict[str, tuple[int, bool]] = {}
    offset = 0
    for sentence in _sentences(text):
        claimed: dict[str, list[tuple[int, int]]] = {}
        for name, regex, says_present, negatable in _ATTRIBUTE_RES:
            spans = claimed.setdefault(name, [])
            for match in regex.finditer(sentence):
                # Another rule of this attribute already read these words ("no makeup").
                if any(s < match.end() and match.start() < e for s, e in spans):
                    continue
                spans.append((match.start(), match.end()))
                negated = negatable and _is_negated(sentence, match.start(), match.end())
                position = offset + match.start()
                if name not in decided or position < decided[name][0]:
                    decided[name] = (position, says_present != negated)
        offset += len(sentence) + 1
    if not decided:
        return None
    present = [name for name in CELEBA_ATTRIBUTES if decided.get(name, (0, False))[1]]
    absent = [name for name in CELEBA_ATTRIBUTES if name in decided and not decided[name][1]]
    return AttributesResult(present=present, absent=absent)


# ---- action units --------------------------------------------------------------------

FACS_ACTION_UNITS: dict[int, str] = {
    1: "Inner Brow Raiser", 2: "Outer Brow Raiser", 4: "Brow Lowerer", 5: "Upper Lid Raiser",
    6: "Cheek Raiser", 7: "Lid Tightener", 8: "Lips Toward Each Other", 9: "Nose Wrinkler",
    10: "Upper Lip Raiser", 11: "Nasolabial Deepener", 12: "Lip Corner Puller",
    13: "Cheek Puffer", 14: "Dimpler", 15: "Lip Corner Depressor", 16: "Lower Lip Depressor",
    17: "Chin Raiser", 18: "Lip Puckerer", 19: "Tongue Show", 20: "Lip Stretcher",
    21: "Neck Tightener", 22: "Lip Funneler", 23: "Lip Tightener", 24: "Lip Pressor",
    25: "Lips Part", 26: "Jaw Drop", 27: "Mouth Stretch", 28: "Lip Suck",
    29: "Jaw Thrust", 30: "Jaw Sideways", 31: "Jaw Clencher", 32: "Lip Bite",
    33: "Cheek Blow", 34: "Cheek Puff", 35: "Cheek Suck", 36: "Tongue Bulge", 37: "Lip Wipe",
    38: "Nostril Dilator", 39: "Nostril Compressor", 41: "Lid Droop", 42: "Slit",
    43: "Eyes Closed", 44: "Squint", 45: "Blink", 46: "Wink",
}  # fmt: skip
"""Canonical FACS names of the action units 1–46 (3 and 40 are not defined)."""

# Name variants the model writes ("lip corner pull", "brow lowering", "lips parted").
_AU_EXTRA_NAMES = _action_unit_names(_VOCABULARY.get("action_unit_names", {}))


def _au_name_regex(number: int) -> str:
    names = [FACS_ACTION_UNITS[number].lower(), *_AU_EXTRA_NAMES.get(number, [])]
    variants = []
    for name in names:
        words = name.split()
        # The canonical "-er" noun also matches the plain verb: "cheek raise(r)".
        if words[-1].endswith("er") and "(" not in name:
            words[-1] = words[-1] + "?"
        variants.append(r"[\s-]+".join(words))
    return r"\b(?:" + _alternation(variants) + r")\b"


_AU_NAME_RE = re.compile("|".join(f"(?P<au{n}>{_au_name_regex(n)})" for n in FACS_ACTION_UNITS))
# "AU6", "AU 12B", "AU-4", "AUs 1, 2 and 4", "action units 6 and 12", "AU1+2".
_AU_NUMBERS_RE = re.compile(
    r"\b(?:aus?|action\s+units?)\s*[-#:]?\s*(?P<first>\d{1,2})[a-e]?\b"
    r"(?P<more>(?:\s*(?:,|\+|/|&|\band\b|\bor\b|,\s*and\b)\s*(?:aus?\s*-?\s*)?\d{1,2}[a-e]?\b)*)"
)
_NO_UNITS_RE = re.compile(
    r"\bno\s+(?:active\s+|facial\s+|visible\s+)*action\s+units?\b|\bnone\s+of\s+the\s+action\s+units"
)


def parse_action_units(text: str) -> ActionUnitsResult | None:
    """The FACS action units named as active, sorted and unique; None when none is named.

    Numbers ("AU6", "AUs 1, 2 and 4") and names ("lip corner puller") both count; a
    negated mention ("AU4 is not active", "no brow lowerer") does not. An explicit "no
    action units are active" gives an empty list.
    """
    active: set[int] = set()
    explicit_none = False
    for sentence in _sentences(text):
        if _NO_UNITS_RE.search(sentence):
            explicit_none = True
        for match in _AU_NUMBERS_RE.finditer(sentence):
            numbers = [int(match.group("first"))]
            numbers += [int(n) for n in re.findall(r"(\d{1,2})[a-e]?\b", match.group("more"))]
            if not _is_negated(sentence, match.start(), match.end()):
                active.update(n for n in numbers if n in FACS_ACTION_UNITS)
        for match in _AU_NAME_RE.finditer(sentence):
            if match.lastgroup and not _is_negated(sentence, match.start(), match.end()):
                active.add(int(match.lastgroup.removeprefix("au")))
    if not active and not explicit_none:
        return None
    units = [ActionUnit(number=n, name=FACS_ACTION_UNITS[n]) for n in sorted(active)]
    return ActionUnitsResult(units=units)


# ---- dispatch ------------------------------------------------------------------------

_PARSERS = {
    Task.EMOTION: parse_emotion,
    Task.AGE: parse_age,
    Task.ATTRIBUTES: parse_attributes,
    Task.ACTION_UNITS: parse_action_units,
}


def parse_answer(task: Task, text: str) -> TaskResult | None:
    """Parse one answer text for `task`; None when the text cannot be parsed."""
    if not text or not text.strip():
        return None
    return _PARSERS[Task(task)](text)
