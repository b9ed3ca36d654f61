"""The generation engine's life around the server: shutdown by signal, engine death, CUDA.

Each test starts its own server (they end it), once per backend. vLLM runs its
engine core in a child process; the transformers engine is a thread of the
server, so "engine killed" applies to vLLM from the outside and to transformers
in-process (a stopped scheduler thread).
"""

import asyncio
import contextlib
import importlib.util
import os
import signal
import time

import httpx
import psutil
import pytest
import torch

from conftest import start_generation_server, start_server


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_engine_and_leaves_no_process(generation_backend, sig, tmp_path):
    served = start_generation_server(generation_backend, tmp_path, grpc=False)
    try:
        server = psutil.Process(served.process.proc.pid)
        children = [p.pid for p in server.children(recursive=True)]
        if generation_backend == "vllm":
            assert children, "the vLLM engine core runs in a child process"
        os.kill(server.pid, sig)  # the server alone, as Kubernetes or Ctrl-C in a shell would
        served.process.proc.wait(timeout=60)
        deadline = time.monotonic() + 10
        while alive(children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert alive(children) == [], served.process.log_tail()
        assert "ragserve: stopped" in served.process.log_path.read_text(), served.process.log_tail()
    finally:
        served.process.stop()


def _is_engine_core(process: psutil.Process) -> bool:
    # vLLM leaves short-lived helpers behind as zombies: their cmdline can no longer be read
    try:
        return "EngineCore" in " ".join([process.name(), *process.cmdline()])
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
        return False


def test_killed_engine_is_not_ready_and_503_then_the_server_still_answers(generation_backend, tmp_path):
    if generation_backend != "vllm":
        pytest.skip("the transformers engine is a thread of the server, not a process to kill "
                    "(test_stopped_transformers_engine_is_not_ready and test_crashed_engine_answers_503… cover it)")
    served = start_generation_server(generation_backend, tmp_path, "--dead-engine-exit-s", "20")
    try:
        base = served.http_url
        ok = httpx.post(f"{base}/v2/models/generator/generate", json={"text_input": "hi", "parameters": {"max_tokens": 2}})
        assert ok.status_code == 200, ok.text
        engines = [p for p in psutil.Process(served.process.proc.pid).children(recursive=True) if _is_engine_core(p)]
        assert engines, "no EngineCore process under the server"
        for engine in engines:
            for p in [engine, *engine.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/v2/health/ready").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert httpx.get(f"{base}/v2/health/ready").status_code == 503
        assert httpx.get(f"{base}/v2/models/generator/ready").status_code == 503
        assert httpx.get(f"{base}/v2/health/live").status_code == 200  # the server answers, and says why

        infer = httpx.post(f"{base}/v2/models/generator/infer", json={
            "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]})
        assert infer.status_code == 503 and "vLLM engine" in infer.json()["error"], infer.text
        gen = httpx.post(f"{base}/v2/models/generator/generate", json={"text_input": "hi", "parameters": {"max_tokens": 2}})
        assert gen.status_code == 503 and "vLLM engine" in gen.json()["error"], gen.text
        chat = httpx.post(f"{base}/openai/v1/chat/completions",
                          json={"model": "generator", "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 503 and "vLLM engine" in chat.json()["error"]["message"], chat.text
        assert served.process.alive

        # then it exits, for Kubernetes or `ragserve up` to start a new engine, leaving no child behind
        server = psutil.Process(served.process.proc.pid)
        children = server.children(recursive=True)
        assert served.process.proc.wait(timeout=60) == 1, served.process.log_tail()
        assert "engine died (generator: the vLLM engine core died" in served.process.log_path.read_text()
        gone, alive = psutil.wait_procs(children, timeout=15)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
    finally:
        served.process.stop()


def test_stopped_transformers_engine_is_not_ready():
    from ragserve.errors import NotReady
    from ragserve.predictors.generation import GenerationPredictor, GenerationSettings
    from ragserve.server import build_app
    from ragserve.kserve_compat import ModelRepository

    model = GenerationPredictor(GenerationSettings(model="tiny-random-llama", backend="transformers", torch_threads=1))
    model.load()
    repository = ModelRepository()
    repository.update(model)
    app = build_app(repository, model.settings)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            assert (await client.get("/v2/health/ready")).status_code == 200
            model.backend.close()  # the scheduler thread ends, as if it had crashed
            ready = await client.get("/v2/health/ready")
            model_ready = await client.get("/v2/models/generator/ready")
            gen = await client.post("/v2/models/generator/generate", json={"text_input": "hi"})
            return ready, model_ready, gen

    ready, model_ready, gen = asyncio.run(main())
    assert ready.status_code == 503 and model_ready.status_code == 503
    assert gen.status_code == 503 and "transformers engine" in gen.json()["error"], gen.text
    with pytest.raises(NotReady, match="transformers engine"):
        asyncio.run(model.generate("hi", {}))


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None, reason="needs a CUDA GPU and vllm"
)
def test_vllm_on_cuda_with_its_defaults(tmp_path):
    """`--backend auto` takes vLLM on a GPU, and its GPU defaults start (utilization, compiled graphs)."""
    from openai import OpenAI

    served = start_server("generation", "generator", tmp_path, "--model", "tiny-random-llama",
                          "--gpu-memory-utilization", "0.3", grpc=False)
    try:
        assert "vllm backend" in served.process.log_path.read_text()
        body = {
            "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [2], "data": ["Hello", "World"]}],
            "parameters": {"max_tokens": 5, "temperature": 0.0, "ignore_eos": True},
        }
        r = httpx.post(f"{served.http_url}/v2/models/generator/infer", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["parameters"]["completion_tokens"] == 10
        client = OpenAI(base_url=f"{served.http_url}/openai/v1", api_key="unused", max_retries=0)
        chunks = list(client.chat.completions.create(
            model="generator", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True))
        assert chunks[0].choices[0].delta.role == "assistant"
    finally:
        served.process.stop()


# A server whose engine warms up forever (an injected fault): it must not listen, and a signal
# must still stop the engine (close() writes the marker) and end the process by that signal.
_SLOW_WARM_UP = """
import asyncio, logging, sys
from ragserve.predictors.backends.hf import TransformersBackend
from ragserve.predictors.generation import GenerationPredictor, GenerationSettings
from ragserve.server import ModelServer

class SlowWarmUp(TransformersBackend):
    async def warm_up(self):
        print("warming up", flush=True)
        await asyncio.sleep(3600)
    def close(self):
        super().close()
        open(sys.argv[1], "w").write("closed")

settings = GenerationSettings(model="tiny-random-llama", backend="transformers", torch_threads=1,
                              http_port=int(sys.argv[2]), enable_grpc=False)
logging.basicConfig(level=logging.INFO)
model = GenerationPredictor(settings, SlowWarmUp(settings))
model.load()
ModelServer([model], settings).run()
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_while_warming_up_stops_the_engine(sig, tmp_path):
    import subprocess
    import sys

    from ragserve.procs import free_port

    marker, port = tmp_path / "closed", free_port()
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WARM_UP, str(marker), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = [proc.stdout.readline()]
        while seen[-1] not in ("warming up\n", ""):  # "": it exited
            seen.append(proc.stdout.readline())
        assert seen[-1] == "warming up\n", "".join(seen)
        with pytest.raises(httpx.ConnectError):  # not listening: readiness probes fail while it warms up
            httpx.get(f"http://127.0.0.1:{port}/v2/health/ready")
        proc.send_signal(sig)
        log = proc.communicate(timeout=30)[0]
        assert proc.returncode == -sig, log
        assert marker.read_text() == "closed", log
        assert f"interrupted by {sig.name} while warming up" in log
    finally:
        proc.kill()


_CRASHING_SCHEDULER = """
import logging, os, sys
from ragserve.predictors.backends.hf import TransformersBackend
from ragserve.predictors.generation import GenerationPredictor, GenerationSettings
from ragserve.server import ModelServer

class CrashingScheduler(TransformersBackend):
    def _admit(self):
        newcomers = super()._admit()
        if os.path.exists(sys.argv[1]):  # the trigger: what was admitted stays queued, then the thread fails
            for seq in newcomers or []:
                self._inbox.put(seq)
            raise RuntimeError("injected scheduler fault")
        return newcomers

settings = GenerationSettings(model="tiny-random-llama", backend="transformers", torch_threads=1,
                              http_port=int(sys.argv[2]), enable_grpc=False, dead_engine_exit_s=3)
logging.basicConfig(level=logging.INFO)
model = GenerationPredictor(settings, CrashingScheduler(settings))
model.load()
sys.exit(ModelServer([model], settings).run())
"""


def test_crashed_engine_answers_503_then_the_server_exits_to_be_restarted(tmp_path):
    """An engine does not come back in-process: 503s naming it, then exit 1 for Kubernetes / `ragserve up`."""
    import sys

    from ragserve.procs import ServerProcess, free_port

    trigger, port = tmp_path / "crash", free_port()
    base = f"http://127.0.0.1:{port}"
    served = ServerProcess([sys.executable, "-c", _CRASHING_SCHEDULER, str(trigger), str(port)],
                           ready_url=f"{base}/v2/health/ready", log_path=tmp_path / "server.log", name="generation")
    try:
        served.start().wait_ready(timeout=120)
        body = {"text_input": "hi", "parameters": {"max_tokens": 2}}
        assert httpx.post(f"{base}/v2/models/generator/generate", json=body, timeout=30).status_code == 200

        trigger.touch()
        crashed = httpx.post(f"{base}/v2/models/generator/generate", json=body, timeout=30)  # answered, not hung
        assert crashed.status_code == 503 and "transformers engine" in crashed.json()["error"], crashed.text
        after = httpx.post(f"{base}/v2/models/generator/generate", json=body, timeout=30)
        assert after.status_code == 503 and "exits to be restarted" in after.json()["error"], after.text
        assert httpx.get(f"{base}/v2/health/ready").status_code == 503

        assert served.proc.wait(timeout=60) == 1, served.log_tail()
        log = served.log_path.read_text()
        assert "engine died (generator: the transformers engine's scheduler thread stopped" in log, log
    finally:
        served.stop()
