"""The official `openai` Python client against a running gateway, unmodified.

Run by scripts/check-clients with SLOUGH_BASE_URL, SLOUGH_API_KEY, SLOUGH_CHAT_MODEL
and SLOUGH_EMBED_MODEL set. Exits non-zero on the first failed check.
"""

import os

import httpx
import openai

BASE_URL = os.environ["SLOUGH_BASE_URL"]
KEY = os.environ["SLOUGH_API_KEY"]
CHAT = os.environ["SLOUGH_CHAT_MODEL"]
EMBED = os.environ["SLOUGH_EMBED_MODEL"]

# No retries: a 429 must reach us, not be retried away.
client = openai.OpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def check(name, condition, detail=""):
    if not condition:
        raise SystemExit(f"FAILED {name}: {detail}")
    print(f"ok  {name}")


def expect_error(name, error_type, call):
    try:
        call()
    except error_type as err:
        check(name, err.body is not None and "message" in err.body, repr(err.body))
        return err
    except openai.APIError as err:
        raise SystemExit(f"FAILED {name}: expected {error_type.__name__}, got {type(err).__name__}: {err}")
    raise SystemExit(f"FAILED {name}: expected {error_type.__name__}, got no error")


chat = client.chat.completions.create(model=CHAT, messages=QUESTION, temperature=0, max_tokens=24)
answer = chat.choices[0].message.content
check("chat completion", "Paris" in answer and chat.choices[0].finish_reason == "stop", answer)
check("chat usage", chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens)

stream = client.chat.completions.create(
    model=CHAT, messages=QUESTION, temperature=0, max_tokens=24, stream=True,
    stream_options={"include_usage": True},
)
pieces, usage, finish = [], None, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        pieces.append(choice.delta.content or "")
        finish = choice.finish_reason or finish
check("streamed chat equals the plain answer", "".join(pieces) == answer, "".join(pieces))
check("streamed chat usage", usage is not None and usage.completion_tokens == chat.usage.completion_tokens)
check("streamed finish reason", finish == "stop", finish)

completion = client.completions.create(model=CHAT, prompt=["The sky is", "Water is"], max_tokens=5, temperature=0)
check("completions", len(completion.choices) == 2 and completion.usage.completion_tokens == 10)

# The client asks for base64 by default and decodes it.
embedded = client.embeddings.create(model=EMBED, input=["A cat sits on the mat.", "A kitten rests on a rug."])
vectors = [item.embedding for item in embedded.data]
check("embeddings (base64 by default)", len(vectors) == 2 and len(vectors[0]) == 384)
as_floats = client.embeddings.create(model=EMBED, input="A cat sits on the mat.", encoding_format="float")
check("embeddings as floats match", max(abs(a - b) for a, b in zip(as_floats.data[0].embedding, vectors[0])) < 1e-6)
similarity = sum(a * b for a, b in zip(vectors[0], vectors[1]))
check("similar sentences are close", similarity > 0.5, similarity)

# Many texts travel in batches and come back in order; a text over the model's limit is
# refused by index unless the extension `truncate` asks to cut it.
many = [f"sentence number {i}" for i in range(300)]
embedded_many = client.embeddings.create(model=EMBED, input=many)
check(
    "300 embeddings in order",
    [item.index for item in embedded_many.data] == list(range(300)) and len(embedded_many.data[299].embedding) == 384,
)
long_text = "many words here " * 2000
error = expect_error(
    "400 BadRequestError names an over-long input",
    openai.BadRequestError,
    lambda: client.embeddings.create(model=EMBED, input=["short", long_text]),
)
check("the over-long input is named", error.body.get("param") == "input[1]", repr(error.body))
cut = client.embeddings.create(model=EMBED, input=["short", long_text], extra_body={"truncate": True})
check("truncate cuts and says so", cut.model_extra.get("truncated") == [1], repr(cut.model_extra))

models = [model.id for model in client.models.list()]
check("model list", CHAT in models and EMBED in models, models)
check("one model", client.models.retrieve(CHAT).id == CHAT)

# Personas: the extension field and the model alias, plain and streamed; each answer
# carries its adherence. (The assistant's short system prompt fits the short context
# these checks run with.)
as_assistant = client.chat.completions.create(
    model=CHAT, messages=QUESTION, max_tokens=16, extra_body={"persona": "assistant"}
)
adherence = as_assistant.choices[0].model_extra.get("persona_adherence") or {}
check(
    "persona answer carries its adherence",
    adherence.get("persona") == "assistant" and 0 <= adherence.get("score", -1) <= 1,
    repr(as_assistant.choices[0].model_extra),
)
check("persona aliases are listed", f"{CHAT}:jester" in models, models)
scored = None
for chunk in client.chat.completions.create(
    model=f"{CHAT}:assistant", messages=QUESTION, max_tokens=16, stream=True
):
    for choice in chunk.choices:
        scored = (choice.model_extra or {}).get("persona_adherence") or scored
check("streamed persona answer carries its adherence", scored and scored["persona"] == "assistant", repr(scored))
expect_error(
    "404 NotFoundError for an unknown persona",
    openai.NotFoundError,
    lambda: client.chat.completions.create(model=CHAT, messages=QUESTION, extra_body={"persona": "nobody"}),
)

# Retrieval-augmented chat through the extension; collections are managed over plain HTTP.
headers = {"Authorization": f"Bearer {KEY}"}
httpx.post(f"{BASE_URL}/collections", headers=headers, json={"name": "client-check", "embedding_model": EMBED})
httpx.post(
    f"{BASE_URL}/collections/client-check/documents",
    headers=headers,
    json={"documents": [{"id": "france", "text": "Paris is the capital of France."}]},
    timeout=60,
)
grounded = client.chat.completions.create(
    model=CHAT, messages=QUESTION, max_tokens=16, extra_body={"rag": {"collection": "client-check", "top_k": 1}}
)
citations = grounded.model_extra.get("citations") or []
check("rag chat cites its source", citations and citations[0]["document_id"] == "france", repr(grounded.model_extra))
httpx.delete(f"{BASE_URL}/collections/client-check", headers=headers)

bad_key = openai.OpenAI(base_url=BASE_URL, api_key="sk-not-a-real-key-but-long-enough-to-look-like-one", max_retries=0)
expect_error("401 AuthenticationError", openai.AuthenticationError, lambda: bad_key.models.list())
expect_error(
    "400 BadRequestError names the field",
    openai.BadRequestError,
    lambda: client.chat.completions.create(model=CHAT, messages=QUESTION, temperature=9),
)
error = expect_error(
    "400 BadRequestError for an extension field out of range",
    openai.BadRequestError,
    lambda: client.chat.completions.create(model=CHAT, messages=QUESTION, extra_body={"repetition_penalty": 0.005}),
)
check("the extension field is named", error.body.get("param") == "repetition_penalty", repr(error.body))
expect_error(
    "404 NotFoundError for an unknown model",
    openai.NotFoundError,
    lambda: client.chat.completions.create(model="no-such-model", messages=QUESTION),
)
expect_error(
    "422 UnprocessableEntityError over the context",
    openai.UnprocessableEntityError,
    lambda: client.chat.completions.create(model=CHAT, messages=QUESTION, max_tokens=100_000),
)

# A key limited to one request per minute: the second is a RateLimitError with Retry-After.
created = httpx.post(
    f"{BASE_URL}/keys",
    headers={"Authorization": f"Bearer {KEY}"},
    json={"name": "client check", "requests_per_minute": 1},
).json()
limited = openai.OpenAI(base_url=BASE_URL, api_key=created["secret"], max_retries=0)
limited.embeddings.create(model=EMBED, input="one")
error = expect_error("429 RateLimitError", openai.RateLimitError, lambda: limited.embeddings.create(model=EMBED, input="two"))
check("429 carries Retry-After", int(error.response.headers["retry-after"]) >= 1)
# A stored completion (OpenAI's `store`) takes feedback, which datasets are made of.
kept = client.chat.completions.create(model=CHAT, messages=QUESTION, temperature=0, max_tokens=8, store=True, metadata={"check": "feedback"})
feedback = httpx.post(
    f"{BASE_URL}/chat/completions/{kept.id}/feedback",
    headers={"Authorization": f"Bearer {KEY}"},
    json={"rating": 5},
)
check("feedback on a stored completion", feedback.status_code == 200 and feedback.json()["rating"] == 5, feedback.text)

# Files and fine-tuning: upload, start a job, follow it, cancel it (training itself is
# covered by the end-to-end test; here the client's calls and shapes are).
training = os.path.join(os.path.dirname(__file__), "..", "data", "fine-tune", "pirate-train.jsonl")
with open(training, "rb") as handle:
    uploaded = client.files.create(file=handle, purpose="fine-tune")
check("files.create", uploaded.id.startswith("file-") and uploaded.purpose == "fine-tune" and uploaded.bytes > 0)
check("files.retrieve", client.files.retrieve(uploaded.id).filename == "pirate-train.jsonl")
check("files.list", any(f.id == uploaded.id for f in client.files.list(purpose="fine-tune")))
with open(training, "rb") as handle:
    check("files.content", client.files.content(uploaded.id).read() == handle.read())
expect_error(
    "400 BadRequestError for a malformed fine-tuning file, naming the line",
    openai.BadRequestError,
    lambda: client.files.create(file=("bad.jsonl", b'{"messages": []}\nnot json\n'), purpose="fine-tune"),
)
job = client.fine_tuning.jobs.create(
    model=CHAT, training_file=uploaded.id, suffix="check", seed=3,
    hyperparameters={"n_epochs": 1}, extra_body={"lora": {"rank": 4}},
)
check("fine_tuning.jobs.create", job.id.startswith("ftjob-") and job.status == "validating_files", job.status)
check("fine_tuning.jobs.retrieve", client.fine_tuning.jobs.retrieve(job.id).training_file == uploaded.id)
check("fine_tuning.jobs.list", any(j.id == job.id for j in client.fine_tuning.jobs.list(limit=5)))
cancelled = client.fine_tuning.jobs.cancel(job.id)
check("fine_tuning.jobs.cancel", cancelled.status == "cancelled", cancelled.status)
messages = [event.message for event in client.fine_tuning.jobs.list_events(job.id, limit=50)]
check("fine_tuning.jobs.list_events", "Job cancelled by the user" in messages, repr(messages))
check("fine_tuning.jobs.checkpoints.list", client.fine_tuning.jobs.checkpoints.list(job.id).data is not None)
expect_error(
    "409 ConflictError cancelling a finished job",
    openai.ConflictError,
    lambda: client.fine_tuning.jobs.cancel(job.id),
)
expect_error(
    "404 NotFoundError for a job on an unknown model",
    openai.NotFoundError,
    lambda: client.fine_tuning.jobs.create(model="no-such-model", training_file=uploaded.id),
)
check("files.delete", client.files.delete(uploaded.id).deleted)

# Export and erasure: what one key made through the client is handed over whole, then
# erased; afterwards the key, its file and its end user's completion are gone.
admin = {"Authorization": f"Bearer {KEY}"}
subject = httpx.post(f"{BASE_URL}/keys", headers=admin, json={"name": "erasure check", "scopes": ["inference", "fine-tune"]}).json()
subject_id = subject["key"]["id"]
theirs = openai.OpenAI(base_url=BASE_URL, api_key=subject["secret"], max_retries=0)
with open(training, "rb") as handle:
    their_file = theirs.files.create(file=handle, purpose="fine-tune")
their_chat = theirs.chat.completions.create(
    model=CHAT, messages=QUESTION, max_tokens=4, store=True, extra_body={"safety_identifier": "client-check-user"},
)
exported = httpx.get(f"{BASE_URL}/keys/{subject_id}/export", headers=admin).json()
check(
    "a key's export holds its file and stored completion",
    [f["id"] for f in exported["files"]] == [their_file.id]
    and [c["id"] for c in exported["stored_completions"]] == [their_chat.id]
    and exported["stored_completions"][0]["end_user"] == "client-check-user",
    repr(exported)[:500],
)
erased = httpx.delete(f"{BASE_URL}/keys/{subject_id}/data", headers=admin).json()
check("a key's erasure", erased["files"] == 1 and erased["stored_completions"] == 1 and erased["revoked"], repr(erased))
expect_error("401 AuthenticationError for an erased key", openai.AuthenticationError, lambda: theirs.models.list())
expect_error("404 NotFoundError for an erased key's file", openai.NotFoundError, lambda: client.files.retrieve(their_file.id))
user = httpx.get(f"{BASE_URL}/end_users/client-check-user/export", headers=admin).json()
check("nothing is left of the end user", user["stored_completions"] == [], repr(user))

print("openai client: all checks passed")
