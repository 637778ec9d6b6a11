//! The web console in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver, fantoccini) against the whole platform as `slough up` runs it, with the
//! real models. A person's first steps, checked as they would see them: a wrong key is
//! refused in words, a chat streams in parts, Stop cancels the generation on the server
//! (inference's cancelled counter moves), a persona's answer shows its adherence, an
//! uploaded document is found and cited, a key is created (its secret works) and
//! revoked (it stops working). No page may break the Content-Security-Policy. A
//! screenshot of every page is saved under `<target>/tmp/console-screenshots/`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use slough::{Platform, gateway_client::GatewayClient, up::bootstrap_admin_key};
use slough_protocol::ServiceKind;
use slough_testkit::{CHAT_MODEL, EMBED_MODEL, TestNats, scrape_metric};
use support::settings;

mod support;

/// chromedriver, killed when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn program(variable: &str, candidates: &[&str]) -> String {
    if let Ok(path) = std::env::var(variable) {
        return path;
    }
    candidates
        .iter()
        .find(|path| std::path::Path::new(path).exists())
        .unwrap_or_else(|| {
            panic!("none of {candidates:?} exists: run ./scripts/setup (or set {variable})")
        })
        .to_string()
}

async fn browser() -> (Driver, Client) {
    let driver = program("SLOUGH_CHROMEDRIVER", &["/usr/bin/chromedriver"]);
    let chromium = program(
        "SLOUGH_CHROMIUM",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
    );
    // Port 0: chromedriver picks one and says which on its first lines.
    let mut child = Command::new(&driver)
        .arg("--port=0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {driver}: {err}"));
    let stdout = child.stdout.take().expect("chromedriver's stdout");
    let driver = Driver(child);
    // Read on a thread of its own to the end, so that chromedriver never blocks on a
    // full pipe (or meets a closed one).
    let (said, port) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let started = line
                .strip_prefix("ChromeDriver was started successfully on port ")
                .and_then(|rest| rest.trim_end_matches('.').parse::<u16>().ok());
            if let Some(port) = started {
                let _ = said.send(port);
            }
        }
    });
    let port = port
        .recv_timeout(Duration::from_secs(30))
        .expect("chromedriver says which port it listens on");
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,960", "--lang=en-GB"],
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Plain HTTP to a local chromedriver: no TLS.
        match ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return (driver, client),
            // chromedriver takes a moment to listen.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("chromedriver did not start a browser: {err}"),
        }
    }
}

/// The page, as a thin layer over WebDriver: scripts that read it, waits, screenshots.
struct Page {
    client: Client,
    shots: PathBuf,
    /// The window's size between screenshots.
    size: std::cell::Cell<(u32, u32)>,
}

impl Page {
    /// Runs `script` (a function body) in the page and answers what it returns.
    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Waits until `script` returns something truthy, and answers it.
    async fn until(&self, what: &str, script: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.js(script).await;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                let notice = self.text("#notice").await;
                self.shot(&format!("failed-{}", what.replace(' ', "-")))
                    .await;
                panic!("{what}: not within {limit:?} (notice: {notice:?})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text(&self, css: &str) -> String {
        let script = format!("return document.querySelector({css:?})?.textContent ?? null");
        self.js(&script)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("{css}: {err}"))
    }

    async fn fill(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        element.clear().await.unwrap();
        element.send_keys(text).await.unwrap();
    }

    async fn select(&self, css: &str, value: &str) {
        self.find(css).await.select_by_value(value).await.unwrap();
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    async fn go(&self, hash: &str) {
        self.js(&format!("location.hash = {hash:?}")).await;
    }

    async fn resize(&self, width: u32, height: u32) {
        self.size.set((width, height));
        self.client.set_window_size(width, height).await.unwrap();
    }

    /// Saves a picture of the whole page: the window is made as tall as the page for it.
    async fn shot(&self, name: &str) {
        let (width, height) = self.size.get();
        let page = self
            .js("return document.documentElement.scrollHeight")
            .await;
        let tall = u32::try_from(page.as_u64().unwrap_or(0))
            .unwrap_or(height)
            .clamp(height, 6000);
        self.client
            .set_window_size(width, tall + 140)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let png = self.client.screenshot().await.unwrap();
        self.client.set_window_size(width, height).await.unwrap();
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }

    /// Sends a chat message and waits for its answer (`a<n>`) to end; answers its state.
    async fn chat(&self, message: &str) -> (String, String) {
        let before = self
            .js("return document.querySelectorAll('li.assistant').length")
            .await;
        self.fill("textarea[name=message]", message).await;
        self.click(".composer button[type=submit]").await;
        let id = self
            .until("the answer appears", &format!(
                "const all = document.querySelectorAll('li.assistant'); return all.length > {before} ? all[all.length - 1].id : null"
            ), Duration::from_secs(10))
            .await;
        let id = id.as_str().unwrap().to_owned();
        let state = self
            .until("the answer ends", &format!(
                "const s = document.getElementById('{id}').dataset.state; return s === 'streaming' ? null : s"
            ), Duration::from_secs(180))
            .await;
        (id, state.as_str().unwrap().to_owned())
    }
}

/// What every step of the session shares: the browser's page on the console, the
/// gateway's base URL, the admin key and a client holding it, inference's admin URL, and
/// the test's nats-server (whose directory holds the test's files).
struct Session {
    page: Page,
    base: String,
    key: String,
    client: GatewayClient,
    inference_admin: String,
    nats: TestNats,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_session_in_the_console() {
    let nats = TestNats::start();
    let mut settings = settings(&nats);
    // The shared test packages, linked into a directory of this test's own, where the
    // fine-tuning job writes the model it makes.
    let models = nats.dir().join("models");
    std::fs::create_dir_all(&models).unwrap();
    for id in [CHAT_MODEL, EMBED_MODEL] {
        std::os::unix::fs::symlink(slough_testkit::test_models_dir().join(id), models.join(id))
            .unwrap();
    }
    settings.common.models_dir = Some(models);
    let key = bootstrap_admin_key(&settings)
        .await
        .unwrap()
        .expect("a fresh store makes an admin key");
    let platform = Platform::start(&ServiceKind::ALL, &settings, &nats.url())
        .await
        .unwrap();
    let api = platform.gateway_api().await.unwrap();
    let base = format!("http://{api}");
    let client = GatewayClient::new(&base, &key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let chat = client.models("chat").await.unwrap_or_default();
        let embedding = client.models("embedding").await.unwrap_or_default();
        if chat.iter().any(|m| m == CHAT_MODEL) && embedding.iter().any(|m| m == EMBED_MODEL) {
            break;
        }
        assert!(Instant::now() < deadline, "the models are not served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let inference_admin = platform
        .services()
        .iter()
        .find(|service| service.kind() == ServiceKind::Inference)
        .unwrap()
        .admin_url()
        .to_owned();

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let (_driver, browser) = browser().await;
    let page = Page {
        client: browser,
        shots,
        size: std::cell::Cell::new((1280, 960)),
    };
    page.resize(1280, 960).await;
    let session = Session {
        page,
        base,
        key,
        client,
        inference_admin,
        nats,
    };

    the_page_sends_a_strict_policy(&session).await;
    without_a_key_a_welcome_says_what_to_do(&session).await;
    a_wrong_key_is_refused_in_words(&session).await;
    the_right_key_opens_the_chat(&session).await;
    a_streamed_answer_is_seen_growing(&session).await;
    the_conversation_as_code_runs(&session).await;
    stop_cancels_the_generation_on_the_server(&session).await;
    a_persona_answer_shows_its_adherence(&session).await;
    knowledge_uploads_with_progress_and_searches_three_ways(&session).await;
    a_cited_answer_from_the_collection(&session).await;
    a_copied_persona_previews_its_template(&session).await;
    a_bad_training_file_names_its_line(&session).await;
    a_real_fine_tuning_job_trains_and_its_model_chats(&session).await;
    operations_show_health_keys_and_usage(&session).await;
    the_audit_page_shows_who_changed_what(&session).await;
    a_phone_sized_window_is_one_column(&session).await;

    let Session {
        page, nats: _nats, ..
    } = session;
    let violations = page
        .js("return window.violations.concat(window.failures)")
        .await;
    assert_eq!(violations, json!([]), "policy violations or script errors");
    page.client.close().await.unwrap();
    let errors = platform.stop().await;
    assert!(errors.is_empty(), "{errors:?}");
}
/// The page and its headers: strict policy, nothing to sniff, no framing.
async fn the_page_sends_a_strict_policy(s: &Session) {
    let Session { base, .. } = s;
    let index = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(index.status(), 200);
    let policy = index.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"),
        "{policy}"
    );
    assert_eq!(index.headers()["x-content-type-options"], "nosniff");
    let head = reqwest::Client::new()
        .head(format!("{base}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200, "HEAD / (curl -I) answers like GET");
}

/// No key: a welcome that says what to do, never a blank page.
async fn without_a_key_a_welcome_says_what_to_do(s: &Session) {
    let Session { page, base, .. } = s;
    page.client.goto(&format!("{base}/")).await.unwrap();
    page.js(
        "window.violations = []; document.addEventListener('securitypolicyviolation', \
         (e) => window.violations.push(e.violatedDirective + ' ' + e.blockedURI)); \
         window.failures = []; window.addEventListener('error', (e) => window.failures.push(e.message)); \
         window.addEventListener('unhandledrejection', (e) => window.failures.push(String(e.reason)))",
    )
    .await;
    let welcome = page
        .until(
            "the welcome",
            "return document.querySelector('.welcome')?.textContent",
            Duration::from_secs(10),
        )
        .await;
    assert!(
        welcome.as_str().unwrap().contains("Enter an API key"),
        "{welcome}"
    );
    page.shot("01-welcome").await;
}

/// A wrong key: refused, in words.
async fn a_wrong_key_is_refused_in_words(s: &Session) {
    let Session { page, .. } = s;
    page.fill("#key-input", "sk-not-a-real-key").await;
    page.click("#key-use").await;
    let refused = page
        .until(
            "the refusal",
            "const n = document.getElementById('notice'); return n.hidden ? null : n.textContent",
            Duration::from_secs(10),
        )
        .await;
    assert!(
        refused.as_str().unwrap().contains("refused the API key"),
        "{refused}"
    );
    page.shot("02-wrong-key").await;
}

/// The right key: the chat page with the model to pick.
async fn the_right_key_opens_the_chat(s: &Session) {
    let Session { page, key, .. } = s;
    page.fill("#key-input", key).await;
    page.click("#key-use").await;
    page.until("the model list", &format!(
        "return [...document.querySelectorAll('select[name=model] option')].some((o) => o.value === '{CHAT_MODEL}')"
    ), Duration::from_secs(10)).await;
    page.select("select[name=model]", CHAT_MODEL).await;
}

/// Streaming: the answer is seen growing before it ends.
async fn a_streamed_answer_is_seen_growing(s: &Session) {
    let Session { page, .. } = s;
    page.js("document.querySelector('details.sampling').open = true")
        .await;
    page.fill("input[name=max_tokens]", "64").await;
    page.fill("input[name=seed]", "7").await;
    page.fill(
        "textarea[name=message]",
        "Write three sentences about the sea.",
    )
    .await;
    page.click(".composer button[type=submit]").await;
    let mut lengths = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = page.js("const a = document.querySelector('li.assistant'); return a ? [a.dataset.state, a.querySelector('.content').textContent.length] : null").await;
        if let Some([state, length]) = seen.as_array().map(|v| [v[0].clone(), v[1].clone()]) {
            if state == "streaming" && length.as_u64().unwrap() > 0 {
                lengths.insert(length.as_u64().unwrap());
            }
            if state != "streaming" {
                assert_eq!(state, "done");
                break;
            }
        }
        assert!(Instant::now() < deadline, "the first answer did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        lengths.len() >= 2,
        "the answer arrived in one piece: {lengths:?}"
    );
    let stats = page.text("li.assistant .stats").await;
    assert!(
        stats.contains("tokens/s") && stats.contains("first token"),
        "{stats}"
    );
    eprintln!(
        "first answer: seen at {} lengths while streaming; {stats}",
        lengths.len()
    );
}

/// The conversation as code: the curl command runs as printed and streams an answer;
/// the Python is valid Python.
async fn the_conversation_as_code_runs(s: &Session) {
    let Session { page, key, .. } = s;
    page.click("button[data-copy=curl]").await;
    let command = page
        .until(
            "the curl command",
            "return document.querySelector('dialog.code textarea')?.value",
            Duration::from_secs(5),
        )
        .await;
    let ran = Command::new("bash")
        .arg("-c")
        .arg(command.as_str().unwrap())
        .env("SLOUGH_API_KEY", key)
        .output()
        .unwrap();
    let streamed = String::from_utf8_lossy(&ran.stdout);
    assert!(
        streamed.contains("chat.completion.chunk") && streamed.trim_end().ends_with("data: [DONE]"),
        "{command}\n{streamed}"
    );
    page.click("dialog.code button.quiet").await;
    page.click("button[data-copy=python]").await;
    let code = page.until("the Python code", "return document.querySelector('dialog.code h2').textContent.includes('Python') && document.querySelector('dialog.code textarea').value", Duration::from_secs(5)).await;
    let parsed = Command::new("python3")
        .args(["-c", "import ast, sys; ast.parse(sys.stdin.read())"])
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut python| {
            use std::io::Write as _;
            python
                .stdin
                .take()
                .unwrap()
                .write_all(code.as_str().unwrap().as_bytes())?;
            python.wait()
        })
        .unwrap();
    assert!(
        parsed.success(),
        "not valid Python:\n{}",
        code.as_str().unwrap()
    );
    assert!(
        code.as_str()
            .unwrap()
            .contains("client.chat.completions.create("),
        "{code}"
    );
    page.click("dialog.code button.quiet").await;
}

/// Stop: a long answer stopped mid-way is cancelled on the server.
async fn stop_cancels_the_generation_on_the_server(s: &Session) {
    let Session {
        page,
        inference_admin,
        ..
    } = s;
    let cancelled = &format!("slough_inference_cancelled_requests_total{{model=\"{CHAT_MODEL}\"}}");
    let before = scrape_metric(inference_admin, cancelled)
        .await
        .unwrap_or(0.0);
    page.fill("input[name=max_tokens]", "1000").await;
    page.fill(
        "textarea[name=message]",
        "Tell me a very long story about a lighthouse.",
    )
    .await;
    page.click(".composer button[type=submit]").await;
    page.until("a few tokens", "const all = document.querySelectorAll('li.assistant'); return Number(all[all.length - 1].dataset.parts ?? 0) >= 3", Duration::from_secs(60)).await;
    page.click(".composer button.danger").await;
    page.until("the answer stops", "const all = document.querySelectorAll('li.assistant'); return all[all.length - 1].dataset.state === 'stopped'", Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = scrape_metric(inference_admin, cancelled)
            .await
            .unwrap_or(0.0);
        if now > before {
            eprintln!("cancelled generations: {before} → {now}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Stop did not cancel the generation on the server ({cancelled} stayed {before})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    page.shot("03-chat").await;
}

/// A persona: the answer shows its adherence, trait by trait.
async fn a_persona_answer_shows_its_adherence(s: &Session) {
    let Session { page, .. } = s;
    page.fill("input[name=max_tokens]", "48").await;
    page.select("select[name=persona]", "jester").await;
    let (id, state) = page.chat("How do I make a cup of tea?").await;
    assert_eq!(state, "done");
    let adherence = page
        .until(
            "the adherence",
            &format!("return document.querySelector('#{id} .adherence-score')?.textContent"),
            Duration::from_secs(10),
        )
        .await;
    let score: f64 = adherence.as_str().unwrap().parse().unwrap();
    assert!((0.0..=1.0).contains(&score), "{score}");
    let traits = page.js(&format!("document.querySelector('#{id} details.adherence').open = true; return document.querySelectorAll('#{id} .adherence tbody tr').length")).await;
    assert_eq!(traits, json!(5));
    page.js(&format!("document.getElementById('{id}').scrollIntoView()"))
        .await;
    page.shot("04-chat-persona").await;
    page.select("select[name=persona]", "").await;
}

/// Knowledge: a collection, an upload with progress, a search three ways.
async fn knowledge_uploads_with_progress_and_searches_three_ways(s: &Session) {
    let Session { page, nats, .. } = s;
    page.go("knowledge").await;
    page.fill("input[name=name]", "handbook").await;
    page.select("select[name=embedding_model]", EMBED_MODEL)
        .await;
    page.click("form.inline button[type=submit]").await;
    page.until(
        "the collection",
        "return document.getElementById('collection')?.textContent.includes('handbook')",
        Duration::from_secs(10),
    )
    .await;
    let document = nats.dir().join("lighthouse.md");
    std::fs::write(
        &document,
        "# The Slough lighthouse\n\nThe Slough lighthouse stands on Gannet Point. Its keeper is \
         Marigold Penhaligon, who has kept the light since 1998. The lamp turns once every \
         twelve seconds and can be seen from thirty kilometres out at sea.\n\n\
         ## Visiting\n\nVisitors may climb the 142 steps on Saturdays between ten and four.\n",
    )
    .unwrap();
    page.find("input[type=file][name=files]")
        .await
        .send_keys(document.to_str().unwrap())
        .await
        .unwrap();
    page.click("#collection form.inline button[type=submit]")
        .await;
    page.until("the upload", "return document.querySelector('#collection .muted[aria-live]')?.textContent.startsWith('done')", Duration::from_secs(60)).await;
    page.fill("input[name=q]", "who keeps the lighthouse").await;
    page.click("#collection form.inline:nth-of-type(2) button[type=submit]")
        .await;
    page.until(
        "three result lists",
        "return document.querySelectorAll('.search-columns .hits li').length >= 3",
        Duration::from_secs(30),
    )
    .await;
    let modes = page.js("return [...document.querySelectorAll('.search-columns .hits h3')].map((h) => h.firstChild.textContent)").await;
    assert_eq!(modes, json!(["dense", "sparse", "hybrid"]));
    page.shot("05-knowledge").await;
}

/// A cited answer from that collection.
async fn a_cited_answer_from_the_collection(s: &Session) {
    let Session { page, .. } = s;
    page.go("chat?collection=handbook").await;
    page.until(
        "the collection chosen",
        "return document.querySelector('select[name=collection]')?.value === 'handbook'",
        Duration::from_secs(10),
    )
    .await;
    page.select("select[name=model]", CHAT_MODEL).await;
    page.js("document.querySelector('details.sampling').open = true")
        .await;
    page.fill("input[name=max_tokens]", "48").await;
    let (id, state) = page
        .chat("Who is the keeper of the Slough lighthouse?")
        .await;
    assert_eq!(state, "done");
    let cited = page
        .until(
            "the citations",
            &format!("return document.querySelector('#{id} .citations blockquote')?.textContent"),
            Duration::from_secs(10),
        )
        .await;
    assert!(
        cited.as_str().unwrap().contains("Marigold Penhaligon"),
        "{cited}"
    );
    page.js(&format!("document.querySelector('#{id} .citations details').open = true; document.getElementById('{id}').scrollIntoView()")).await;
    page.shot("06-chat-citations").await;
}

/// Personas: a built-in one copied, its copy's template previewed as it is edited.
async fn a_copied_persona_previews_its_template(s: &Session) {
    let Session { page, .. } = s;
    page.go("personas?id=jester").await;
    page.until(
        "the preview",
        "return document.querySelector('pre.preview')?.textContent.length > 20",
        Duration::from_secs(10),
    )
    .await;
    page.fill("input[name=id]", "house-jester").await;
    page.click("#persona form.inline button[type=submit]").await;
    page.until("the copy", "return location.hash.includes('house-jester') && !document.querySelector('#persona input[name=name]')?.disabled", Duration::from_secs(10)).await;
    page.fill("#persona input[name=name]", "Court Jester Bob")
        .await;
    page.until(
        "the preview follows the edit",
        "return document.querySelector('pre.preview')?.textContent.includes('Court Jester Bob')",
        Duration::from_secs(10),
    )
    .await;
    page.fill(
        "textarea[name=text]",
        "Hello there! What a wonderful, sunny day it is!",
    )
    .await;
    page.click("#analyze button[type=submit]").await;
    page.until(
        "the metrics",
        "return document.querySelectorAll('#metrics tbody tr').length",
        Duration::from_secs(10),
    )
    .await;
    page.shot("07-personas").await;
}

/// Fine-tuning: a bad training file is refused with its line named.
async fn a_bad_training_file_names_its_line(s: &Session) {
    let Session { page, nats, .. } = s;
    page.go("fine-tuning").await;
    let bad = nats.dir().join("train.jsonl");
    std::fs::write(
        &bad,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}]}\nnot json\n",
    )
    .unwrap();
    page.find("input[type=file][name=file]")
        .await
        .send_keys(bad.to_str().unwrap())
        .await
        .unwrap();
    page.click(".page-fine-tuning form button[type=submit]")
        .await;
    let problem = page
        .until(
            "the refusal",
            "return document.querySelector('.page-fine-tuning .error-text')?.textContent",
            Duration::from_secs(15),
        )
        .await;
    assert!(problem.as_str().unwrap().contains("line 2"), "{problem}");
    page.shot("08-fine-tuning-refused").await;
}

/// A real job on a few examples: started from the page, its loss drawn as it trains,
/// its model opened in the playground.
async fn a_real_fine_tuning_job_trains_and_its_model_chats(s: &Session) {
    let Session {
        page, client, nats, ..
    } = s;
    let examples: String = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fine-tune/pirate-train.jsonl"),
    )
    .unwrap()
    .lines()
    .take(12)
    .map(|line| format!("{line}\n"))
    .collect();
    let good = nats.dir().join("pirate.jsonl");
    std::fs::write(&good, examples).unwrap();
    page.find("input[type=file][name=file]")
        .await
        .send_keys(good.to_str().unwrap())
        .await
        .unwrap();
    page.click(".page-fine-tuning form button[type=submit]")
        .await;
    page.until(
        "the file listed",
        "return document.querySelector('#files')?.textContent.includes('pirate.jsonl')",
        Duration::from_secs(15),
    )
    .await;
    page.select("select[name=model]", CHAT_MODEL).await;
    page.fill("input[name=suffix]", "pirate").await;
    page.fill("input[name=n_epochs]", "1").await;
    page.fill("input[name=batch_size]", "4").await;
    page.fill("input[name=learning_rate_multiplier]", "5").await;
    page.click(".page-fine-tuning form:not(:has(input[type=file])) button[type=submit]")
        .await;
    let started = Instant::now();
    page.until(
        "the job succeeds",
        "return document.querySelector('#job .status')?.textContent === 'succeeded'",
        Duration::from_secs(300),
    )
    .await;
    eprintln!(
        "fine-tuning job (12 examples, 3 steps) took {:.0} s in the page",
        started.elapsed().as_secs_f64()
    );
    let points = page.js("return document.querySelector('#job .loss svg path.series-0')?.getAttribute('d')?.split('L').length ?? 0").await;
    assert!(
        points.as_u64().unwrap() >= 2,
        "the loss curve has {points} points"
    );
    page.shot("09-fine-tuning-job").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client
        .models("chat")
        .await
        .unwrap()
        .iter()
        .any(|m| m.starts_with("ft:"))
    {
        assert!(
            Instant::now() < deadline,
            "the fine-tuned model is not served"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    page.click("#job a.button").await;
    let tuned = page.until("the tuned model in the playground", "return document.querySelector('select[name=model]')?.value.startsWith('ft:') && document.querySelector('select[name=model]').value", Duration::from_secs(30)).await;
    eprintln!("opened {tuned} in the playground");
}

/// Operations: every service healthy, a key created and revoked, usage drawn.
async fn operations_show_health_keys_and_usage(s: &Session) {
    let Session { page, base, .. } = s;
    page.go("operations").await;
    page.until(
        "six healthy services",
        "return document.querySelectorAll('#instances .status-succeeded').length >= 6",
        Duration::from_secs(30),
    )
    .await;
    page.fill("#keys input[name=name]", "browser-made").await;
    page.click("#keys form button[type=submit]").await;
    let secret = page
        .until(
            "the new secret",
            "return document.getElementById('new-secret')?.value",
            Duration::from_secs(10),
        )
        .await;
    let secret = secret.as_str().unwrap().to_owned();
    let as_new = |secret: String| {
        let base = base.clone();
        async move {
            reqwest::Client::new()
                .get(format!("{base}/v1/models"))
                .bearer_auth(secret)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(as_new(secret.clone()).await, 200, "the secret shown works");
    page.until(
        "usage charts",
        "return document.querySelectorAll('#usage svg').length >= 3",
        Duration::from_secs(10),
    )
    .await;
    page.shot("10-operations").await;
    page.click("#keys .secret button.quiet").await;
    page.click("#key-table button[data-key=browser-made]").await;
    page.client.accept_alert().await.unwrap();
    page.until(
        "the revocation",
        "return document.querySelector('#key-table')?.textContent.includes('revoked')",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(as_new(secret).await, 401, "a revoked key is refused");
}

/// The audit page lists the key made and revoked on the Operations page, and its
/// filter narrows the list to one action (issue 36, item 1).
async fn the_audit_page_shows_who_changed_what(s: &Session) {
    let Session { page, .. } = s;
    page.go("audit").await;
    page.until(
        "the revocation in the audit log",
        "return document.querySelector('#audit-events')?.textContent.includes('DELETE /v1/keys/{id}')",
        Duration::from_secs(10),
    )
    .await;
    page.shot("11-audit").await;
    page.fill("input[name=action]", "POST /v1/keys").await;
    page.click(".page-audit form button[type=submit]").await;
    let actions = page
        .until(
            "only key creations",
            "const cells = [...document.querySelectorAll('#audit-events tbody tr td:nth-child(3)')]; \
             return cells.length > 0 && cells.every((c) => c.textContent === 'POST /v1/keys') \
             && cells.length",
            Duration::from_secs(10),
        )
        .await;
    assert!(actions.as_u64().unwrap() >= 1, "{actions}");
}

/// A phone-sized window: one column.
async fn a_phone_sized_window_is_one_column(s: &Session) {
    let Session { page, .. } = s;
    page.resize(390, 844).await;
    page.go("chat").await;
    page.find("select[name=model]").await;
    page.shot("12-chat-phone").await;
}
