"""Project layout promises: import names, no shadowing, a --help on every command."""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_transformers_folder_never_shadows_hugging_face():
    out = subprocess.run(
        [sys.executable, "-c", "import transformers; print(transformers.__file__)"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert Path(out).resolve().is_relative_to(Path(sysconfig.get_paths()["purelib"]).resolve()), out
    assert not (REPO / "transformers" / "__init__.py").exists()


def test_component_packages_import_as_ragserve_from_anywhere(tmp_path):
    code = "import ragserve.predictors.embedding as e, ragserve.pipelines, ragserve.transformers; print(e.__name__)"
    for cwd in (REPO, tmp_path):
        out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "ragserve.predictors.embedding"


def _commands():
    from ragserve.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    cmds = [[name] for name in sub.choices]
    from ragserve.cli.serve import COMPONENTS

    cmds += [["serve", c] for c in COMPONENTS]
    return cmds


@pytest.mark.parametrize("cmd", [[]] + _commands(), ids=lambda c: " ".join(c) or "ragserve")
def test_every_command_has_help(cmd):
    out = subprocess.run(
        [sys.executable, "-m", "ragserve", *cmd, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "usage: ragserve" in out.stdout
