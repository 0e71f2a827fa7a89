"""`latentloop chat MODEL`: an interactive conversation in huginn's chat format, answers streamed."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """Chat with a model: type a message, read the streamed answer; every answer ends with
its iterations per token and speed (on stderr). /reset forgets the conversation, /exit (or end of
input) quits. Reads from a pipe too. Takes every option of `latentloop generate`.
MODEL must be a chat model (trained or fine-tuned on huginn's chat format): the bundled 'default'
model is not one (it answers pointer chains; use `latentloop generate default PROMPT`), and is refused.

examples:
  latentloop chat tomg-group-umd/huginn-0125
  latentloop chat path/to/huginn-0125 --steps 32 --exit kl:5e-4 --warm-start
  printf 'What is 2+3?\\n' | latentloop chat path/to/model --max-new-tokens 64
"""


def register(sub: argparse._SubParsersAction) -> None:
    from . import Formatter
    from .generate import add_generation_options

    p = sub.add_parser("chat", help="interactive chat (streamed answers)", description=DESCRIPTION,
                       formatter_class=Formatter)
    add_generation_options(p)
    p.add_argument("--system", default=None, help="a system message that opens the conversation")
    p.set_defaults(func=run)


CHAT_MODELS = ("tomg-group-umd/huginn-0125 (pip install 'latentloop[hub]'), or a model fine-tuned on "
               "conversations with `latentloop finetune MODEL chats.jsonl`")


def check_chat_model(name: str, tokenizer) -> None:
    """Refuse a model that cannot read huginn's chat format, rather than answer it wrongly: one whose
    tokenizer lacks the chat tokens (the format would be spelled character by character), or one
    trained on a latentloop task (task.json beside it: it answers that task's problems, nothing else)."""
    from ..checkpoint import resolve_model_dir
    from ..tasks import TASK_FILE
    from ..tokenizer import BEGIN_HEADER, END_HEADER, END_TURN

    missing = [t for t in (BEGIN_HEADER, END_HEADER, END_TURN) if tokenizer.token_to_id(t) is None]
    task_file = resolve_model_dir(name) / TASK_FILE
    if not missing and not task_file.is_file():
        return
    why = (f"its tokenizer has no {', '.join(missing)} token(s) of huginn's chat format" if missing
           else "it was trained on a reasoning task, not on conversations")
    if task_file.is_file():
        import json

        task = json.loads(task_file.read_text()).get("name", "?")
        example = ' (e.g. `latentloop generate default "73BACbb6baa9Bbb7b="`)' if task == "pointers" else ""
        why += f"; it answers {task!r} problems given as a plain prompt with `latentloop generate`{example}"
    raise ValueError(f"{name} is not a chat model: {why}. To chat, use a model that is: {CHAT_MODELS}")


def run(args: argparse.Namespace) -> int:
    from ..generate import stream
    from ..tokenizer import load_tokenizer
    from .generate import generation_options, load

    check_chat_model(args.model, load_tokenizer(args.model))
    model, tokenizer = load(args)
    options = generation_options(args, model.config.mean_recurrence)
    opening = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(opening)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return 0
        if line.strip() == "/reset":
            messages = list(opening)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        prompt = fit_to_context(tokenizer, messages, opening, model.config.context_length - options["max_new_tokens"])
        answer = stream(model, prompt, tokenizer, **options)
        for piece in answer:
            print(piece, end="", flush=True)
        print()
        print(f"[{answer.result.summary()}]", file=sys.stderr)
        messages.append({"role": "assistant", "content": answer.result.text})


def fit_to_context(tokenizer, messages: list[dict], opening: list[dict], budget: int) -> str:
    """The chat prompt, dropping the oldest exchanges until it leaves room for the answer."""
    while True:
        prompt = tokenizer.chat_prompt(messages)
        if len(tokenizer.encode(prompt)) <= budget or len(messages) <= len(opening) + 1:
            return prompt
        del messages[len(opening) : len(opening) + 2]
