"""Security checks: weights-only model loading, no secrets in params.yaml, non-root images, and the
LLM endpoint key read from the environment only and never leaked."""

from __future__ import annotations

import ast
import logging
import pathlib
import re
import subprocess

import pytest
import torch
import yaml

from tests.conftest import ROOT

SRC = ROOT / "src" / "medsegllm"


class _Payload:
    """Unpickling this runs `Path.touch(marker)`: proof of arbitrary code execution if it happens."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_checkpoint_refuses_pickled_objects(tmp_path, reliability):
    from medsegllm.model.checkpoint import load_model

    marker = tmp_path / "code-ran"
    evil = tmp_path / "model.pt"
    torch.save({"state_dict": {}, "meta": {"train": _Payload(marker)}}, evil)
    with pytest.raises(Exception) as caught:
        load_model(evil)
    reliability("checkpoint carrying a pickled callable (would touch a file when unpickled)", "model.pt via load_model",
                f"refused ({type(caught.value).__name__}); payload executed: {marker.exists()}")
    assert not marker.exists(), "unpickling ran the payload"
    assert "weights" in str(caught.value).lower() or "unpickl" in str(caught.value).lower()


def _load_calls(tree: ast.AST) -> list[ast.Call]:
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = f"{owner.id}.{node.func.attr}" if isinstance(owner, ast.Name) else node.func.attr
            if name in {"torch.load", "pickle.load", "pickle.loads", "joblib.load", "dill.load", "np.load", "numpy.load"}:
                calls.append(node)
    return calls


def unsafe_loads(source: str) -> list[str]:
    """torch.load without weights_only=True, any pickle/joblib/dill load, np.load with allow_pickle=True."""
    bad = []
    for call in _load_calls(ast.parse(source)):
        kw = {k.arg: k.value for k in call.keywords}
        func = ast.unparse(call.func)
        if func == "torch.load":
            ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
        elif func.endswith("np.load") or func == "numpy.load":
            ok = not (isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is True)
        else:
            ok = False
        if not ok:
            bad.append(f"line {call.lineno}: {ast.unparse(call)}")
    return bad


def test_no_unsafe_deserialization_in_library(reliability):
    assert unsafe_loads("import torch\ntorch.load(p)\n"), "the scanner must catch a plain torch.load"
    assert not unsafe_loads("import torch\ntorch.load(p, weights_only=True)\n")
    files = sorted(SRC.rglob("*.py"))
    found = {str(p.relative_to(ROOT)): bad for p in files if (bad := unsafe_loads(p.read_text()))}
    reliability("deserialization of untrusted files (torch.load, pickle, joblib, np.load allow_pickle)",
                f"{len(files)} library modules (AST scan)",
                f"{sum(map(len, found.values()))} unsafe call(s); MLflow `models:/` URIs in `segment` do unpickle "
                "(documented: trusted registries only)")
    assert not found, found


# a key naming a secret: one of these words as a whole `_`-separated part (`max_new_tokens` is not one)
SECRET_KEY = re.compile(r"(^|_)(pass(word|wd)?|secret|token|api_?key|access_?key|private_?key|credentials?|auth)(_|$)",
                        re.I)
SECRET_VALUE = [
    re.compile(r"sk-[A-Za-z0-9_-]{16,}"),  # OpenAI-style keys
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"gh[pousr]_[A-Za-z0-9]{30,}"),  # GitHub tokens
    re.compile(r"xox[abprs]-[A-Za-z0-9-]{10,}"),  # Slack tokens
    re.compile(r"hf_[A-Za-z0-9]{30,}"),  # Hugging Face tokens
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"),  # credentials inside a URL
]
# References to a secret, not the secret: `*_env` names an environment variable, `*_secret` a
# Kubernetes Secret object; any other key naming a secret must stay empty.
REFERENCES = {"_env": re.compile(r"^[A-Z][A-Z0-9_]*$"), "_secret": re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")}


def holds_secret(key: str, text: str) -> bool:
    if not text or not SECRET_KEY.search(key):
        return False
    return not any(key.endswith(suffix) and pattern.match(text) for suffix, pattern in REFERENCES.items())


def looks_random(text: str) -> bool:
    """Long mixed-case alphanumerics without spaces: the shape of a generated key or token."""
    return (len(text) >= 20 and " " not in text and "/" not in text and any(c.isupper() for c in text)
            and any(c.islower() for c in text) and any(c.isdigit() for c in text))


def leaves(value, prefix: str = ""):
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from leaves(sub, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            yield from leaves(sub, f"{prefix}[{i}]")
    else:
        yield prefix, value


def secrets_in(params: dict) -> list[str]:
    """Keys that name a secret hold nothing or a reference to one; no value may look like a key."""
    found = []
    for key, value in leaves(params):
        text = "" if value is None else str(value)
        if isinstance(value, str) and holds_secret(key.rsplit(".", 1)[-1], text):
            found.append(f"{key} holds a value, not the name of a variable or Secret")
        if looks_random(text) or any(pattern.search(text) for pattern in SECRET_VALUE):
            found.append(f"{key} looks like a credential")
    return found


def test_no_secrets_in_params(reliability):
    assert secrets_in({"reports": {"openai": {"api_key": "sk-abcdefghijklmnopqrstuvwx"}}})
    assert secrets_in({"register": {"tracking_uri": "https://bob:hunter2@mlflow.example.org"}})
    assert secrets_in({"airflow": {"token": "Zx81kQ9vT3mP0aLw7YdR2s"}})
    assert secrets_in({"airflow": {"db_password": "hunter2"}})
    assert not secrets_in({"reports": {"openai": {"api_key_env": "OPENAI_API_KEY"}, "max_new_tokens": 64},
                           "ingest": {"salt_env": "MEDSEGLLM_SALT"}})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    found = secrets_in(params)
    tracked = subprocess.run(["git", "ls-files", ".medsegllm", "*.key", "*.pem", ".env"], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    reliability("secrets committed in configuration", f"params.yaml ({sum(1 for _ in leaves(params))} values), "
                "tracked salt/key files", f"{len(found)} secret-like values; tracked secret files: {tracked or 'none'}")
    assert not found, found
    assert not tracked, tracked


def final_stage_user(dockerfile: str) -> str | None:
    """The USER in force in the image's last stage (None: root by default)."""
    user = None
    for line in dockerfile.splitlines():
        words = line.strip().split()
        if not words or words[0].startswith("#"):
            continue
        if words[0].upper() == "FROM":
            user = None
        elif words[0].upper() == "USER" and len(words) > 1:
            user = words[1]
    return user


def test_images_run_as_non_root(reliability):
    assert final_stage_user("FROM a\nUSER app\nFROM b\n") is None
    dockerfiles = sorted((ROOT / "docker").glob("Dockerfile*"))
    users = {p.name: final_stage_user(p.read_text()) for p in dockerfiles}
    reliability("container images running as root", ", ".join(users),
                "; ".join(f"{name}: USER {user}" for name, user in users.items()))
    assert dockerfiles
    for name, user in users.items():
        assert user is not None and user.split(":")[0] not in ("root", "0"), f"{name} runs as {user}"


def test_llm_key_from_environment_only(monkeypatch, caplog, reliability):
    """The OpenAI-compatible backend takes its key from the named variable, sends it only as a bearer
    header, and keeps it out of params, errors and logs."""
    remote = pytest.importorskip("medsegllm.reports.llm.remote")
    import httpx

    from medsegllm.config import ReportsParams

    secret = "sk-test-" + "x" * 24
    monkeypatch.setenv("MEDSEGLLM_TEST_LLM_KEY", secret)
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        if len(seen) == 1:
            return httpx.Response(401, json={"error": f"bad key {request.headers.get('authorization')}"})
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}]})

    real_client = httpx.Client
    monkeypatch.setattr(remote.httpx, "Client", lambda **kw: real_client(transport=httpx.MockTransport(handler), **kw))
    generator = remote.OpenAIGenerator("http://llm.invalid/v1", "m", "MEDSEGLLM_TEST_LLM_KEY", 8, 5.0, 1)
    chat = [[{"role": "user", "content": "hi"}]]
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RuntimeError) as refused:
        generator.generate(chat)
    answer = generator.generate(chat)
    with pytest.raises(Exception):  # a key can only be named, never written into params
        ReportsParams.model_validate({"openai": {"api_key": secret}})
    leaked = secret in str(refused.value) or secret in caplog.text or secret in repr(vars(generator))
    reliability("LLM endpoint key handling (OpenAI-compatible backend, mocked endpoint)",
                "key in an environment variable; a 401 answer that echoes the key; a params file holding a key",
                f"sent only as `Authorization: Bearer`; leaked into error, logs or object state: {leaked}; "
                "params refuse a key value")
    assert seen == [f"Bearer {secret}"] * 2 and answer == ["ok"]
    assert not leaked
