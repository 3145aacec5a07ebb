#!/usr/bin/env python3
"""Record llama.cpp's greedy chat answers on the default GGUF, the golden answers of
crates/cli/tests/generate.rs.

References (independent of lumen):
  * llama-cpp-python, which runs llama.cpp itself on the same GGUF file;
  * scripts/reference_logits.py's numpy float64 forward pass on the dequantised GGUF, decoding
    greedily with a full forward per token. llama.cpp rounds activations to 8 bits for its
    quantised dot products, so where the two best tokens are close it can choose differently
    from exact arithmetic. For each prompt the fixture keeps both answers and, where they
    differ, the float64 logits of the two candidates at the first step that differs, so the
    test can tell a near-tie from a defect.
 The prompt is the GGUF's chat template rendered with Python jinja2 for one user turn
with the generation prompt, tokenized by llama.cpp with special tokens parsed and no BOS added
(as `lumen generate --chat` does). Decoding is greedy: each step evaluates the new token and
takes the first maximum of the last logits row, until the end-of-sequence token or the cap.

Requirements: ``pip install llama-cpp-python gguf jinja2``. Run from the repository root:

    python3 scripts/reference_answers.py [path/to/model.gguf]

Output: crates/cli/tests/fixtures/golden_answers.json, with the provenance (llama-cpp-python's
version, the model file's SHA-256) beside the answers.
"""

import hashlib
import json
import sys
from pathlib import Path

import llama_cpp
import numpy
from llama_cpp import Llama

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_logits import forward, load_gguf, rope_adjacent  # noqa: E402
from reference_tokenizer import DEFAULT_MODEL, read_chat_template, render_chat  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "cli" / "tests" / "fixtures" / "golden_answers.json"

# (prompt, max_tokens)
PROMPTS = [
    ("What is the capital of France?", 16),
    ("What is 2+2?", 16),
    ("How many days are in a week?", 12),
    ("What is the chemical symbol for gold?", 8),
    ("Name a primary color.", 12),
    ("Write one sentence about the sea.", 24),
]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def greedy(llm: Llama, prompt_ids, max_tokens):
    """llama.cpp's greedy continuation of prompt_ids: the ids and why it stopped."""
    llm.reset()
    llm.eval(prompt_ids)
    out = []
    while len(out) < max_tokens:
        token = int(numpy.argmax(llm.scores[llm.n_tokens - 1]))  # the first maximum
        out.append(token)
        if token == llm.token_eos():
            return out, "Stop"
        llm.eval([token])
    return out, "Length"


def exact_greedy(cfg, weights, prompt_ids, max_tokens, eos):
    """Greedy continuation under float64 arithmetic, with each step's logits."""
    out, rows = [], []
    while len(out) < max_tokens:
        row = forward(cfg, weights, prompt_ids + out, rope_adjacent)[-1]
        rows.append(row)
        out.append(int(numpy.argmax(row)))
        if out[-1] == eos:
            return out, "Stop", rows
    return out, "Length", rows


def main() -> None:
    model_path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_MODEL
    if not model_path.is_file():
        sys.exit(f"model not found: {model_path} (run scripts/setup.sh)")
    llm = Llama(model_path=str(model_path), n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    template = read_chat_template(model_path)
    bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8")
    eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8")
    cfg, weights, _ = load_gguf(str(model_path))
    answers = []

    def answer_of(ids, reason):
        shown = ids[:-1] if reason == "Stop" else ids
        return {"ids": ids, "answer": llm.detokenize(shown).decode("utf-8", errors="replace").strip(),
                "generated": len(ids), "reason": reason}

    for prompt, max_tokens in PROMPTS:
        text = render_chat(template, [{"role": "user", "content": prompt}], True, bos, eos)
        prompt_ids = [int(i) for i in llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)]
        cpp = answer_of(*greedy(llm, prompt_ids, max_tokens))
        exact_ids, exact_reason, rows = exact_greedy(cfg, weights, prompt_ids, max_tokens, llm.token_eos())
        exact = answer_of(exact_ids, exact_reason)
        case = {"prompt": prompt, "max_tokens": max_tokens, "prompt_ids": prompt_ids, "llama_cpp": cpp, "float64": exact}
        step = next((i for i, (a, b) in enumerate(zip(cpp["ids"], exact["ids"])) if a != b), None)
        if step is not None:
            row = rows[step]
            case["first_difference"] = {
                "step": step,
                "llama_cpp_token": cpp["ids"][step],
                "float64_token": exact["ids"][step],
                "float64_logit_margin": float(row[exact["ids"][step]] - row[cpp["ids"][step]]),
            }
        answers.append(case)
        print(f"{prompt!r}: llama.cpp {cpp['answer']!r} ({cpp['generated']}, {cpp['reason']}); "
              f"float64 {exact['answer']!r} ({exact['generated']}, {exact['reason']})"
              + (f"; first difference at step {step}, float64 margin {case['first_difference']['float64_logit_margin']:.3f}"
                 if step is not None else ""))
    fixture = {
        "generator": "scripts/reference_answers.py",
        "reference": f"llama.cpp through llama-cpp-python {llama_cpp.__version__}, greedy (first maximum); "
                     "float64 numpy (scripts/reference_logits.py), greedy",
        "model": model_path.name,
        "model_sha256": sha256(model_path),
        "answers": answers,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(answers)} answers to {OUT}")


if __name__ == "__main__":
    main()
