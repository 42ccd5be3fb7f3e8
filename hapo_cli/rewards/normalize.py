"""Answer normalisation for exact-match grading (DAPO-style, extended).

`normalize_answer(s)` maps equivalent spellings of a final answer onto one string, so that
`normalize_answer(pred) == normalize_answer(gold)` is a cheap, predictable first check; anything
it cannot settle goes to math-verify (`hapo_cli.rewards.verify`). What it does, in order:

0. Unicode spellings become ASCII/LaTeX (`unicode_to_latex`): full-width and other-script decimal
   digits (`４２`, `٤٢`) -> `42`, vulgar fractions (`½`) -> `\\frac{1}{2}`, superscripts (`x²`) ->
   `x^{2}`, `√`, `π`, `∞`, `×`, `·`, `−`, `≤`, ... and Greek letters -> their LaTeX commands. Any
   other non-ASCII character is LEFT IN PLACE: the grader's parser does not know it, so an answer
   holding one is never equal to anything but its exact spelling (`850二十` is not `850`);
1. unwrap an outer `\\boxed{...}`/`\\fbox{...}`; drop `$`, `\\(` `\\)`, `\\[` `\\]`, Markdown `**`;
2. drop sizing/spacing commands: `\\left`, `\\right`, `\\big..`, `\\!`, `\\,`, `\\;`, `\\:`, `~`,
   `\\displaystyle`; `\\dfrac`/`\\tfrac` -> `\\frac`;
3. degrees (`^\\circ`, `^{\\circ}`, `°`, `\\degree`) and percent (`\\%`, `%`) are dropped, the
   dollar sign `\\$` too (so "50\\%" == "50", "30^\\circ" == "30");
4. `\\text{..}`, `\\mbox{..}`, `\\mathrm{..}`, `\\textbf{..}`, ... are unwrapped; a trailing unit
   (cm, meters, inches, square units, dollars, degrees, ...; a `^2`/`^3` power allowed) after a
   number is dropped;
5. a leading `x =` (one short variable name and a single `=`) is dropped;
6. `\\sqrt2` -> `\\sqrt{2}`, `\\frac12` -> `\\frac{1}{2}`; multiple-choice `(A)` -> `A`;
7. all whitespace (but one space between two digits: `8 16` is not `816`; `1 000` is 1000) and ONE
   trailing `.`/`,`/`;`/`:` are removed (`5;;` is not `5`);
8. plain decimals are canonical: `1,000` -> `1000` (groups of exactly three digits only),
   `.5` -> `0.5`, `2.50` -> `2.5`, `3.0` -> `3`, `+4` -> `4`, `-0` -> `0`.

It never turns one number into a different number: `1/2` stays `1/2`, `12` never becomes `1.2`,
`0.5` is not `50%` (percent is dropped, not converted: "50\\%" normalises to "50").
"""

from __future__ import annotations

import re
import unicodedata

from hapo_cli.rewards.extract import _scan_braced

# Unit words dropped after a number (lower-case; plural forms listed explicitly).
UNIT_WORDS = frozenset(
    """
    unit units sq square squared cubic cm centimeter centimeters centimetre centimetres mm millimeter
    millimeters m meter meters metre metres km kilometer kilometers kilometre kilometres in inch inches
    ft foot feet yd yard yards mi mile miles mph kph degree degrees deg radian radians dollar dollars
    cent cents s sec second seconds min minute minutes h hr hrs hour hours day days week weeks month
    months year years g gram grams kg kilogram kilograms lb lbs pound pounds oz ounce ounces l liter
    liters litre litres ml milliliter milliliters gallon gallons point points mps ways people persons times
    percent percentage pct acre acres hectare hectares kmph kmh gal yr yrs apple apples student students coin coins
    men women children child toy toys tile tiles edge edges digit digits meal meals rupee rupees ohm ohms cube cubes
    """.split()
)

_TEXT_CMDS = r"(?:text|textbf|textit|textrm|textsf|texttt|mbox|mathrm|mathbf|mathit|mathsf|mathtt|operatorname|hbox)"
_TEXT_WRAP = re.compile(r"\\" + _TEXT_CMDS + r"\s*\{([^{}]*)\}")
_UNIT_ALT = "|".join(sorted((re.escape(u) for u in UNIT_WORDS), key=len, reverse=True))
# a run of unit words (e.g. "square units", "cm^2", "meters per second") at the very end,
# after a digit, closing brace/paren or pi
_UNIT_ONE = r"(?:" + _UNIT_ALT + r")(?:\s*\^\s*\{?[23]\}?)?"
_TRAILING_UNIT = re.compile(
    r"(?<=[\d}\)a-zA-Z])\s+" + _UNIT_ONE + r"(?:\s+(?:per\s+)?" + _UNIT_ONE + r")*\s*$",
    re.IGNORECASE,
)
_LEADING_VAR = re.compile(r"^\s*[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?\s*=\s*(?!=)")
_SIZING = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|Biggl|Biggr|big|Big|bigg|Bigg)(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ(?![A-Za-z])|°|\\degree(?![A-Za-z])")
_SPACED_THOUSANDS = re.compile(r"^\s*[+-]?\d{1,3}(?:[ \u00a0]\d{3})+(?:\.\d+)?\s*$")
_DIGIT_SPACE_DIGIT = re.compile(r"(?<=\d)\s+(?=\d)")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_DECIMAL = re.compile(r"^([+-]?)(\d*)(?:\.(\d*))?$")
_CHOICE = re.compile(r"^\(([A-Ea-e])\)$")


_UNICODE_LATEX = {
    "√": "\\sqrt", "∛": "\\sqrt[3]", "∜": "\\sqrt[4]", "π": "\\pi ", "∞": "\\infty ", "×": "\\times ",
    "·": "\\cdot ", "⋅": "\\cdot ", "∙": "\\cdot ", "÷": "\\div ", "−": "-", "–": "-", "‐": "-", "‑": "-",
    "≤": "\\le ", "≥": "\\ge ", "≠": "\\ne ", "±": "\\pm ", "∓": "\\mp ", "∪": "\\cup ", "∩": "\\cap ",
    "∈": "\\in ", "∅": "\\emptyset ", "°": "^\\circ ", "⁄": "/", "∕": "/", "′": "'", "…": "\\ldots ",
    "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u200b": "",
}
_SUPERSCRIPTS = {c: str(i) for i, c in enumerate("⁰¹²³⁴⁵⁶⁷⁸⁹")} | {"⁻": "-", "⁺": "+"}
_VULGAR = re.compile("[\u00bc-\u00be\u2150-\u215e]")
_SUPER_RUN = re.compile("[⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺]+")
_SQRT_ARG = re.compile(r"\\sqrt(\[\d\])?\s*(\d+(?:\.\d+)?|[A-Za-z]|\\pi\b|\((?:[^()]*)\))")


def _greek(ch: str) -> str | None:
    try:
        name = unicodedata.name(ch)
    except ValueError:
        return None
    if name.startswith("GREEK SMALL LETTER ") and " " not in name[19:]:
        return "\\" + name[19:].lower() + " "
    if name.startswith("GREEK CAPITAL LETTER ") and " " not in name[21:]:
        return "\\" + name[21:].capitalize() + " "
    return None


def _vulgar_frac(m: re.Match) -> str:
    num, _, den = unicodedata.normalize("NFKC", m.group(0)).partition("⁄")  # ½ -> "1⁄2"
    return "\\frac{" + num + "}{" + den + "}"


def unicode_to_latex(s: str) -> str:
    """Honest Unicode spellings of maths -> ASCII/LaTeX; unknown characters are kept (see step 0)."""
    if s.isascii():
        return s
    s = _VULGAR.sub(_vulgar_frac, s)
    s = _SUPER_RUN.sub(lambda m: "^{" + "".join(_SUPERSCRIPTS[c] for c in m.group(0)) + "}", s)
    out = []
    for ch in s:
        if ch.isascii():
            out.append(ch)
            continue
        if ch in _UNICODE_LATEX:
            out.append(_UNICODE_LATEX[ch])
            continue
        dec = unicodedata.decimal(ch, None)
        if dec is not None:  # ٤ (Arabic-Indic), ४ (Devanagari), ４ (full width): a decimal digit
            out.append(str(dec))
            continue
        folded = unicodedata.normalize("NFKC", ch)
        if folded.isascii() and unicodedata.category(ch) in ("Ps", "Pe", "Sm", "Po", "Pd", "Ll", "Lu"):
            out.append(folded)  # full-width punctuation, operators and Latin letters
            continue
        out.append(_greek(ch) or ch)
    s = "".join(out)
    if "\\sqrt" in s:  # √2 -> \sqrt{2}, √(x+1) -> \sqrt{x+1}
        s = _SQRT_ARG.sub(lambda m: "\\sqrt" + (m.group(1) or "") + "{" + m.group(2).strip("()") + "}", s)
    return s


def _strip_outer_box(s: str) -> str:
    """`\\boxed{x}` (optionally followed by punctuation or a unit) -> `x`; anything else unchanged."""
    t = s.strip()
    for _ in range(3):  # \boxed{\boxed{x}} happens
        m = re.match(r"^\\(?:boxed|fbox)\s*\{", t)
        if not m:
            bare = re.fullmatch(r"\\(?:boxed|fbox)\s+([^\s{}$]+)[.,;]?", t)
            if bare:
                t = bare.group(1)
            break
        end = _scan_braced(t, m.end() - 1)
        if end is None:
            break
        rest = t[end:].strip(" \t.,;:$")
        if rest and not re.fullmatch(r"(?:\\text\s*\{\s*)?(?:" + _UNIT_ALT + r")\s*\}?", rest, re.IGNORECASE):
            break
        t = t[m.end() : end - 1].strip()
    return t


def _fix_sqrt(s: str) -> str:
    # \sqrt2 -> \sqrt{2}, \sqrt x -> \sqrt{x}
    return re.sub(r"\\sqrt\s*([0-9A-Za-z])", r"\\sqrt{\1}", s)


def _fix_fracs(s: str) -> str:
    # \frac12 -> \frac{1}{2}; \frac1{2} -> \frac{1}{2}; \frac{1}2 -> \frac{1}{2}
    s = re.sub(r"\\frac\s*([0-9A-Za-z])\s*([0-9A-Za-z])", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*([0-9A-Za-z])\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*([0-9A-Za-z])", r"\\frac\1{\2}", s)
    return s


def _canonical_decimal(s: str) -> str:
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    m = _DECIMAL.match(s)
    if not m or not (m.group(2) or m.group(3)):
        return s
    sign, whole, frac = m.group(1), m.group(2) or "0", (m.group(3) or "").rstrip("0")
    whole = whole.lstrip("0") or "0"
    out = whole + ("." + frac if frac else "")
    if sign == "-" and out != "0":
        out = "-" + out
    return out


def _unwrap_text(s: str) -> str:
    # drop \text{...} blocks that hold only units (after a number), then unwrap the rest
    def repl(m: re.Match) -> str:
        return " " + m.group(1) + " "

    for _ in range(5):
        new = _TEXT_WRAP.sub(repl, s)
        if new == s:
            break
        s = new
    return s


def normalize_answer(answer: str | None) -> str:
    """Canonical string for exact-match comparison ("" when there is no answer)."""
    if answer is None:
        return ""
    s = str(answer)
    if len(s) > 5000:  # absurdly long: compare as-is (stripped), no regex work
        return s.strip()
    s = unicode_to_latex(s)
    s = _strip_outer_box(s)
    s = s.replace("\n", " ").replace("**", "")
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\[\(\)\[\]]", "", s)
    s = _SIZING.sub("", s)
    s = re.sub(r"\\[!,;:> ]", " ", s).replace("~", " ")
    s = re.sub(r"\\(?:displaystyle|textstyle|scriptstyle)(?![A-Za-z])", "", s)
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = _DEGREES.sub("", s)
    s = s.replace("\\%", "").replace("%", "")
    s = _unwrap_text(s)
    s = s.strip()
    s = _strip_outer_box(s)
    # trailing units after a number: "5 cm", "12 square units", "3 meters per second"
    m = _TRAILING_UNIT.search(s)
    if m and m.start() > 0:
        head = s[: m.start()].rstrip()
        if head and not head[-1].isalpha() or re.search(r"\\pi$", head or ""):
            s = head
    s = _LEADING_VAR.sub("", s, count=1) if s.count("=") == 1 else s
    s = _fix_sqrt(s)
    s = _fix_fracs(s)
    if _SPACED_THOUSANDS.match(s):
        s = re.sub(r"\s+", "", s)  # "1 000 000" (groups of three digits)
    s = _DIGIT_SPACE_DIGIT.sub(" ", s)  # "8 16" is not 816: the one space kept between two digits
    s = re.sub(r"(?<!\d) +| +(?!\d)|[\t\r\n\f\v]+", "", s)
    if s and s[-1] in ".,;:":
        s = s[:-1]  # one closing punctuation mark ("5." "5,"); "5;;" or "5..." are not "5"
    c = _CHOICE.match(s)
    if c:
        s = c.group(1).upper()
    s = _canonical_decimal(s)
    return s


# units for the strict parse: compound ones too ("m/s", "km per hour", "ft^2", "in."), inside \\text{} or bare
_UNIT_ATOM = r"(?:" + _UNIT_ALT + r")\.?(?:\s*\^\s*\{?[23]\}?)?"
_UNIT_RUN = _UNIT_ATOM + r"(?:\s*(?:/|\bper\b|\\cdot)?\s*" + _UNIT_ATOM + r")*"
_TEXT_UNIT = re.compile(
    r"\\(?:text|textrm|textnormal|textbf|textit|mathrm|mathit|mbox|operatorname)\s*\{\s*(?:~|\\[,;: ])?\s*(" + _UNIT_RUN
    + r")\s*\}",
    re.IGNORECASE,
)
_TRAILING_UNIT_RUN = re.compile(r"(?<=[\d}\)])(?:\s|~|\\[,;: !])+(?:" + _UNIT_RUN + r")(?:\s*\^\s*\{?[23]\}?)?\s*$", re.IGNORECASE)
_DEGREE_SCALE = re.compile(r"(\^\s*\{?\s*\\circ\s*\}?)\s*(?:\\(?:text|mathrm)\s*\{\s*[CFK]\s*\}|[CFK])\s*$")


def prepare_for_parse(answer: str) -> str:
    """The extracted answer as the strict parser should see it: Unicode spellings in LaTeX, outer
    box and math delimiters removed, a trailing unit (`5 \\text{ cm}`, `12 square units`) dropped,
    Python's `**` as `^`. Nothing else is removed: whatever is left must parse as a whole."""
    s = unicode_to_latex(str(answer)).strip()
    s = _strip_outer_box(s)
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\[\(\)\[\]]", "", s).strip()
    s = _strip_outer_box(s)
    s = _TEXT_UNIT.sub(lambda m: " " + m.group(1) + " ", s).strip()  # \\text{ km/h} -> km/h
    s = _TRAILING_UNIT_RUN.sub("", s)
    m = _TRAILING_UNIT.search(s)  # "3 \\pi square units"
    if m and m.start() > 0 and re.search(r"\\pi$", s[: m.start()].rstrip()):
        s = s[: m.start()].rstrip()
    s = _DEGREE_SCALE.sub(r"\1", s)  # 90^\\circ C -> 90^\\circ
    s = s.replace("**", "^")
    s = re.sub(r"^\\approx(?![A-Za-z])\s*", "", s)  # "\\approx 3.14": the value is what follows
    s = re.sub(r"\\varnothing(?![A-Za-z])", r"\\emptyset", s)
    s = s.strip()
    return s[:-1].rstrip() if s.endswith(".") and not s.endswith("..") else s
