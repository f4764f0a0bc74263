"""The documentation stays in step with the code: generated references are complete, every public module has an
API page, and the Python snippets of the README and the getting-started page run."""

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest
import torch

import boltzgrad as bg
from boltzgrad.stable import run_config

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _hooks():
    spec = importlib.util.spec_from_file_location("boltzgrad_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_field_descriptions_parse_grouped_and_inline_entries():
    doc = """Title.

    Section:
        a: first (1). b: second,
            continued.
        c, d: shared text.
    Other section:
        e: last.
    """
    assert _hooks().field_descriptions(doc, ["a", "b", "c", "d", "e"]) == {
        "a": "first (1).", "b": "second, continued.", "c": "shared text.", "d": "shared text.", "e": "last."}


@pytest.mark.parametrize("cls", [bg.stable.StableConfig, bg.stable.EvaluateConfig, *(
    getattr(run_config, name) for name in ("RunConfig", "DataConfig", "LJConfig", "ModelConfig", "PretrainConfig",
                                           "SimulateConfig", "ExperimentConfig", "GeneralizationConfig"))])
def test_every_config_field_is_described(cls):
    names = [f.name for f in dataclasses.fields(cls)]
    text = _hooks().field_descriptions(_hooks().section_doc(cls), names)
    assert [n for n in names if not text.get(n)] == []


def test_generated_sections():
    hooks = _hooks()
    for name, generate in hooks.GENERATORS.items():
        out = generate()
        assert out.strip(), name
        if name != "cli":
            rows = [line for line in out.splitlines()[2:] if line.startswith("| `")]
            assert rows and all(not line.rstrip().endswith("|  |") for line in rows), (name, out)
    cli = hooks.GENERATORS["cli"]()
    for command in ("pretrain", "train", "evaluate", "simulate", "experiment", "make-data", "make-data aspirin"):
        assert f"### `boltzgrad {command}`" in cli or f"#### `boltzgrad {command}`" in cli
    page = "x\n<!-- generated: simulate-fields -->\ny"
    assert "`replicas`" in hooks.on_page_markdown(page)
    assert hooks.on_page_content(":class:<code>~boltzgrad.md.State</code>") == "<code>boltzgrad.md.State</code>"


def test_every_public_module_has_an_api_page():
    documented = set()
    for page in (DOCS / "api").glob("*.md"):
        documented |= set(re.findall(r"^::: ([\w.]+)$", page.read_text(), re.M))
    from test_api import NAMES, resolve

    missing = []
    for name in NAMES:
        obj = resolve(name.split(".__")[0])
        module = getattr(obj, "__module__", None) or ""
        if f"boltzgrad.{name}" not in documented and not any(module == d or module.startswith(d + ".")
                                                             for d in documented):
            missing.append(f"{name} ({module})")
    assert missing == []


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), re.M | re.S)


@pytest.mark.parametrize("page", ["README.md", "docs/getting-started.md", "docs/cli.md"])
def test_snippets_run(page, tmp_path, monkeypatch):
    blocks = _python_blocks(ROOT / page)
    assert blocks
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    for code in blocks:
        if "load_model(" in code:  # needs a trained model: check that it names a real function instead
            from boltzgrad.stable.systems import load_model

            assert callable(load_model)
            continue
        exec(compile(code, f"{page} snippet", "exec"), {"__name__": "__snippet__"})
