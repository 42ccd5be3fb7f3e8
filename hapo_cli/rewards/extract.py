"""Answer extraction from a model completion: the last `\\boxed{...}` or the last `Answer:` line.

Rules (the golden file `tests/data/golden_grading.jsonl` pins every one of them):

- Boxed: the LAST `\\boxed{...}` / `\\fbox{...}` in the whole completion wins; braces may nest.
  `\\boxed 5` (no braces) takes the token up to the next space or `$`. If the last `\\boxed{`
  never closes (a truncated or malformed answer) there is NO boxed answer: an earlier complete
  box is not used, because the model's final statement is the one graded.
- Answer line (DAPO): in the last 300 characters, the last line matching `Answer: ...`
  (case-insensitive); the rest of that line is the answer. A Minerva-style
  `The final answer is X. I hope it is correct.` on that line is reduced to `X`, and so is
  `The answer is X.`
- Several boxes (`extract_final_boxes`): the boxes of the final answer are the trailing run of
  boxes that follow one another closely (at most 80 characters between two, no blank line):
  "x = \\boxed{-2} or x = \\boxed{1}". With `extract_answer(..., parts=n)` (the grader passes the
  gold's number of parts) the last boxes of that run that together hold n parts are joined with
  ", "; with n = 1 (the default) the last box alone. Earlier boxes never count, as for one box.
- A final-answer statement after the last box (boxed mode): when the completion ends with a
  `Final Answer: X` / `The final answer is X` line AFTER its last box, that statement is the answer
  (the model restated or corrected itself after an intermediate box).
- `extract_answer(text, prefer=...)` tries the preferred form first and falls back to the other;
  `prefer="raw"` (prompts without a format instruction) finally takes the last non-empty line,
  reduced to its last maths span (`$...$`, `\\(...\\)`, `\\[...\\]`), else to what follows its last
  "is" / "=" / ":" when the line is a sentence ("So the answer is 85.").

Everything here is plain string scanning with linear-time regexes, so it is safe to run in the
main process on arbitrary model output.
"""

from __future__ import annotations

import re

ANSWER_TAIL_CHARS = 300  # DAPO: only the last 300 characters are searched for "Answer:"

_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_LINE = re.compile(r"(?i)answer\s*:[ \t]*([^\n]*)")
_FINAL_ANSWER_IS = re.compile(r"(?i)^(?:the\s+)?final\s+answer\s+is\s*:?\s*(.*?)(?:\.?\s*I hope it is correct\.?)?\s*$")
_MD_NOISE = re.compile(r"^[\s*_#>]+|[\s*_]+$")
# "Final Answer: X", "**Final answer**: X", "The final answer is X" on one line
_FINAL_STATEMENT = re.compile(r"(?im)^[ \t*_#>]*(?:the\s+)?final\s+answer[ \t*_]*(?:is\b|:)[ \t*_:]*([^\n]*)$")
_ANSWER_IS = re.compile(r"(?i)^(?:so\s+|thus\s+|therefore\s*,?\s+)?(?:the\s+)?(?:final\s+)?(?:answer|result|value)\s+is\s*:?\s*")
_MATH_SPAN = re.compile(r"\$\$([^$]+)\$\$|\$([^$]+)\$|\\\(((?:(?!\\\)).)+)\\\)|\\\[((?:(?!\\\]).)+)\\\]")
_RUN_GAP = 80  # most characters between two boxes of one final answer
_SENTENCE_TAIL = re.compile(r"(?i)(?:\bis\b|=|:)\s*([^=:]*?)\s*\.?\s*$")


def _scan_braced(text: str, start: int) -> int | None:
    """Index just past the `}` matching the `{` at `start`, or None when it never closes."""
    depth = 0
    i = start
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n and text[i + 1] in "{}":
            i += 2  # escaped brace \{ or \} (a set literal) does not count
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _boxes(text: str) -> list[tuple[int, int, str | None]]:
    """Every `\\boxed`/`\\fbox` in `text` as (start, end, content); content None: unterminated/empty."""
    out: list[tuple[int, int, str | None]] = []
    last_end = -1
    for m in _BOX_CMD.finditer(text):
        if m.start() < last_end:
            continue  # a box nested in another box is part of it, not a box of its own
        i = m.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            end = _scan_braced(text, i)
            if end is None:
                out.append((m.start(), len(text), None))  # unterminated: runs to the end
                break
            out.append((m.start(), end, _unwrap_box(text[i + 1 : end - 1].strip()) or None))
        else:
            tok = re.match(r"[^\s$]+", text[i:])  # `\boxed 5` form: one token
            if tok is None or i == m.end():
                out.append((m.start(), m.end(), None))
            else:
                out.append((m.start(), i + tok.end(), tok.group(0).rstrip(".,;") or None))
        last_end = out[-1][1]
    return out


def _unwrap_box(content: str) -> str:
    """`\\boxed{\\boxed{7}}` -> `7`: a box whose whole content is another box."""
    for _ in range(5):
        m = _BOX_CMD.match(content)
        if not m:
            break
        i = m.end()
        while i < len(content) and content[i] in " \t":
            i += 1
        if i >= len(content) or content[i] != "{" or _scan_braced(content, i) != len(content):
            break
        content = content[i + 1 : -1].strip()
    return content


def extract_final_boxes(text: str) -> list[str]:
    """Contents of the boxes that make up the final answer (the trailing run, see the module doc).

    [] when there is no box or the last one is malformed (unterminated or empty).
    >>> extract_final_boxes(r"so x = \\boxed{-2} or x = \\boxed{1}.")
    ['-2', '1']
    """
    if not text:
        return []
    boxes = _boxes(text)
    if not boxes or boxes[-1][2] is None:
        return []
    run = [boxes[-1]]
    for b in reversed(boxes[:-1]):
        gap = text[b[1] : run[0][0]]
        if b[2] is None or len(gap) > _RUN_GAP or "\n\n" in gap:
            break
        run.insert(0, b)
    return [b[2] for b in run]  # type: ignore[misc]


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (nested braces kept), or None.

    >>> extract_boxed(r"so \\boxed{\\frac{1}{2}} and finally \\boxed{3}")
    '3'
    """
    boxes = extract_final_boxes(text)
    return boxes[-1] if boxes else None


def _last_box_end(text: str) -> int:
    boxes = _boxes(text) if text else []
    return boxes[-1][1] if boxes else -1


def extract_final_statement(text: str, after: int = 0) -> str | None:
    """The answer of the last `Final Answer: X` / `The final answer is X` line starting at or
    after position `after`, or None."""
    found = [m for m in _FINAL_STATEMENT.finditer(text) if m.start() >= after]
    if not found:
        return None
    ans = _MD_NOISE.sub("", found[-1].group(1)).strip()
    fin = _FINAL_ANSWER_IS.match(ans)
    if fin and fin.group(1).strip():
        ans = fin.group(1).strip()
    ans = re.sub(r"(?i)\.?\s*I hope it is correct\.?\s*$", "", ans).strip()
    ans = _ANSWER_IS.sub("", ans)  # "The answer is 6"
    ans = ans.rstrip(".").strip()
    if ans.startswith("$") and ans.endswith("$") and len(ans) > 1:
        ans = ans.strip("$").strip()
    return ans or None


def _top_level_split(s: str) -> list[str]:
    """`s` split at commas/semicolons outside brackets (a thousands separator does not split)."""
    parts, depth, cur = [], 0, []
    i = 0
    while i < len(s):
        ch = s[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch in ",;" and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    if len(parts) > 1 and re.fullmatch(r"\s*[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?\s*", s):
        return [s]
    return [p for p in parts if p.strip()]


def answer_parts(answer: str) -> tuple[int, str]:
    """How many parts an answer has, and its shape: (n, "set" | "tuple" | "list"): top-level commas
    and semicolons, "and"/"or", the elements of a set or tuple; `1,000` is one part."""
    g = str(answer).strip().strip("$").strip()
    g = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", g)
    shape = "list"
    for open_, close, kind in (("\\{", "\\}", "set"), ("(", ")", "tuple"), ("[", "]", "tuple")):
        if g.startswith(open_) and g.endswith(close):
            inner = g[len(open_) : len(g) - len(close)]
            if open_ == "\\{" or _scan_braced("{" + inner.replace("(", "{").replace(")", "}") + "}", 0) == len(inner) + 2:
                g, shape = inner, kind
                break
    g = re.sub(r"\\text\s*\{\s*(and|or)\s*\}|\b(?:and|or)\b", ",", g)
    n = len(_top_level_split(g))
    return n, shape


def _boxed_answer(text: str, parts: int = 1, shape: str = "list") -> str | None:
    """Boxed mode: a final-answer statement after the last box, else the final box, or the last
    boxes of the final run that together have `parts` parts (joined, wrapped as `shape`)."""
    end = _last_box_end(text)
    if end >= 0:
        stated = extract_final_statement(text, after=end)
        if stated is not None and "\\boxed" not in stated:
            return stated
    boxes = extract_final_boxes(text)
    if not boxes:
        return None
    if parts <= 1 or len(boxes) == 1:
        return boxes[-1]
    chosen: list[str] = []
    have = 0
    for b in reversed(boxes):
        chosen.insert(0, b)
        have += answer_parts(b)[0]
        if have >= parts:
            break
    if len(chosen) == 1:
        return chosen[0]
    joined = ", ".join(chosen)
    return {"set": "\\{" + joined + "\\}", "tuple": "(" + joined + ")"}.get(shape, joined)


def extract_answer_line(text: str, tail_chars: int = ANSWER_TAIL_CHARS) -> str | None:
    """DAPO: the answer on the last `Answer:` line within the last `tail_chars` characters."""
    if not text:
        return None
    tail = text[-tail_chars:] if tail_chars else text
    found = _ANSWER_LINE.findall(tail)
    if not found:
        return None
    ans = _MD_NOISE.sub("", found[-1]).strip()
    fin = _FINAL_ANSWER_IS.match(ans)
    if fin and fin.group(1).strip():
        ans = fin.group(1).strip()
    short = _ANSWER_IS.sub("", ans)  # "Answer: The answer is 5" -> "5"
    if short != ans and short.strip():
        ans = short.rstrip(". ").strip()
    return ans or None


def _raw_line(text: str) -> str | None:
    if not text or not text.strip():
        return None
    line = text.strip().splitlines()[-1].strip()
    spans = _MATH_SPAN.findall(line)
    if spans:  # "The answer is $\\frac{1}{2}$, I think." -> the last maths span
        last = spans[-1]
        return next((g for g in last if g), "").strip() or None
    if " " in line.strip():  # a sentence: keep what follows its last "is" / "=" / ":"
        m = _SENTENCE_TAIL.search(line)
        if m and m.group(1).strip():
            line = m.group(1).strip()
    return line.rstrip(".").strip() or None


def extract_answer(text: str, prefer: str = "boxed", *, parts: int = 1, shape: str = "list") -> str | None:
    """The model's final answer: `prefer` = "boxed" (box first, then Answer: line),
    "answer" (Answer: line first, then box), "answer_only" (strict DAPO: Answer: line only) or
    "raw" (box, then Answer: line, else the last non-empty line of the completion: for prompts
    that ask for no particular format). `parts` > 1 (the gold answer has that many parts): the last
    boxes of the final run that together have as many parts are joined with ", " (wrapped in
    `\\{ \\}` or `( )` for `shape` "set" / "tuple") instead of keeping the last box alone."""
    text = text or ""
    if prefer == "raw":
        return _boxed_answer(text, parts, shape) or extract_answer_line(text) or _raw_line(text)
    if prefer == "answer_only":
        return extract_answer_line(text)
    if prefer == "answer":
        return extract_answer_line(text) or _boxed_answer(text, parts, shape)
    if prefer == "boxed":
        return _boxed_answer(text, parts, shape) or extract_answer_line(text)
    raise ValueError(f"prefer must be 'boxed', 'answer', 'answer_only' or 'raw', got {prefer!r}")
