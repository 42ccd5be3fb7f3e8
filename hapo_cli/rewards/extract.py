"""Answer extraction from a model completion: the last `\\boxed{...}` or the last `Answer:` line.

Rules (the golden file `tests/data/golden_grading.jsonl` pins every one of them):

- Boxed: the LAST `\\boxed{...}` / `\\fbox{...}` in the whole completion wins; braces may nest.
  `\\boxed 5` (no braces) takes the token up to the next space or `$`. If the last `\\boxed{`
  never closes (a truncated or malformed answer) there is NO boxed answer: an earlier complete
  box is not used, because the model's final statement is the one graded.
- Answer line (DAPO): in the last 300 characters, the last line matching `Answer: ...`
  (case-insensitive); the rest of that line is the answer. A Minerva-style
  `The final answer is X. I hope it is correct.` on that line is reduced to `X`.
- `extract_answer(text, prefer=...)` tries the preferred form first and falls back to the other;
  `prefer="raw"` (prompts without a format instruction) finally takes the last non-empty line.

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


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (nested braces kept), or None.

    >>> extract_boxed(r"so \\boxed{\\frac{1}{2}} and finally \\boxed{3}")
    '3'
    """
    if not text:
        return None
    matches = list(_BOX_CMD.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    i = m.end()
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        end = _scan_braced(text, i)
        if end is None:
            return None  # unterminated last box: malformed final answer
        content = text[i + 1 : end - 1].strip()
        return content or None
    # `\boxed 5` form: one token
    tok = re.match(r"[^\s$]+", text[i:])
    if tok is None or i == m.end():
        return None  # `\boxed` followed by nothing usable (or glued to a non-space char)
    return tok.group(0).rstrip(".,;") or None


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
    return ans or None


def extract_answer(text: str, prefer: str = "boxed") -> str | None:
    """The model's final answer: `prefer` = "boxed" (box first, then Answer: line),
    "answer" (Answer: line first, then box), "answer_only" (strict DAPO: Answer: line only) or
    "raw" (box, then Answer: line, else the last non-empty line of the completion: for prompts
    that ask for no particular format)."""
    if prefer == "raw":
        found = extract_boxed(text) or extract_answer_line(text)
        if found is None and text and text.strip():
            found = text.strip().splitlines()[-1].strip() or None
        return found
    if prefer == "answer_only":
        return extract_answer_line(text)
    if prefer == "answer":
        return extract_answer_line(text) or extract_boxed(text)
    if prefer == "boxed":
        return extract_boxed(text) or extract_answer_line(text)
    raise ValueError(f"prefer must be 'boxed', 'answer', 'answer_only' or 'raw', got {prefer!r}")
