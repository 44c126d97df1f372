"""Static checks over the package: no remote code unless a config entry asks, safe loaders only."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted((REPO / "experiments").rglob("*.py"))


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                name = f.id
            else:
                name = f"{ast.unparse(f.value)}.{f.attr}" if isinstance(f, ast.Attribute) else ""
            yield name, node


def test_no_unsafe_loaders_or_dynamic_code():
    bad = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, node in _calls(tree):
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            kw = {k.arg: k.value for k in node.keywords}
            if name in ("eval", "exec", "compile", "yaml.load", "yaml.unsafe_load", "pickle.load", "pickle.loads",
                        "marshal.loads"):
                bad.append(f"{where}: {name}()")
            if name == "torch.load" and not (isinstance(kw.get("weights_only"), ast.Constant)
                                             and kw["weights_only"].value is True):
                bad.append(f"{where}: torch.load without weights_only=True")
            t = kw.get("trust_remote_code")
            if isinstance(t, ast.Constant) and t.value is True:
                bad.append(f"{where}: trust_remote_code=True hard-coded")
    assert not bad, "\n".join(bad)


def test_remote_code_only_from_a_config_entry():
    """Every trust_remote_code argument is False or read from the prepared model's spec (the schema key)."""
    for path in SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        for _, node in _calls(tree):
            for k in node.keywords:
                if k.arg == "trust_remote_code" and not isinstance(k.value, ast.Constant):
                    src = path.read_text()
                    assert '"trust_remote_code"' in src, \
                        f"{path.name}:{node.lineno}: trust_remote_code from an unknown source"
    schema = (REPO / "workflow/schemas/config.schema.yaml").read_text()
    assert "trust_remote_code" in schema


def test_model_weights_are_loaded_as_safetensors_only():
    """Every ``<Model class>.from_pretrained(...)`` passes ``use_safetensors=True`` (no pickle checkpoints);
    tokenizers and configs carry no weights."""
    missing = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, node in _calls(tree):
            if not name.endswith(".from_pretrained"):
                continue
            owner = name[: -len(".from_pretrained")]
            if "Tokenizer" in owner or "Config" in owner:
                continue
            kw = {k.arg: k.value for k in node.keywords}
            ok = isinstance(kw.get("use_safetensors"), ast.Constant) and kw["use_safetensors"].value is True
            # the one conversion step, experiments/models/prepare.py (its sources prepare_gguf.py and
            # prepare_hub.py), writes the safetensors every later load reads: from a sha256-checked GGUF, or from
            # the Hub, where transformers reads a .bin only with torch.load(weights_only=True) (some of the
            # paper's 2021-22 repos ship no safetensors)
            if path.name in ("prepare_gguf.py", "prepare_hub.py") and (
                    "gguf_file" in kw or "trust_remote_code" in ast.unparse(node)
                    or any(k.arg is None for k in node.keywords)):
                ok = True
            if not ok:
                missing.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    assert not missing, "\n".join(missing)
