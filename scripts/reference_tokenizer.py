#!/usr/bin/env python3
"""Generate reference fixtures for the `lumen-tokenizer` crate.

Reference implementations (independent of lumen):
  * token ids:       llama-cpp-python (llama.cpp's own tokenizer), loading only the
                     vocabulary of the GGUF: ``Llama(model_path, vocab_only=True)``
                     and ``tokenize(text.encode(), add_bos=False, special=...)``.
  * chat templates:  Python ``jinja2``, rendering the GGUF's ``tokenizer.chat_template``
                     with the Hugging Face conventions (``messages``,
                     ``add_generation_prompt``, ``bos_token``, ``eos_token``,
                     ``raise_exception``).

Requirements: ``pip install llama-cpp-python gguf jinja2``.

Run from the repository root:

    python3 scripts/reference_tokenizer.py [path/to/model.gguf]

The model defaults to ``models/SmolLM2-135M-Instruct.Q4_1.gguf``. Output files:
  * crates/tokenizer/tests/fixtures/smollm2_tokenizer.json      [{"text", "parse_special", "ids"}]
  * crates/tokenizer/tests/fixtures/smollm2_chat_template.json  [{"messages", "add_generation_prompt",
                                                                  "bos_token", "eos_token", "expected"}]
"""

import json
import sys
from pathlib import Path

import gguf
import jinja2
import jinja2.sandbox
from llama_cpp import Llama

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
FIXTURES = ROOT / "crates" / "tokenizer" / "tests" / "fixtures"

# (text, parse_special)
TEXTS = [
    ("Hello, world!", True),
    ("The quick brown fox jumps over the lazy dog.", True),
    ("Lumen is an LLM inference engine written in Rust.", True),
    ("Café, naïve, résumé, Über, señor, façade", True),
    ("日本語のテキストと中文文本", True),
    ("Emoji: 😀🚀 👍🏽 👨‍👩‍👧‍👦 and 🇫🇷", True),
    ("combining: e\u0301 a\u0308 n\u0303 \u0915\u093f", True),
    ("مرحبا بالعالم", True),
    ("Привет, мир! Ελληνικά", True),
    ("12345", True),
    ("3.14159", True),
    ("1,000,000 and 2024-01-15", True),
    ("a   b", True),
    ("\n\n\t  x", True),
    ("trailing spaces   ", True),
    ("   leading spaces", True),
    ("tabs\tand\r\nwindows newlines\r\n", True),
    ("don't I'LL we've they're she'd it's", True),
    ("Wait... what?!? (yes) [no] {maybe} <tag> @user #hash $5 %20 ^ & * ~ `x`", True),
    ("def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n", True),
    ("fn main() {\n\tlet x: Vec<u8> = vec![1, 2, 3];\n\tprintln!(\"{x:?}\");\n}", True),
    ("https://example.com/path?q=1&r=two#frag", True),
    ("<|im_start|>user\nHi<|im_end|>\n", True),
    ("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n", True),
    ("<|im_start|>user\nHi<|im_end|>\n", False),
    ("text<|endoftext|>more<file_sep>end", True),
    ("text<|endoftext|>more<file_sep>end", False),
    ("", True),
    (" ", True),
    ("\u00a0non-breaking\u2003em space\u200bzero width", True),
    ("ÀÁÂÃÄÅ ǅ ﬁ ½ ² ① ℃", True),
    ("mixed 中文 and English 123 一二三", True),
    ("control\x04bytes\x1dwithout tokens\x00", True),
]


def write_json_list(path: Path, items) -> None:
    """One list item per line, so diffs of regenerated fixtures stay readable."""
    lines = ",\n".join(json.dumps(item, ensure_ascii=False) for item in items)
    path.write_text("[\n" + lines + "\n]\n", encoding="utf-8")


def read_chat_template(model_path: Path) -> str:
    reader = gguf.GGUFReader(str(model_path))
    field = reader.fields["tokenizer.chat_template"]
    return field.contents()


def render_chat(template_src: str, messages, add_generation_prompt, bos_token, eos_token) -> str:
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template_src).render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
    )


def main() -> None:
    model_path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_MODEL
    if not model_path.is_file():
        sys.exit(f"model not found: {model_path} (run scripts/setup.sh)")
    FIXTURES.mkdir(parents=True, exist_ok=True)

    llm = Llama(model_path=str(model_path), vocab_only=True, verbose=False)
    cases = []
    for text, special in TEXTS:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)
        cases.append({"text": text, "parse_special": special, "ids": [int(i) for i in ids]})
    out = FIXTURES / "smollm2_tokenizer.json"
    write_json_list(out, cases)
    print(f"wrote {len(cases)} tokenizer cases to {out}")

    template_src = read_chat_template(model_path)
    bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8")
    eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8")
    conversations = [
        [{"role": "user", "content": "Hi there!"}],
        [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
        ],
    ]
    chats = []
    for messages in conversations:
        expected = render_chat(template_src, messages, True, bos, eos)
        chats.append(
            {
                "messages": messages,
                "add_generation_prompt": True,
                "bos_token": bos,
                "eos_token": eos,
                "expected": expected,
            }
        )
    out = FIXTURES / "smollm2_chat_template.json"
    write_json_list(out, chats)
    print(f"wrote {len(chats)} chat template cases to {out}")


if __name__ == "__main__":
    main()
