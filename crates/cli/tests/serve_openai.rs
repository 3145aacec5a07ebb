//! The official `openai` Python client (installed by scripts/setup.sh) against `lumen serve` on
//! the real SmolLM2 model: completions and chat completions, streamed and whole, with usage, and
//! the chat answer to the France prompt names Paris.

mod common;

use common::real_model;
use common::server::Server;
use std::process::Command;

const CLIENT: &str = r#"
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
