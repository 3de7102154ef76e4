"""The public API of ``animal_reid`` (lazy re-exports) and the console scripts on the base install.

``import animal_reid`` must stay cheap (no torch, no transformers until a name is used), every name in its
``__all__`` must resolve to the object of its home module, and every console script of pyproject.toml must
answer ``--help`` with no optional extra installed (the extras' modules made unimportable), and say in one line
which extra a command needs rather than raise a traceback.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import animal_reid
from animal_reid.extras import EXTRA_MODULES, extra_message

REPO = Path(__file__).resolve().parents[1]
SCRIPTS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
    "scripts"
]
# The modules of every extra, and the dev tools, as if only the base install were there. pyyaml stays: the base
# dependencies (transformers, huggingface_hub) require it.
BLOCKED = sorted(
    {m for modules in EXTRA_MODULES.values() for m in modules} - {"yaml"}
    | {
        "matplotlib",
        "jinja2",
        "multipart",
        "python_multipart",
        "psycopg",
        "httpx",
        "selenium",
        "evaluate",
        "cv2",
    }
)
ONE_LINE = re.compile(r'^error: .+ needs the \w+ extra: pip install "animal-reid\[\w+\]"$')


# The public names and the modules that define them (the API contract; animal_reid/__init__.py re-exports them).
HOMES = {
    "animal_reid.identify": [
        "Identifier",
        "read_gallery",
        "read_queries",
        "BadImages",
        "QueryResult",
        "write_results",
        "write_skipped",
        "EmbeddingCache",
    ],
    "animal_reid.search": ["GalleryIndex"],
    "animal_reid.openset": ["OpenSetThreshold", "NEW_INDIVIDUAL"],
    "animal_reid.metrics": [
        "evaluate_reid",
        "leave_one_out",
        "query_gallery",
        "rank_queries",
        "summarize",
        "encode_labels",
        "cosine_topk",
        "RankingResult",
    ],
    "animal_reid.weights": ["load_imagenet_backbone", "load_backbone_file"],
    "modeling": ["AnimalReIDConfig", "AnimalReIDModel", "AnimalReIDImageProcessor"],
    "animal_reid.convert": ["convert_miewid", "convert_megadescriptor"],
}


def test_all_names_resolve_to_their_home_modules():
    assert sorted(animal_reid.__all__) == sorted(n for names in HOMES.values() for n in names)
    for module, names in HOMES.items():
        home = importlib.import_module(module)
        for name in names:
            assert getattr(animal_reid, name) is getattr(home, name), name
    assert set(animal_reid.__all__) <= set(dir(animal_reid))
    assert set(importlib.import_module("animal_reid.metrics").__all__) <= set(animal_reid.__all__)
    with pytest.raises(AttributeError):
        animal_reid.no_such_name  # noqa: B018


def test_import_is_cheap():
    code = (
        "import sys, animal_reid\n"
        "heavy = [m for m in ('torch', 'transformers', 'timm', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "animal_reid.__all__, dir(animal_reid)\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=300)


def _calls() -> dict[str, tuple[str, list[str]]]:
    """Every console script with ``--help`` (``animal-reid serve --help``), and two runs without their extra."""
    calls = {
        name: (target, ["serve", "--help"] if name == "animal-reid" else ["--help"])
        for name, target in SCRIPTS.items()
    }
    calls["animal-reid serve (run)"] = (SCRIPTS["animal-reid"], ["serve", "--model", "no-such-model"])
    calls["animal-reid-build-corpus (run)"] = (SCRIPTS["animal-reid-build-corpus"], ["--out", "{tmp}/corpus"])
    return calls


# Runs every call in one interpreter (one torch import for all), each as the console script would: sys.argv set,
# main() called with no argument, its return value the exit status.
RUNNER = """
import contextlib, importlib, io, json, sys, traceback
blocked, calls = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name in blocked:
    sys.modules[name] = None
results = {}
for name, (target, argv) in calls.items():
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            module, func = target.split(":")
            sys.argv = [name.split()[0], *argv]
            status = getattr(importlib.import_module(module), func)()
        except SystemExit as exit:
            status = exit.code
        except BaseException:
            traceback.print_exc()
            status = "raised"
    results[name] = {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def base_install_runs(tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("scripts")
    calls = {k: (t, [a.replace("{tmp}", str(tmp)) for a in argv]) for k, (t, argv) in _calls().items()}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(BLOCKED), json.dumps(calls)],
        capture_output=True,
        text=True,
        cwd=tmp,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_help_on_base_install(base_install_runs, name):
    run = base_install_runs[name]
    lines = run["stderr"].strip().splitlines()
    if run["status"] in (0, None):
        assert run["stdout"].startswith("usage:"), run
    else:  # a command that cannot even show its help without an extra says which, in one line
        assert run["status"] in (1, 2) and len(lines) == 1 and ONE_LINE.match(lines[0]), run


@pytest.mark.parametrize(
    ("name", "command", "extra"),
    [
        ("animal-reid serve (run)", "animal-reid serve", "serve"),
        ("animal-reid-build-corpus (run)", "animal-reid-build-corpus", "data"),
    ],
)
def test_missing_extra_is_one_line(base_install_runs, name, command, extra):
    run = base_install_runs[name]
    assert run["status"] == 1, run
    assert run["stderr"].strip() == f"error: {extra_message(command, extra)}", run
    assert (
        run["stderr"].strip()
        == f'error: {command} needs the {extra} extra: pip install "animal-reid[{extra}]"'
    )
