"""No file in the repository carries a literal secret; Secrets are referenced, never written."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

PATTERNS = {
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"),
    "AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "OpenAI-style key": re.compile(r"\bsk-[A-Za-z0-9_-]{32,}\b"),
    "Slack token": re.compile(r"\bxox[abpr]-[A-Za-z0-9-]{10,}\b"),
    "credential in URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s@'\"]{6,}@"),
    "assigned secret": re.compile(
        r"""(?i)\b(?:password|passwd|secret|token|api[_-]?key)\b["']?\s*[:=]\s*["']([A-Za-z0-9+/_\-]{16,})["']"""
    ),
}
# Values that look like assignments but are references or placeholders.
ALLOWED_VALUES = re.compile(
    r"^(?:\$\{?[A-Z_]+\}?|[A-Z][A-Z0-9_]+)$"  # an env var reference or name
    r"|(?i:^(?:changeme|placeholder|example|unused|dummy|your[-_].*)$)"
)


def repo_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode()
    return [REPO / p for p in out.split("\0") if p and (REPO / p).is_file()]


def test_no_literal_secrets_in_any_file():
    findings = []
    for path in repo_files():
        if path.suffix in {".png", ".pdf", ".safetensors", ".gguf", ".db"} or path == Path(__file__).resolve():
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for what, pattern in PATTERNS.items():
            for m in pattern.finditer(text):
                value = m.group(1) if m.groups() else m.group(0)
                if ALLOWED_VALUES.match(value):
                    continue
                line = text.count("\n", 0, m.start()) + 1
                findings.append(f"{path.relative_to(REPO)}:{line}: {what}")
    assert not findings, "literal secrets found:\n" + "\n".join(findings)


def test_kubernetes_secrets_are_referenced_not_written():
    # the validator's negative fixtures hold one on purpose (ragserve validate must reject it)
    negative = REPO / "tests" / "fixtures" / "broken_manifests"
    manifests = [p for p in repo_files() if p.suffix in {".yaml", ".yml"} and not p.is_relative_to(negative)]
    offenders = []
    for path in manifests:
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError:
            continue
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
                offenders.append(f"{path.relative_to(REPO)}: Secret {doc.get('metadata', {}).get('name')} has values")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize(
    "sample",
    [
        "-----BEGIN RSA PRIVATE KEY-----",
        'token: "abcdEFGH1234ijklMNOP"',
        "uri: https://root:Milvus123secret@milvus.example:19530",
        "api_key = 'sk-proj-abcdefghijklmnopqrstuvwxyz0123456789'",
    ],
)
def test_the_scanner_catches_known_shapes(sample):
    assert any(p.search(sample) for p in PATTERNS.values())
