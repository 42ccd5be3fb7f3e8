"""Prompts: an instruction style, wrapped in the model's chat template when it has one.

`encode_prompt` is THE prompt encoder: training, validation and `hapo eval` all call it, so a
question becomes the same token ids wherever it is asked.

Styles (`--prompt`):
- `boxed`: the question, then "Please reason step by step, and put your final answer within
  \\boxed{}." (Qwen2.5-Math style); graded box first, then an `Answer:` line.
- `answer`: the DAPO training prompt (question between the "Answer: $Answer" instructions);
  graded `Answer:` line first (last 300 characters), then a box.
- `raw`: the question as is; graded box, then `Answer:` line, else the last line of the response.
  The built-in synthetic task uses its own `format_prompt` and verifier instead.

Chat template (`chat_template`): `auto` uses the tokenizer's template when it defines one (plain
text otherwise), `on` requires one, `off` never uses it.
"""

from __future__ import annotations

from hapo_cli.errors import HapoError

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the "
    "form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'

PROMPT_STYLES = ("boxed", "answer", "raw")
CHAT_TEMPLATE_MODES = ("auto", "on", "off")

# how the final answer is extracted for each prompt style (see hapo_cli.rewards.extract)
GRADING_PREFER = {"boxed": "boxed", "answer": "answer", "raw": "raw"}


def prompt_text(question: str, style: str) -> str:
    """The user message for `question` in `style` (boxed | answer | raw)."""
    if style == "boxed":
        return f"{question.rstrip()}\n{BOXED_INSTRUCTION}"
    if style == "answer":
        return f"{DAPO_PREFIX}{question.strip()}{DAPO_SUFFIX}"
    if style == "raw":
        return question
    raise HapoError(f"unknown prompt style {style!r}: choose from {', '.join(PROMPT_STYLES)}")


def uses_chat_template(tokenizer, mode: str = "auto") -> bool:
    if mode not in CHAT_TEMPLATE_MODES:
        raise HapoError(f"chat_template must be one of {', '.join(CHAT_TEMPLATE_MODES)}, got {mode!r}")
    has = bool(getattr(tokenizer, "chat_template", None))
    if mode == "on" and not has:
        raise HapoError("chat_template=on but this tokenizer has no chat template: use chat_template=auto or off")
    return has and mode != "off"


def encode_prompt(tokenizer, text: str, *, chat: bool, max_length: int | None = None) -> list[int]:
    """Token ids of one prompt: chat-templated user turn + generation prompt, or plain text.

    Plain text gets the tokenizer's own special tokens (a BOS where the model uses one); a
    rendered chat template already carries them. Longer than `max_length`: left-truncated (the
    end of a prompt, with the instruction and the generation prompt, is what matters).
    """
    if chat:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        ids = list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    else:
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    return ids[-max_length:] if max_length and len(ids) > max_length else ids
