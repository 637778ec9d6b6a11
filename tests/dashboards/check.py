"""Checks the Grafana dashboards in grafana/dashboards, for scripts/check-dashboards.

    check.py lint <dashboards dir>
        The JSON itself: Grafana 10+ schema, unique panel ids, no overlapping gridPos,
        every datasource reference resolvable, every $variable a query uses defined, a
        unit on every time series panel.
    check.py load <gateway base URL> <admin key>
        A short mixed load through the gateway, so that every panel has something to
        show: chat (plain, streamed, with a persona), completions, embeddings, a stream
        cancelled by its client, refused requests, a collection with ingestion and
        searches, style analysis, and a small fine-tuning job followed to its end.
    check.py query <Prometheus URL> <dashboards dir> <start unix time>
        Evaluates every query of every panel (template variables set to match all)
        over the time since <start>, as Grafana would, and fails naming the dashboard,
        panel and query that returned an error or no data; each template variable's
        `label_values(...)` must list at least one value too.
    check.py compose <docker-compose.yml>
        Every file or folder the compose file mounts from the repository exists.
    check.py runbooks <alerts.yml> <OPERATIONS.md>
        Every alert's runbook annotation points to a section of the operations guide.

Only the standard library: it runs with the system's python3.
"""

import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

MIN_SCHEMA_VERSION = 36  # Grafana 9.4; Grafana 10 writes 38 and newer.


def fail(message):
    print(f"check-dashboards: {message}", file=sys.stderr)
    sys.exit(1)


def dashboards(directory):
    for name in sorted(os.listdir(directory)):
        if name.endswith(".json"):
            with open(os.path.join(directory, name)) as handle:
                yield name, json.load(handle)


# --- lint -------------------------------------------------------------------------

def lint(directory):
    problems = []
    uids = set()
    for name, board in dashboards(directory):
        where = name
        if board.get("schemaVersion", 0) < MIN_SCHEMA_VERSION:
            problems.append(f"{where}: schemaVersion {board.get('schemaVersion')} is older than Grafana 10 reads well")
        uid = board.get("uid")
        if not uid or uid in uids:
            problems.append(f"{where}: uid {uid!r} is missing or used twice")
        uids.add(uid)
        variables = {v["name"]: v for v in board.get("templating", {}).get("list", [])}
        datasource_vars = {n for n, v in variables.items() if v.get("type") == "datasource"}

        def check_datasource(ref, what):
            if not isinstance(ref, dict) or ref.get("type") != "prometheus":
                problems.append(f"{where}: {what}: datasource {ref!r} is not a Prometheus reference")
                return
            uid = ref.get("uid", "")
            if uid.startswith("${") and uid.endswith("}"):
                if uid[2:-1] not in datasource_vars:
                    problems.append(f"{where}: {what}: datasource variable {uid} is not defined")
            elif uid != "prometheus":  # the uid grafana/provisioning gives the data source
                problems.append(f"{where}: {what}: datasource uid {uid!r} is not provisioned")

        def check_references(expr, what):
            for used in re.findall(r"\$\{?(\w+)", expr):
                if used not in variables and not used.startswith("__"):
                    problems.append(f"{where}: {what}: ${used} is not a variable of this dashboard")

        for variable in variables.values():
            if variable.get("type") == "query":
                check_datasource(variable.get("datasource"), f"variable {variable['name']}")
                check_references(variable.get("definition", ""), f"variable {variable['name']}")
        ids = set()
        cells = {}
        for panel in board.get("panels", []):
            title = panel.get("title", "?")
            what = f"panel {panel.get('id')} {title!r}"
            if panel.get("id") in ids:
                problems.append(f"{where}: {what}: id used twice")
            ids.add(panel.get("id"))
            grid = panel.get("gridPos", {})
            x, y, w, h = (grid.get(k) for k in ("x", "y", "w", "h"))
            if None in (x, y, w, h) or x < 0 or w <= 0 or h <= 0 or x + w > 24:
                problems.append(f"{where}: {what}: gridPos {grid} is outside the 24-column grid")
                continue
            for column in range(x, x + w):
                for row in range(y, y + h):
                    if (column, row) in cells:
                        problems.append(f"{where}: {what}: overlaps {cells[(column, row)]!r}")
                        break
                    cells[(column, row)] = title
                else:
                    continue
                break
            check_datasource(panel.get("datasource"), what)
            for target in panel.get("targets", []):
                check_datasource(target.get("datasource"), f"{what} query {target.get('refId')}")
                if not target.get("expr"):
                    problems.append(f"{where}: {what}: query {target.get('refId')} has no expr")
                check_references(target.get("expr", ""), f"{what} query {target.get('refId')}")
            if panel.get("type") == "timeseries" and not panel.get("fieldConfig", {}).get("defaults", {}).get("unit"):
                problems.append(f"{where}: {what}: a time series panel without a unit")
            if not panel.get("description"):
                problems.append(f"{where}: {what}: no description")
    if problems:
        fail("the dashboards' JSON:\n  " + "\n  ".join(problems))
    print(f"check-dashboards: {len(uids)} dashboards pass the JSON checks", file=sys.stderr)


# --- load -------------------------------------------------------------------------

class Gateway:
    def __init__(self, base, key):
        self.base, self.key = base.rstrip("/"), key

    def request(self, method, path, body=None, key=None, raw=None, content_type="application/json"):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {key or self.key}")
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def json(self, method, path, body=None, key=None, expect=200):
        status, payload = self.request(method, path, body, key)
        if status != expect:
            fail(f"{method} {path}: expected {expect}, got {status}: {payload[:300]!r}")
        return json.loads(payload) if payload else None

    def cancel_stream(self, path, body):
        """Starts a stream, reads its first bytes and hangs up."""
        request = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), method="POST")
        request.add_header("Authorization", f"Bearer {self.key}")
        request.add_header("Content-Type", "application/json")
        response = urllib.request.urlopen(request, timeout=60)
        response.read(64)
        response.close()


TRAINING = [
    {"messages": [{"role": "user", "content": f"Say something about the number {n}."},
                  {"role": "assistant", "content": f"Ahoy, matey! {n} be a fine number."}]}
    for n in range(6)
]


def load(base, key):
    gateway = Gateway(base, key)
    chat, embed = "smollm2", "minilm"
    question = [{"role": "user", "content": "What is the capital of France?"}]
    for _ in range(3):
        gateway.json("POST", "/v1/chat/completions", {"model": chat, "messages": question, "max_tokens": 8})
        gateway.request("POST", "/v1/chat/completions", {"model": chat, "messages": question, "max_tokens": 8, "stream": True})
        gateway.json("POST", "/v1/completions", {"model": chat, "prompt": "Once upon a time", "max_tokens": 8})
        gateway.json("POST", "/v1/embeddings", {"model": embed, "input": ["a plane", "a wing", "a jet engine"]})
    for persona in ("jester", "analyst"):
        gateway.json("POST", "/v1/chat/completions", {"model": chat, "messages": question, "max_tokens": 16, "persona": persona})
    gateway.json("POST", "/v1/personality/analyze", {"text": "Hello there! What a lovely day it is."})
    # Personal data masked by a key's PII policy (again at the end, for a rate).
    masking = gateway.json("POST", "/v1/keys", {"name": "dashboards-pii", "scopes": ["inference"], "pii": "mask"}, expect=201)
    private = [{"role": "user", "content": "Write to jane@example.com about it."}]
    gateway.json("POST", "/v1/chat/completions", {"model": chat, "messages": private, "max_tokens": 4}, key=masking["secret"])
    gateway.cancel_stream("/v1/chat/completions", {"model": chat, "messages": question, "max_tokens": 120, "stream": True})

    # Refusals: an unknown model, bad JSON, and a key over its rate limit.
    gateway.json("POST", "/v1/chat/completions", {"model": "no-such-model", "messages": question}, expect=404)
    status, _ = gateway.request("POST", "/v1/embeddings", raw=b"{not json")
    if status != 400:
        fail(f"bad JSON answered {status}")
    limited = gateway.json("POST", "/v1/keys", {"name": "dashboards", "scopes": ["inference"], "requests_per_minute": 1}, expect=201)
    statuses = [gateway.request("POST", "/v1/embeddings", {"model": embed, "input": "x"}, key=limited["secret"])[0] for _ in range(3)]
    if 429 not in statuses:
        fail(f"a key limited to 1 request a minute was not refused: {statuses}")

    # A collection: ingestion and searches in every mode, and a search that fails.
    gateway.json("POST", "/v1/collections", {"name": "dashboards", "embedding_model": embed}, expect=201)
    documents = [{"id": f"doc-{n}", "text": f"Note {n}: the wing makes lift and the engine burns kerosene."} for n in range(5)]
    gateway.json("POST", "/v1/collections/dashboards/documents", {"documents": documents})
    for mode in ("dense", "sparse", "hybrid"):
        for _ in range(2):
            gateway.json("POST", "/v1/collections/dashboards/search", {"query": "what burns kerosene?", "mode": mode})
    gateway.json("POST", "/v1/collections/no-such-collection/search", {"query": "x"}, expect=404)

    # A small fine-tuning job, followed to its end.
    boundary = "slough-dashboards"
    lines = "".join(json.dumps(example) + "\n" for example in TRAINING)
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"tiny.jsonl\"\r\n"
            f"Content-Type: application/jsonl\r\n\r\n{lines}\r\n--{boundary}--\r\n").encode()
    status, payload = gateway.request("POST", "/v1/files", raw=form, content_type=f"multipart/form-data; boundary={boundary}")
    if status != 200:
        fail(f"uploading a training file answered {status}: {payload[:300]!r}")
    file_id = json.loads(payload)["id"]
    job = gateway.json("POST", "/v1/fine_tuning/jobs", {
        "model": chat, "training_file": file_id,
        "hyperparameters": {"n_epochs": 1, "batch_size": 1}, "lora": {"rank": 4},
    })
    deadline = time.time() + 600
    while True:
        state = gateway.json("GET", f"/v1/fine_tuning/jobs/{job['id']}")
        if state["status"] in ("succeeded", "failed", "cancelled"):
            break
        if time.time() > deadline:
            fail(f"the fine-tuning job {job['id']} is still {state['status']} after 10 minutes")
        time.sleep(2)
    # Rates need an increase between two scrapes (every 2 s): the first round of searches
    # and persona chats only made their series appear, so a second round, now.
    for mode in ("dense", "sparse", "hybrid"):
        gateway.json("POST", "/v1/collections/dashboards/search", {"query": "what makes lift?", "mode": mode})
    for persona in ("jester", "analyst"):
        gateway.json("POST", "/v1/chat/completions", {"model": chat, "messages": question, "max_tokens": 16, "persona": persona})
    gateway.json("POST", "/v1/chat/completions", {"model": chat, "messages": private, "max_tokens": 4}, key=masking["secret"])
    print(f"check-dashboards: load done (the fine-tuning job {state['status']})", file=sys.stderr)


# --- query ------------------------------------------------------------------------

def substitute(expr, board):
    """The query as Grafana sends it with every variable at All."""
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            expr = expr.replace(f"${variable['name']}", ".*")
    return expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "1h")


def has_data(result):
    for series in result:
        for _, value in series.get("values", []):
            if not math.isnan(float(value)):
                return True
    return False


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.load(response)
    except urllib.error.HTTPError as err:
        return json.loads(err.read() or b"{}")


def query(prometheus, directory, start):
    start = float(start)
    end = time.time()
    missing = []
    count = 0
    for name, board in dashboards(directory):
        for variable in board.get("templating", {}).get("list", []):
            if variable.get("type") != "query":
                continue
            count += 1
            found = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
            where = f"{board['title']} / variable {variable['name']}: {variable['definition']}"
            if not found:
                missing.append(f"{where}\n      not a label_values(selector, label) query")
                continue
            selector, label = found.groups()
            params = urllib.parse.urlencode({"match[]": substitute(selector, board), "start": start, "end": end})
            answer = get(f"{prometheus}/api/v1/label/{label}/values?{params}")
            if answer.get("status") != "success" or not answer.get("data"):
                missing.append(f"{where}\n      no values: {answer.get('error', answer)}")
        for panel in board.get("panels", []):
            for target in panel.get("targets", []):
                count += 1
                expr = substitute(target["expr"], board)
                params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": 2})
                answer = get(f"{prometheus}/api/v1/query_range?{params}")
                where = f"{board['title']} / {panel['title']} / {target['refId']}: {expr}"
                if answer.get("status") != "success":
                    missing.append(f"{where}\n      error: {answer.get('error', answer)}")
                elif not has_data(answer["data"]["result"]):
                    missing.append(f"{where}\n      no data")
    if missing:
        fail(f"{len(missing)} of {count} panel queries show nothing:\n  " + "\n  ".join(missing))
    print(f"check-dashboards: all {count} panel and variable queries return data", file=sys.stderr)


# --- compose ----------------------------------------------------------------------

def compose(path):
    root = os.path.dirname(os.path.abspath(path))
    with open(path) as handle:
        text = handle.read()
    mounted = re.findall(r"[\s\[\"-]\./([\w./-]+?)(?::|\"|\s)", text)
    absent = [m for m in mounted if not os.path.exists(os.path.join(root, m))]
    if not mounted or absent:
        fail(f"{path} mounts what the repository lacks: {absent or 'nothing found to check'}")
    print(f"check-dashboards: {path}'s {len(mounted)} mounts exist", file=sys.stderr)


# --- runbooks ---------------------------------------------------------------------

def runbooks(rules, guide):
    with open(rules) as handle:
        links = re.findall(r"runbook:\s*\"?[\w./-]*#([\w-]+)", handle.read())
    with open(guide) as handle:
        headings = re.findall(r"^#+\s+(.+)$", handle.read(), flags=re.M)
    # GitHub's anchors: lower case, punctuation dropped, spaces as hyphens.
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
    broken = [link for link in links if link not in anchors]
    if not links or broken:
        fail(f"{rules} links runbooks that {guide} lacks: {broken or 'no runbook links found'}")
    print(f"check-dashboards: all {len(links)} alerts link a section of {guide}", file=sys.stderr)


if __name__ == "__main__":
    command, *arguments = sys.argv[1:] or ["help"]
    commands = {"lint": lint, "load": load, "query": query, "compose": compose, "runbooks": runbooks}
    if command not in commands:
        fail(__doc__)
    commands[command](*arguments)
