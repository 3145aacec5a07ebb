//! The official `openai` Python client (installed by scripts/setup.sh) against `lumen serve` on
//! the real SmolLM2 model: completions and chat completions, streamed and whole, with usage and
//! log-probabilities, and the chat answer to the France prompt names Paris.

mod common;

use common::real_model;
use common::server::Server;
use std::process::Command;

const CLIENT: &str = r#"
import math
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="k")
model = client.models.list().data[0].id
question = [{"role": "user", "content": "What is the capital of France?"}]

chat = client.chat.completions.create(model=model, messages=question, max_tokens=24, temperature=0)
answer = chat.choices[0].message.content
assert "Paris" in answer, answer
assert chat.usage.completion_tokens > 0 and chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens, chat.usage

pieces, usage = [], None
for chunk in client.chat.completions.create(model=model, messages=question, max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True}):
    if chunk.usage:
        usage = chunk.usage
    for choice in chunk.choices:
        pieces.append(choice.delta.content or "")
assert "".join(pieces) == answer, ("".join(pieces), answer)
assert usage.completion_tokens == chat.usage.completion_tokens, usage

done = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
assert done.usage.completion_tokens == 8 or done.choices[0].finish_reason == "stop", done
assert done.choices[0].text.strip(), done
text = "".join(c.choices[0].text for c in client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True) if c.choices)
assert text == done.choices[0].text, (text, done.choices[0].text)

stopped = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0, stop=[done.choices[0].text.strip()[:3]])
assert stopped.choices[0].finish_reason == "stop" and len(stopped.choices[0].text) < len(done.choices[0].text), stopped
scored = client.chat.completions.create(model=model, messages=question, max_tokens=24, temperature=0, logprobs=True, top_logprobs=3)
content = scored.choices[0].logprobs.content
assert scored.choices[0].message.content == answer and len(content) == scored.usage.completion_tokens, scored
joined = "".join(t.token for t in content)
assert joined in (answer, answer + "<|im_end|>"), (joined, answer)
for t in content:
    assert bytes(t.bytes).decode() == t.token and len(t.top_logprobs) == 3, t
    assert (t.top_logprobs[0].token, t.top_logprobs[0].logprob) == (t.token, t.logprob), t
    assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob, t
    assert sum(math.exp(a.logprob) for a in t.top_logprobs) <= 1 + 1e-5, t
paris = next(t for t in content if "Paris" in t.token)
assert paris.logprob > math.log(0.5), paris

legacy = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=2, extra_body={"ignore_eos": True})
lp = legacy.choices[0].logprobs
assert "".join(lp.tokens) == legacy.choices[0].text and len(lp.token_logprobs) == 8, lp
assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(8)], lp
assert all(max(top.values()) == p for top, p in zip(lp.top_logprobs, lp.token_logprobs)), lp
print(answer)
"#;

#[test]
fn the_openai_client_gets_paris_streamed_and_whole() {
    let model = real_model();
    let server = Server::start(&["--model", model.to_str().unwrap(), "--api-key", "k"], &[]);
    let out = Command::new("python3").args(["-c", CLIENT, &server.url]).output().expect("python3 runs");
    assert!(
        out.status.success(),
        "the openai client failed (scripts/setup.sh installs it):\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Paris"));
}
