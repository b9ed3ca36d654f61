"""Generation in process: stop sequences, detokenization, sampling, parameters, cache merging, shutdown."""

import asyncio
import time

import pytest
import torch

from ragserve.errors import BadRequest, RequestTimeout
from ragserve.predictors.backends import Completion, Delta, GenerationBackend, SamplingParams, choose_backend
from ragserve.predictors.backends.detokenize import IncrementalDetokenizer, StopMatcher
from ragserve.predictors.backends.sampling import make_generator, sample_next, top_p_filter
from ragserve.predictors.generation import GenerationPredictor, GenerationSettings, sampling_options


# -- stop sequences --------------------------------------------------------------
def feed_all(matcher: StopMatcher, pieces):
    out = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


@pytest.mark.parametrize(
    "stops, pieces, expected, stopped",
    [
        ([], ["Hello", " world"], "Hello world", False),
        (["\n\n"], ["one\n", "\ntwo"], "one", True),  # split across deltas
        (["END"], ["abc E", "N", "D more"], "abc ", True),
        (["END"], ["abc E", "N", "d more"], "abc ENd more", False),  # a false start is released
        (["xyz", "b"], ["aab", "xyz"], "aa", True),  # the earliest stop wins
        (["ab", "abc"], ["zab"], "z", True),
        (["stop"], ["sto"], "sto", False),  # flushed at the end of generation
        ([""], ["text"], "text", False),  # empty stop strings are ignored
    ],
)
def test_stop_matcher(stops, pieces, expected, stopped):
    assert feed_all(StopMatcher(stops), pieces) == (expected, stopped)


def test_stop_matcher_never_leaks_a_partial_stop():
    matcher = StopMatcher(["<|end|>"])
    assert matcher.feed("answer <|e") == ("answer ", False)
    assert matcher.feed("nd|> tail") == ("", True)


# -- detokenization ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from ragserve.model_assets import TINY_GENERATION, resolve_generation_model

    return AutoTokenizer.from_pretrained(resolve_generation_model(TINY_GENERATION))


@pytest.mark.parametrize("text", ["Hello, world! Paris is the capital.", "Grüße, 東京 and emoji 🎉🎉 ok", "  two  spaces\nnew line"])
def test_incremental_detokenizer_reassembles_text(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == tokenizer.decode(ids)
    assert not any("\ufffd" in p for p in pieces)  # a character split over tokens is held back, not mangled


def test_incremental_detokenizer_skips_special_tokens(tokenizer):
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.push(i) for i in tokenizer("hi")["input_ids"] + [tokenizer.eos_token_id]]
    assert "".join(pieces) + detok.flush() == "hi"


# -- sampling ------------------------------------------------------------------------
def test_top_p_keeps_the_smallest_head_with_enough_mass():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.9, 0.05, 0.03, 0.02]])
    kept = top_p_filter(probs, torch.tensor([0.8, 0.5])) > 0
    assert kept.tolist() == [[True, True, False, False], [True, False, False, False]]


def test_sampling_is_per_row_greedy_or_seeded():
    torch.manual_seed(1)
    logits = torch.randn(3, 50)
    params = [SamplingParams(8, temperature=0.0), SamplingParams(8, temperature=1.0, seed=7), SamplingParams(8, 1.5, 0.9, seed=7)]

    def draw():
        return sample_next(logits.clone(), params, [make_generator(p.seed) for p in params])

    first = draw()
    assert first[0] == int(logits[0].argmax())
    assert draw() == first  # same seeds, same tokens
    alone = sample_next(logits[1:2].clone(), params[1:2], [make_generator(7)])
    assert alone == first[1:2]  # a seeded row draws the same whoever shares the step


# -- parameters ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params, field",
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "16"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"stop": 3}, "stop"),
        ({"seed": 1.5}, "seed"),
        ({"temprature": 0.5}, "temprature"),
    ],
)
def test_bad_parameters_name_the_field(params, field):
    with pytest.raises(BadRequest) as err:
        sampling_options(params)
    assert field in err.value.message
    assert err.value.param == field


def test_parameters_accept_grpc_and_triton_forms():
    # gRPC delivers an integral float as int64 and Triton clients add protocol keys.
    opts = sampling_options({"temperature": 0, "top_p": 1, "max_tokens": 5, "stop": "\n", "binary_data_output": True})
    assert (opts.temperature, opts.top_p, opts.max_tokens, opts.stop_sequences()) == (0.0, 1.0, 5, ("\n",))


class FakeBackend(GenerationBackend):
    """Echoes the prompt ids back as text; ``delay`` seconds per token."""

    name = "fake"

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.max_model_len = 10
        self.delay = delay
        self.closed_early = 0

    def load(self):
        pass

    def close(self):
        pass

    def encode(self, text, *, add_special_tokens=True):
        return list(range(len(text.split())))

    async def stream(self, prompt_ids, params):
        finished = False
        try:
            for i in range(params.max_tokens):
                await asyncio.sleep(self.delay)
                last = i == params.max_tokens - 1
                finished = last
                yield Delta(f"t{i} ", 1, "length" if last else None)
        finally:
            self.closed_early += not finished


def predictor(**settings) -> GenerationPredictor:
    model = GenerationPredictor(GenerationSettings(**settings), backend=FakeBackend())
    model.load()
    return model


def test_prompt_over_the_context_names_the_limit():
    model = predictor()
    assert len(model.encode_prompt("a b c", param="prompt")) == 3
    with pytest.raises(BadRequest, match=r"prompt has 10 tokens; the context limit is 10 tokens \(max_model_len\)"):
        model.encode_prompt(" ".join(["w"] * 10), param="prompt")


def test_max_tokens_default_cap_and_context_clamp():
    model = predictor(max_tokens=4, max_tokens_cap=8, seed=3)
    params = model.sampling_params(sampling_options({}), prompt_tokens=2)
    assert (params.max_tokens, params.temperature, params.top_p, params.seed) == (4, 1.0, 1.0, 3)
    assert model.sampling_params(sampling_options({"max_tokens": 8}), prompt_tokens=7).max_tokens == 3
    with pytest.raises(BadRequest, match=r"max_tokens=9 is over this server's cap of 8"):
        model.sampling_params(sampling_options({"max_tokens": 9}), prompt_tokens=1)


def test_settings_reject_a_default_over_the_cap():
    with pytest.raises(ValueError, match="max_tokens_cap"):
        GenerationSettings(max_tokens=100, max_tokens_cap=10)


def test_timeouts_raise_request_timeout_and_close_the_stream():
    model = GenerationPredictor(GenerationSettings(request_timeout_s=0.05), backend=FakeBackend(delay=0.02))
    model.load()
    params = SamplingParams(max_tokens=50)

    async def main():
        with pytest.raises(RequestTimeout, match="request_timeout_s=0.05"):
            await model.run([([0], params)])
        with pytest.raises(RequestTimeout):
            async for _ in model.stream([0], params):
                pass
        return (await model.run([([0], SamplingParams(max_tokens=1))]))[0]

    assert asyncio.run(main()) == Completion("t0 ", 1, "length")
    assert model.backend.closed_early == 2


def test_auto_backend_choice():
    assert choose_backend(GenerationSettings(backend="transformers")) == "transformers"
    assert choose_backend(GenerationSettings(backend="vllm")) == "vllm"
    assert choose_backend(GenerationSettings(device="cpu")) == "transformers"
    if not torch.cuda.is_available():
        assert choose_backend(GenerationSettings()) == "transformers"


# -- cache merging ---------------------------------------------------------------------
def test_staggered_batch_decodes_like_each_sequence_alone(tokenizer):
    """Join, merge and drop rows mid-generation; greedy tokens must equal model.generate alone."""
    from transformers import AutoModelForCausalLM

    from ragserve.model_assets import TINY_GENERATION, resolve_generation_model
    from ragserve.predictors.backends.hf_batch import CausalLM, KVBatch

    model = AutoModelForCausalLM.from_pretrained(resolve_generation_model(TINY_GENERATION)).eval()
    lm = CausalLM(model, tokenizer.pad_token_id)
    prompts = [tokenizer(t)["input_ids"] for t in ["a", "The capital of France is", "1, 2, 3, 4, 5, 6, 7, 8", "def f(x):"]]
    steps = [10, 4, 12, 7]  # the second row leaves early, the last two join late
    with torch.inference_mode():
        expected = [
            model.generate(torch.tensor([p]), max_new_tokens=n, min_new_tokens=n, do_sample=False)[0, len(p) :].tolist()
            for p, n in zip(prompts, steps)
        ]
        got = {i: [] for i in range(4)}

        def take(batch, logits):
            tokens = logits.argmax(-1).tolist()
            for row, tok in zip(batch.rows, tokens):
                got[row].append(tok)

        batch, logits = KVBatch.prefill(lm, [0, 1], prompts[:2])
        take(batch, logits)
        for step in range(20):
            if step == 2:
                late, late_logits = KVBatch.prefill(lm, [2, 3], prompts[2:])
                take(late, late_logits)
                batch.merge(late)
            keep = [i for i, r in enumerate(batch.rows) if len(got[r]) < steps[r]]
            if not keep:
                break
            batch.keep(keep)
            take(batch, batch.decode(lm, [got[r][-1] for r in batch.rows]))
    assert [got[i] for i in range(4)] == expected


def test_grpc_doubles_and_uint64s_are_read_despite_kserves_proto():
    import struct

    from kserve.protocol.grpc.grpc_predict_v2_pb2 import InferParameter, ModelInferRequest

    from ragserve.v2 import request_parameters
    from ragserve.kserve_compat import InferRequest

    request = ModelInferRequest(model_name="generator")
    # What tritonclient.grpc sends for temperature=0.7 and a uint64: fields KServe's proto lacks.
    request.parameters["temperature"].CopyFrom(InferParameter.FromString(b"\x21" + struct.pack("<d", 0.7)))
    request.parameters["seed"].CopyFrom(InferParameter.FromString(b"\x28\x96\x01"))
    request.parameters["max_tokens"].int64_param = 6
    assert request_parameters(InferRequest.from_grpc(request)) == {"temperature": 0.7, "seed": 150, "max_tokens": 6}


def test_stop_ends_running_and_waiting_streams_promptly():
    from ragserve.errors import NotReady
    from ragserve.predictors.backends import collect

    model = GenerationPredictor(GenerationSettings(model="tiny-random-llama", max_batch_size=2, torch_threads=1))
    model.load()

    async def main():
        long = SamplingParams(max_tokens=2000, ignore_eos=True)
        tasks = [asyncio.create_task(collect(model.backend.stream([1, 2, 3], long))) for _ in range(4)]
        await asyncio.sleep(0.2)  # two decode, two wait for a slot
        started = time.monotonic()
        await asyncio.to_thread(model.stop)
        assert time.monotonic() - started < 5
        return await asyncio.gather(*tasks, return_exceptions=True)

    assert [type(r) for r in asyncio.run(main())] == [NotReady] * 4


@pytest.mark.parametrize("temperature, top_p", [(1e-300, 1.0), (1.0, 5e-324), (0.7, 1e-9)])
def test_extreme_sampling_values_still_pick_a_token(temperature, top_p):
    # found by the fuzz: a top_p or temperature that rounds to 0 in float32 emptied the distribution
    import torch

    from ragserve.predictors.backends.base import SamplingParams
    from ragserve.predictors.backends.sampling import make_generator, sample_next

    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(max_tokens=1, temperature=temperature, top_p=top_p)] * 2
    tokens = sample_next(logits, params, [make_generator(1), None])
    assert all(0 <= t < 50 for t in tokens)


def test_vllm_engine_args_start_on_cpu_and_gpu_alike():
    from ragserve.predictors.backends.vllm import engine_args

    defaults = GenerationSettings()
    cpu = engine_args(defaults, "/m", on_cpu=True)
    # on CPU vLLM reads gpu_memory_utilization as a fraction of host RAM: a KV-cache size instead
    assert "gpu_memory_utilization" not in cpu and cpu["kv_cache_memory_bytes"] == 1 << 30
    assert cpu["dtype"] == "float32" and cpu["enforce_eager"] is True
    gpu = engine_args(defaults, "/m", on_cpu=False)
    assert gpu["gpu_memory_utilization"] == 0.9 and "kv_cache_memory_bytes" not in gpu
    assert gpu["dtype"] == "auto" and gpu["enforce_eager"] is False

    chosen = GenerationSettings(dtype="bfloat16", enforce_eager=False, cpu_kv_cache_gib=0.25)
    cpu = engine_args(chosen, "/m", on_cpu=True)
    assert cpu["dtype"] == "bfloat16" and cpu["enforce_eager"] is False and cpu["kv_cache_memory_bytes"] == 1 << 28
    assert engine_args(GenerationSettings(enforce_eager=True), "/m", on_cpu=False)["enforce_eager"] is True
