"""Kaggle credentials, looked up in the client's own order, and the scrubbing of every secret.

The key is never part of a repr, a message or a log line: :func:`secret_values` lists every
secret this machine holds for Kaggle and :func:`scrub` replaces them (and auth headers) in text.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

NEW_TOKEN_HELP = "create a new API token at https://www.kaggle.com/settings (API -> Create New Token)"


@dataclass(frozen=True)
class Credentials:
    """Who calls the API; ``key`` is never part of the repr."""

    username: str
    key: str = field(repr=False)
    source: str = ""
    token: bool = False  # a KAGGLE_API_TOKEN (sent as Bearer) rather than a legacy key (Basic auth)

    def describe(self) -> str:
        return f"user {self.username} (credentials from {self.source})"


def config_dirs(env: dict | None = None) -> list[Path]:
    """Where ``kaggle.json`` may live, in the client's order of preference."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home())
    if env.get("KAGGLE_CONFIG_DIR"):
        return [Path(env["KAGGLE_CONFIG_DIR"])]
    xdg = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
    return [home / ".kaggle", xdg / "kaggle"]


def _read_kaggle_json(path: Path) -> tuple[str, str]:
    try:
        data = json.loads(path.read_text())
        return str(data["username"]), str(data["key"])
    except (OSError, ValueError, KeyError, TypeError):
        # never echo the content: it holds the key
        raise UserError(f"{path}: not a kaggle.json with \"username\" and \"key\" ({NEW_TOKEN_HELP})") from None


def _token(env: dict) -> tuple[str, str] | None:
    """(API token, where from) as the client finds it: ``KAGGLE_API_TOKEN`` (a value or a file
    path), else ``~/.kaggle/access_token`` (or ``.txt``)."""
    value = env.get("KAGGLE_API_TOKEN")
    if value:
        path = Path(value) if len(value) < 512 else None
        return ((path.read_text().strip() if path and path.is_file() else value), "KAGGLE_API_TOKEN")
    home = Path(env.get("HOME") or Path.home())
    for name in ("access_token", "access_token.txt"):
        path = home / ".kaggle" / name
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip(), str(path)
    return None


def find_credentials(owner: str | None = None, env: dict | None = None, required: bool = True) -> Credentials | None:
    """The credentials the client will use, in its own order, without any network call: an API
    token first (:func:`_token`; its username from ``KAGGLE_USERNAME``, a ``kaggle.json`` or ``owner``),
    then ``KAGGLE_USERNAME`` + ``KAGGLE_KEY``, else ``kaggle.json`` (see :func:`config_dirs`)."""
    env = os.environ if env is None else env
    legacy, json_user = None, None
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        legacy = Credentials(env["KAGGLE_USERNAME"], env["KAGGLE_KEY"], "KAGGLE_USERNAME/KAGGLE_KEY")
    for folder in config_dirs(env):
        path = folder / "kaggle.json"
        if legacy is None and path.is_file():
            username, key = _read_kaggle_json(path)
            json_user = json_user or username
            legacy = Credentials(username, key, str(path)) if key else None
    token = _token(env)
    if token:
        username = env.get("KAGGLE_USERNAME") or json_user or (legacy and legacy.username) or owner
        if not username:
            raise UserError(f"an API token ({token[1]}) is set but no username is known: "
                            "set KAGGLE_USERNAME (or pass --owner)")
        return Credentials(username, token[0], token[1], token=True)
    if legacy is not None or not required:
        return legacy
    where = ", ".join(str(d / "kaggle.json") for d in config_dirs(env))
    raise UserError(
        "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json in one of "
        f"{where} (chmod 600), or set KAGGLE_API_TOKEN; {NEW_TOKEN_HELP}"
    )


def secret_values(credentials: Credentials | None = None, env: dict | None = None) -> list[str]:
    """Every secret this machine holds for Kaggle (to scrub from text and to scan bundles for)."""
    env = os.environ if env is None else env
    secrets = {credentials.key} if credentials is not None else set()
    secrets.update(env.get(name) or "" for name in ("KAGGLE_KEY", "KAGGLE_API_TOKEN"))  # "" is dropped below
    with contextlib.suppress(OSError):
        secrets.add((_token(env) or ("", ""))[0])
    for folder in config_dirs(env):
        path = folder / "kaggle.json"
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
            secrets.add(str(json.loads(path.read_text())["key"]))
    return sorted(s for s in secrets if len(s) >= 8)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret (and its Basic-auth encoding) and auth header replaced."""
    text = str(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    return re.sub(r"(Authorization['\"]?\s*[:=]\s*['\"]?(Basic|Bearer)\s+)[A-Za-z0-9+/=._-]+", r"\1[REDACTED]", text)


def basic_auth_header(credentials: Credentials) -> str:
    """The Authorization value the client sends (tests use it to look for leaks)."""
    raw = f"{credentials.username}:{credentials.key}".encode()
    return "Basic " + base64.b64encode(raw).decode()
