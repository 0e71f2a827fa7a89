"""`latentloop serve`: a real uvicorn server on a free loopback port, driven by the official `openai` client.

Three servers, each started once: the bundled model (answers, streaming, depth and exit, 16 concurrent
requests equal to offline `generate`, metrics, a table of bad requests, the chat page in headless
Chromium), a tiny random chat model behind an API key with one row and no queue (chat, 401, 429, a
disconnect freeing the row), and one that is sent SIGTERM (drain, then a final event).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote

import pytest

for _module in ("fastapi", "uvicorn", "openai", "prometheus_client", "httpx"):
    pytest.importorskip(_module, reason=f"the server tests need {_module}: pip install -e '.[serve,dev]'")

import httpx  # noqa: E402
import openai  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from latentloop import generate, load_model  # noqa: E402
from latentloop.serve.server import bind, open_service, uvicorn_server  # noqa: E402
from latentloop.serve.settings import ServeSettings  # noqa: E402
from latentloop.tokenizer import load_tokenizer  # noqa: E402

PROBLEMS = ["73BACbb6baa9Bbb7b=", "4a2cB9=", "81bAc3Ca=", "5Bb0aC7cA=", "9ab=", "62cBa1b4A="]
SERVER_SECONDS = 240  # every test server stops by itself after this long, whatever happens to the test


pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class Live:
    url: str
    server: object
    thread: threading.Thread
    service: object

    def client(self, api_key: str = "none") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=60)

    def metrics(self) -> dict[str, float]:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return {f"{s.name}{sorted(s.labels.items()) if s.labels else ''}": s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


@contextmanager
def running(settings: ServeSettings, model, tokenizer):
    """A uvicorn server in a thread on 127.0.0.1, a free port; stopped on exit (or after SERVER_SECONDS)."""
    service = open_service(settings, model, tokenizer)
    server = uvicorn_server(service, settings, log_level="warning")
    sock = bind("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    watchdog = threading.Timer(SERVER_SECONDS, lambda: setattr(server, "should_exit", True))
    watchdog.daemon = True
    watchdog.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the test server did not start"
        time.sleep(0.02)
    try:
        yield Live(f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread, service)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        watchdog.cancel()


@pytest.fixture(scope="module")
def pointers():
    model, tokenizer = load_model("default"), load_tokenizer("default")
    settings = ServeSettings(max_batch=16, max_num_steps=32, max_queue=32)
    with running(settings, model, tokenizer) as live:
        live.model, live.tokenizer = model, tokenizer
        yield live


@pytest.fixture(scope="module")
def chat_server(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    settings = ServeSettings(model=str(tiny_model_dir), served_name="tiny", max_batch=1, max_queue=0,
                             max_num_steps=32, api_key="sekret")
    with running(settings, model, tokenizer) as live:
        live.model, live.tokenizer = model, tokenizer
        yield live


def offline(live: Live, prompt: str, **options):
    return generate(live.model, prompt, live.tokenizer, seed=0, **options)


def test_a_completion_is_what_offline_generate_gives(pointers):
    reply = pointers.client().completions.create(model="default", prompt=PROBLEMS[0], max_tokens=4,
                                                 extra_body={"num_steps": 8})
    expected = offline(pointers, PROBLEMS[0], num_steps=8, max_new_tokens=4)
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-") and reply.model == "default"
    assert reply.choices[0].text == expected.text and reply.choices[0].finish_reason == expected.finish_reasons[0]
    assert reply.usage.completion_tokens == len(expected.tokens[0]) and reply.usage.prompt_tokens == 19
    assert reply.usage.model_extra["mean_iterations"] == 8


def test_streaming_sends_chunks_then_usage(pointers):
    chunks = list(pointers.client().completions.create(
        prompt=PROBLEMS[1], max_tokens=4, stream=True, stream_options={"include_usage": True}, model="default",
        extra_body={"num_steps": 6}))
    expected = offline(pointers, PROBLEMS[1], num_steps=6, max_new_tokens=4)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == expected.finish_reasons[0]
    assert [n for c in chunks if c.choices for n in c.choices[0].model_extra["iterations"]] == expected.iterations[0]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expected.tokens[0])


def test_depth_and_exit_from_extra_body_reach_the_engine(pointers):
    client = pointers.client()

    def mean_iterations(**extra) -> float:
        reply = client.completions.create(model="default", prompt=PROBLEMS[2], max_tokens=2, extra_body=extra)
        return reply.usage.model_extra["mean_iterations"]

    assert mean_iterations(num_steps=3) == 3
    assert mean_iterations(num_steps=12) == 12
    expected = offline(pointers, PROBLEMS[2], num_steps=32, exit="kl:5e-4", max_new_tokens=2)
    adaptive = mean_iterations(num_steps=32, exit="kl:5e-4")
    assert adaptive < 32 and adaptive == pytest.approx(expected.mean_iterations, abs=1e-3)


def test_models_health_and_metrics(pointers):
    [card] = pointers.client().models.list().data
    assert card.id == "default" and card.model_extra["chat"] is False and card.model_extra["max_num_steps"] == 32
    assert pointers.client().models.retrieve("default").id == "default"
    with pytest.raises(openai.NotFoundError, match="serves 'default'"):
        pointers.client().models.retrieve("gpt-4")
    health = httpx.get(f"{pointers.url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["model"] == "default"
    pointers.client().completions.create(model="default", prompt=PROBLEMS[3], max_tokens=2, extra_body={"num_steps": 2})
    seen = pointers.metrics()
    assert seen["latentloop_requests_total[('endpoint', '/v1/completions'), ('status', '200')]"] >= 1
    assert seen["latentloop_generated_tokens_total"] >= 2 and seen["latentloop_iterations_per_token_count"] >= 2
    assert seen["latentloop_time_to_first_token_seconds_count"] >= 1
    assert seen["latentloop_running_rows"] == 0 and seen["latentloop_queue_length"] == 0
    assert "latentloop_cache_bytes_in_use" in seen


def test_16_concurrent_requests_of_different_depths_each_equal_offline_generate(pointers):
    specs = [dict(prompt=PROBLEMS[i % len(PROBLEMS)], num_steps=2 + i % 7, exit="kl:5e-3" if i % 3 == 0 else None)
             for i in range(16)]
    client = pointers.client()

    def ask(spec: dict):
        return client.completions.create(model="default", prompt=spec["prompt"], max_tokens=3,
                                         extra_body={"num_steps": spec["num_steps"], "exit": spec["exit"]})

    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(ask, specs))
    for spec, reply in zip(specs, replies, strict=True):
        expected = offline(pointers, spec["prompt"], num_steps=spec["num_steps"], exit=spec["exit"], max_new_tokens=3)
        assert reply.choices[0].text == expected.text, spec
        assert reply.usage.model_extra["mean_iterations"] == pytest.approx(expected.mean_iterations, abs=1e-3), spec


BAD_REQUESTS = [  # (endpoint, body, status, param, words the message must hold)
    ("completions", {"prompt": "1a" * 80}, 400, "prompt", "shorten the prompt"),
    ("completions", {"prompt": "1" * 100_000}, 400, "prompt", "100000 characters"),
    ("completions", {"prompt": "4a=", "num_steps": 1000}, 400, "num_steps", "maximum of 32"),
    ("completions", {"prompt": "4a=", "num_steps": "many"}, 400, "num_steps", "must be an integer"),
    ("completions", {"prompt": "4a=", "exit": "bogus:1"}, 400, "exit", "unknown exit criterion"),
    ("completions", {"prompt": "4a=", "exit": 5}, 400, "exit", "kl:5e-4"),
    ("completions", {"prompt": "4a=", "max_tokens": 1000}, 400, "max_tokens", "at most"),
    ("completions", {"prompt": "4a=", "max_tokens": 2.5}, 400, "max_tokens", "integer"),
    ("completions", {"prompt": "4a=", "temperature": -1}, 400, "temperature", ">= 0"),
    ("completions", {"prompt": "4a=", "top_p": 1.5}, 400, "top_p", "(0, 1]"),
    ("completions", {"prompt": "4a=", "n": 2}, 400, "n", "one choice per request"),
    ("completions", {"prompt": "4a=", "stop": [""]}, 400, "stop", "empty string"),
    ("completions", {"prompt": "4a=", "warm_start": "yes"}, 400, "warm_start", "true or false"),
    ("completions", {"prompt": "4a=", "stream_options": {"include_usage": True}}, 400, "stream_options", "stream"),
    ("completions", {"prompt": "4a=", "logprobs": 3}, 400, "logprobs", "not supported"),
    ("completions", {"prompt": "hello"}, 400, "prompt", "does not know"),
    ("completions", {"prompt": [0, 999]}, 400, "prompt", "vocabulary"),
    ("completions", {"max_tokens": 2}, 400, "prompt", "missing"),
    ("completions", {"prompt": "4a=", "model": "gpt-4"}, 404, "model", "serves 'default'"),
    ("completions", "not json{", 400, None, "not valid JSON"),
    ("chat/completions", {"messages": []}, 400, "messages", "non-empty list"),
    ("chat/completions", {"messages": [{"role": "user", "content": "4a="}]}, 400, "messages", "not a chat model"),
    ("nowhere", {}, 404, None, "/v1/models"),
    ("completions", {"prompt": "4a=", "sampler": "diffusion"}, 400, "sampler", "'plain' or 'parallel'"),
    ("completions", {"prompt": "4a=", "inner_steps": 2}, 400, "inner_steps", '"sampler": "parallel"'),
    ("completions", {"prompt": "4a=", "sampler": "parallel", "inner_steps": 0}, 400, "inner_steps", ">= 1"),
    ("completions", {"prompt": "4a=", "sampler": "parallel", "epsilon": "small"}, 400, "epsilon", "a number"),
    ("completions", {"prompt": "4a=", "sampler": "parallel"}, 400, None, "kv_budget=1"),  # this server's full cache
]


@pytest.mark.parametrize("endpoint,body,status,param,words", BAD_REQUESTS, ids=[f"{b[3]}-{i}" for i, b in
                                                                              enumerate(BAD_REQUESTS)])
def test_a_bad_request_gets_its_status_and_a_message_naming_the_problem(pointers, endpoint, body, status, param,
                                                                        words):
    content = body if isinstance(body, str) else json.dumps(body)
    reply = httpx.post(f"{pointers.url}/v1/{endpoint}", content=content, timeout=30,
                       headers={"Content-Type": "application/json"})
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert words in error["message"], error["message"]


def test_the_server_still_answers_after_the_bad_requests(pointers):
    reply = pointers.client().completions.create(model="default", prompt=PROBLEMS[0], max_tokens=2,
                                                 extra_body={"num_steps": 4})
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert pointers.metrics()["latentloop_running_rows"] == 0


def test_an_engine_fault_fails_its_requests_and_the_engine_thread_serves_on(pointers, monkeypatch):
    scheduler = pointers.service.worker.scheduler
    real_step = scheduler.step

    def broken_once():
        monkeypatch.setattr(scheduler, "step", real_step)
        raise RuntimeError("injected fault")

    monkeypatch.setattr(scheduler, "step", broken_once)
    with pytest.raises(openai.InternalServerError, match="the engine failed .*injected fault"):
        pointers.client().completions.create(model="default", prompt=PROBLEMS[0], max_tokens=2)
    reply = pointers.client().completions.create(model="default", prompt=PROBLEMS[0], max_tokens=2,
                                                 extra_body={"num_steps": 4})
    assert reply.choices[0].text == offline(pointers, PROBLEMS[0], num_steps=4, max_new_tokens=2).text
    assert pointers.metrics()["latentloop_running_rows"] == 0


def test_a_server_bug_is_answered_in_openais_shape(pointers, monkeypatch):
    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr("latentloop.serve.app.parse_completion", broken)
    reply = httpx.post(f"{pointers.url}/v1/completions", json={"prompt": "4a="}, timeout=30)
    assert reply.status_code == 500 and reply.json()["error"]["message"] == "internal error: RuntimeError: boom"


def test_chat_answers_in_huginns_format_as_offline_generate(chat_server):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who art thou?"}]
    reply = chat_server.client("sekret").chat.completions.create(model="tiny", messages=messages, max_tokens=5,
                                                                 extra_body={"num_steps": 3})
    expected = offline(chat_server, chat_server.tokenizer.chat_prompt(messages), num_steps=3, max_new_tokens=5)
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected.text
    assert reply.usage.completion_tokens == len(expected.tokens[0])
    chunks = list(chat_server.client("sekret").chat.completions.create(
        model="tiny", messages=messages, max_tokens=5, stream=True, extra_body={"num_steps": 3}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.text


def test_sampling_and_latent_options_reach_the_engine_as_offline_generate_takes_them(chat_server):
    options = dict(temperature=1.3, top_p=0.95, seed=7, max_tokens=6)
    extra = dict(top_k=40, min_p=0.01, repetition_penalty=1.2, num_steps=4, init_scale=0.5, warm_start=True)
    reply = chat_server.client("sekret").completions.create(model="tiny", prompt="Hark", **options, extra_body=extra)
    expected = generate(chat_server.model, "Hark", chat_server.tokenizer, do_sample=True, temperature=1.3, top_p=0.95,
                        seed=7, max_new_tokens=6, **extra)
    assert reply.choices[0].text == expected.text


def test_the_api_key_is_enforced(chat_server):
    with pytest.raises(openai.AuthenticationError, match="API key is wrong"):
        chat_server.client("wrong").models.list()
    reply = httpx.get(f"{chat_server.url}/v1/models", timeout=10)
    assert reply.status_code == 401 and "no API key was sent" in reply.json()["error"]["message"]
    assert chat_server.client("sekret").models.list().data[0].id == "tiny"


def test_a_full_server_answers_429_and_a_disconnect_frees_the_row(chat_server):
    """One row, no queue: while a stream holds the row, another request is refused; closing the stream
    mid-answer cancels it, and the next request is served."""
    client = chat_server.client("sekret")
    cancelled = "latentloop_finished_requests_total[('finish_reason', 'cancelled')]"
    before = chat_server.metrics().get(cancelled, 0)
    body = {"model": "tiny", "prompt": "To be, or not", "max_tokens": 110, "stream": True, "num_steps": 32}
    with httpx.stream("POST", f"{chat_server.url}/v1/completions", json=body, timeout=30,
                      headers={"Authorization": "Bearer sekret"}) as stream:
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        with pytest.raises(openai.RateLimitError, match="the server is full"):
            client.completions.create(model="tiny", prompt="Hark", max_tokens=2)
    deadline = time.monotonic() + 10
    while chat_server.metrics()["latentloop_running_rows"] != 0:
        assert time.monotonic() < deadline, "the disconnected stream still holds its row"
        time.sleep(0.05)
    assert chat_server.metrics()[cancelled] == before + 1
    reply = client.completions.create(model="tiny", prompt="Hark", max_tokens=2, extra_body={"num_steps": 2})
    assert reply.usage.completion_tokens == 2


def test_a_client_that_gives_up_on_a_whole_answer_frees_its_row(chat_server, monkeypatch):
    monkeypatch.setattr(chat_server.service, "keepalive_seconds", 0.1)
    cancelled = "latentloop_finished_requests_total[('finish_reason', 'cancelled')]"
    before = chat_server.metrics().get(cancelled, 0)
    body = {"model": "tiny", "prompt": "To be, or not", "max_tokens": 110, "num_steps": 32}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{chat_server.url}/v1/completions", json=body, timeout=0.3,
                   headers={"Authorization": "Bearer sekret"})
    deadline = time.monotonic() + 10
    while chat_server.metrics()["latentloop_running_rows"] != 0:
        assert time.monotonic() < deadline, "the abandoned request still holds its row"
        time.sleep(0.05)
    assert chat_server.metrics()[cancelled] == before + 1


def test_sigterm_stops_accepting_and_ends_running_streams_with_a_final_event(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    settings = ServeSettings(model=str(tiny_model_dir), max_batch=2, max_num_steps=32, grace_seconds=0.3)
    with running(settings, model, tokenizer) as live:
        body = {"prompt": "To be, or not", "max_tokens": 110, "stream": True, "num_steps": 32}
        with httpx.stream("POST", f"{live.url}/v1/completions", json=body, timeout=30) as stream:
            lines = stream.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            live.server.handle_exit(signal.SIGTERM, None)
            events = [first] + [line for line in lines if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "cancelled"
        live.thread.join(timeout=15)
        assert not live.thread.is_alive(), "the server did not stop after its grace period"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{live.url}/health", timeout=5)


def test_settings_are_checked_and_a_cache_budget_bounds_the_rows(capsys):
    from latentloop.cli import main
    from latentloop.serve.settings import build_scheduler

    assert main(["serve", "default", "--max-batch", "0", "--max-queue", "-1"]) == 2
    error = capsys.readouterr().err
    assert "--max-batch must be >= 1" in error and "--max-queue must be >= 0" in error
    model = load_model("default")
    settings = ServeSettings(max_batch=16, max_num_steps=8, max_length=64, max_cache_gb=3 * 2**20 / 2**30)
    cache = build_scheduler(model, settings).engine.cache
    assert cache.rows == 3 * 2**20 // (cache.bytes_per_token * 65) < 16 and cache.max_length == 64


# --- the chat page in a real browser -----------------------------------------------------------------
class DevTools:
    """Chromium's DevTools protocol over --remote-debugging-pipe: JSON messages ending in NUL on fds 3/4."""

    def __init__(self, chromium: str, profile: str) -> None:
        to_browser, self._writer = self._high(os.pipe())
        self._reader, from_browser = self._high(os.pipe())

        def wire() -> None:  # in the child: its fd 3 reads our commands, fd 4 carries its answers
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self.process = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
             f"--user-data-dir={profile}", "--window-size=900,700", "about:blank"],
            preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next, self.session = b"", 0, None

    @staticmethod
    def _high(fds: tuple[int, int]) -> tuple[int, int]:
        """The pipe's ends moved above 10 (close-on-exec), so the child's dup2 onto 3 and 4 clobbers neither."""
        moved = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds)
        for fd in fds:
            os.close(fd)
        return moved

    def call(self, method: str, **params) -> dict:
        self._next += 1
        message = {"id": self._next, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._writer, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._reader, 1 << 16)
                assert chunk, "chromium closed its DevTools pipe"
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next:
                assert "error" not in reply, reply["error"]
                return reply["result"]

    def open(self, url: str) -> None:
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)
        os.close(self._reader)
        os.close(self._writer)


@pytest.mark.parametrize("which,exit_slider", [("pointers", 0), ("pointers", 4), ("chat_server", 0)])
def test_the_chat_page_streams_and_colours_tokens_in_headless_chromium(which, exit_slider, request, tmp_path):
    """The bundled model continues the typed prompt; the chat model answers it as a user message. The
    sliders' depth and exit reach the engine: the colours are the iterations offline generate reports."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed: apt-get install chromium")
    live = request.getfixturevalue(which)
    chat = which == "chat_server"
    prompt = "Hark" if chat else PROBLEMS[0]
    browser = DevTools(chromium, str(tmp_path / "profile"))
    try:
        browser.open(f"{live.url}/?prompt={quote(prompt)}&num_steps=8&exit={exit_slider}&max_tokens=4&key=sekret")
        deadline, states = time.monotonic() + 60, []
        while (state := browser.evaluate("document.body && document.body.dataset.state")) not in ("done", "error"):
            assert time.monotonic() < deadline, f"the page did not finish its answer (states seen: {states})"
            states.append(state)
            time.sleep(0.05)
        tokens = browser.evaluate("[...document.querySelectorAll('.turn.model .tok')].map(s => "
                                  "[s.textContent, s.dataset.iterations, s.style.background])")
        status = browser.evaluate("document.getElementById('status').textContent")
        exit_spec = browser.evaluate("exitSpec()")
        shot = browser.call("Page.captureScreenshot", format="png")["data"]
    finally:
        browser.close()
    (tmp_path / "page.png").write_bytes(base64.b64decode(shot))
    text = live.tokenizer.chat_prompt([{"role": "user", "content": prompt}]) if chat else prompt
    expected = offline(live, text, num_steps=8, max_new_tokens=4, exit=exit_spec)
    assert (exit_spec is None) == (exit_slider == 0)
    assert (min(expected.iterations[0]) < 8) == (exit_spec is not None)  # the exit did cut thinking short
    assert state == "done", status
    assert "".join(text for text, _, _ in tokens) == expected.text
    assert [int(n) for _, counts, _ in tokens for n in counts.split(",") if n] == expected.iterations[0]
    assert all(colour.startswith("rgb") for _, counts, colour in tokens if counts)
    assert "iterations per token" in status
    assert (tmp_path / "page.png").stat().st_size > 1000


def test_parallel_sampler_requests_on_a_one_slot_ring_answer_as_offline_generate():
    """A server with --kv-budget 1 runs the parallel sampler per request, next to plain ones."""
    model, tokenizer = load_model("default"), load_tokenizer("default")
    settings = ServeSettings(max_batch=4, max_num_steps=32, kv_budget=1)
    with running(settings, model, tokenizer) as live, ThreadPoolExecutor(4) as pool:
        bodies = [dict(num_steps=32, sampler="parallel", inner_steps=4), dict(num_steps=32),
                  dict(num_steps=32, sampler="parallel", inner_steps=2, freeze="fixed")]
        jobs = [pool.submit(live.client().completions.create, model="default", prompt=p, max_tokens=4,
                            extra_body=b) for p in PROBLEMS[:3] for b in bodies]
        for job, (prompt, body) in zip(jobs, [(p, b) for p in PROBLEMS[:3] for b in bodies], strict=True):
            offline = generate(model, prompt, tokenizer, max_new_tokens=4, seed=0, kv_budget=1, **body)
            reply = job.result()
            assert reply.choices[0].text == offline.texts[0]
            assert reply.usage.mean_iterations == pytest.approx(offline.mean_iterations)
