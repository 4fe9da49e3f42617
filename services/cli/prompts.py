"""``llmops prompts``: prompt templates in MLflow's prompt registry, and the aliases (one per
environment) that the rag service serves.

Promotion keeps its own history, because MLflow keeps none: the prompt tag
``llmops.alias_history.<alias>`` is a JSON list of the versions that held the alias, newest
last, and is what ``rollback`` walks back. Each promotion also tags the version with when, by
whom and why.

MLflow is imported only when a command talks to the registry: it takes seconds to import.
"""

from __future__ import annotations

import contextlib
import difflib
import getpass
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeAlias

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import PromptVersion

prompts_app = typer.Typer(
    help="Prompt templates in MLflow's prompt registry: push versions, promote them to an "
    "environment alias (staging, production), roll back.",
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)

HISTORY_TAG = "llmops.alias_history.{alias}"
HISTORY_LIMIT = 100  # versions kept per alias: a tag value has a size limit

# Called before an alias moves: (client, name, version, alias) -> (allowed, why). A refusal
# stops the promotion (exit 1) unless --force (with --reason) overrides it.
PromoteGate: TypeAlias = "Callable[[MlflowClient, str, str, str], tuple[bool, str]]"
PROMOTE_GATE: PromoteGate | None = None

TrackingURI = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow server (or store URI) holding the prompt registry.",
        show_default=False,
    ),
]


class CLIError(Exception):
    """A failure to report as one line: exit code 1 (failed) or 2 (wrong usage)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@contextlib.contextmanager
def _reported(tracking_uri: str | None) -> Iterator[None]:
    """Every error as one red line on stderr and an exit code, never a traceback."""
    try:
        yield
    except CLIError as exc:
        _fail(exc.message, exc.code)
    except Exception as exc:
        mlflow_errors = sys.modules.get("mlflow.exceptions")  # only loaded if a command used it
        if mlflow_errors is not None and isinstance(exc, mlflow_errors.MlflowException):
            _fail(_mlflow_message(exc, tracking_uri), 1)
        _fail(f"{type(exc).__name__}: {exc}", 1)


def _fail(message: str, code: int) -> NoReturn:
    line = " ".join(message.split())  # one line, whatever the message was
    err.print(f"[red]error:[/] {escape(line)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def _mlflow_message(exc: Exception, tracking_uri: str | None) -> str:
    message = str(getattr(exc, "message", exc))
    if message.startswith("API request to "):  # MLflow's wording for "no answer"
        reason = re.search(r"\[Errno -?\d+\][^'\")]*", message) or re.search(
            r"[Tt]imed? ?out|Max retries exceeded", message
        )
        why = reason.group(0).strip() if reason else message
        return f"cannot reach the MLflow registry at {tracking_uri}: {why}"
    return message


def connect(tracking_uri: str | None) -> MlflowClient:
    """A client of the registry at ``tracking_uri``; fails fast when it does not answer."""
    if not tracking_uri:
        raise CLIError(
            "no MLflow registry: pass --tracking-uri http://HOST:5000 or set MLFLOW_TRACKING_URI",
            2,
        )
    # MLflow reads its HTTP retry policy from the environment on every request (no per-client
    # setting); its defaults retry for minutes. Only when unset, so a user's values win.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    from mlflow import MlflowClient

    # MLflow logs progress ("Waiting up to 300 seconds ...") at INFO: stderr is for our lines.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _check_name(name: str) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.prompt.registry_utils import validate_prompt_name

    try:
        validate_prompt_name(name)
    except MlflowException as exc:
        raise CLIError(f"bad prompt name {name!r}: {exc.message}", 2) from None


def _check_force(force: bool, reason: str | None) -> None:
    if force and not (reason and reason.strip()):
        raise CLIError("--force needs --reason: say why the gate is overridden", 2)


def _check_version(version: str) -> str:
    if not version.strip().isdigit():
        raise CLIError(f"a version is a number, got {version!r}", 2)
    return version.strip()


def _is_missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def latest_version(client: MlflowClient, name: str) -> PromptVersion | None:
    """The newest version (without its aliases: MLflow's search leaves them out), or None."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_prompt_versions(name, max_results=1)
    except MlflowException as exc:
        if _is_missing(exc):
            return None
        raise
    return versions[0] if versions else None


def all_versions(client: MlflowClient, name: str) -> list[PromptVersion]:
    versions: list[PromptVersion] = []
    token: str | None = None
    while True:
        page = client.search_prompt_versions(name, max_results=100, page_token=token)
        versions.extend(page)
        token = page.token
        if not token:
            return versions


def resolve(client: MlflowClient, name: str, ref: str | None) -> PromptVersion:
    """A version by number, ``@alias``, or the latest (``ref=None``), with its aliases."""
    from mlflow.exceptions import MlflowException

    pv: PromptVersion | None
    try:
        if ref is None:
            latest = latest_version(client, name)
            if latest is None:
                raise CLIError(
                    f"prompt '{name}' does not exist; push it with `llmops prompts push`"
                )
            pv = client.get_prompt_version(name, str(latest.version))
        elif ref.startswith("@"):
            pv = client.get_prompt_version_by_alias(name, ref[1:])
        else:
            pv = client.get_prompt_version(name, _check_version(ref))
    except MlflowException as exc:
        if _is_missing(exc) or exc.error_code == "INVALID_PARAMETER_VALUE":
            raise CLIError(_not_found(name, ref, exc)) from None
        raise
    if pv is None:
        raise CLIError(_not_found(name, ref, None))
    return pv


def _not_found(name: str, ref: str | None, exc: Exception | None) -> str:
    detail = f" ({getattr(exc, 'message', exc)})" if exc is not None else ""
    if ref is not None and ref.startswith("@"):
        return (
            f"no version of prompt '{name}' has alias '{ref[1:]}'{detail}; promote one with "
            f"`llmops prompts promote {name} --version N --to {ref[1:]}`"
        )
    what = f"version {ref} of prompt '{name}'" if ref else f"prompt '{name}'"
    return f"{what} not found{detail}; see `llmops prompts list`"


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``name``, ``name@alias`` or ``name/version`` -> (name, None | "@alias" | "version")."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, f"@{alias}"
    if "/" in ref:
        name, version = ref.split("/", 1)
        return name, version
    return ref, None


def _when(ms: int | None) -> str:
    if not ms:
        return "?"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _text(pv: PromptVersion) -> str:
    if not pv.is_text_prompt:
        raise CLIError(f"prompt '{pv.name}' version {pv.version} is a chat prompt, not a text one")
    return str(pv.template)


def alias_history(client: MlflowClient, name: str, alias: str) -> list[str]:
    prompt = client.get_prompt(name)
    if prompt is None:  # MLflow answers None for "not found" and for "unreachable" alike
        raise CLIError(f"cannot read prompt '{name}' (it does not exist, or the registry is down)")
    raw = prompt.tags.get(HISTORY_TAG.format(alias=alias))
    if not raw:
        return []
    try:
        history = json.loads(raw)
    except ValueError:
        history = None
    if not isinstance(history, list):
        raise CLIError(
            f"the tag {HISTORY_TAG.format(alias=alias)} of prompt '{name}' is not a JSON list: "
            f"{raw[:100]!r}; fix or delete it"
        )
    return [str(v) for v in history]


def _set_history(client: MlflowClient, name: str, alias: str, history: list[str]) -> None:
    value = json.dumps(history[-HISTORY_LIMIT:])
    client.set_prompt_tag(name, HISTORY_TAG.format(alias=alias), value)


def current_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version the alias points to, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        pv: PromptVersion = client.get_prompt_version_by_alias(name, alias)
    except MlflowException as exc:
        # A missing alias is INVALID_PARAMETER_VALUE ("alias ... not found"), a missing prompt
        # RESOURCE_DOES_NOT_EXIST: the latter is an error here.
        if exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in exc.message:
            return None
        raise
    return str(pv.version)


def _user() -> str:
    try:
        return getpass.getuser()  # $LOGNAME, $USER, ... then the password database
    except (OSError, KeyError):
        return "unknown"


def _record(client: MlflowClient, name: str, version: str, alias: str, reason: str | None) -> None:
    """Who moved which alias to this version, when and why: tags on the version."""
    tags = {
        f"llmops.promoted_to.{alias}": datetime.now(UTC).isoformat(timespec="seconds"),
        "llmops.promoted_by": _user(),
    }
    if reason:
        tags["llmops.promote_reason"] = reason
    for key, value in tags.items():
        client.set_prompt_version_tag(name, version, key, value)


def _move(
    client: MlflowClient,
    name: str,
    alias: str,
    version: str,
    history: list[str],
    reason: str | None,
) -> None:
    """Point the alias at ``version``, keep ``history`` (newest last) and record why."""
    client.set_prompt_alias(name, alias, int(version))
    _set_history(client, name, alias, history)
    _record(client, name, version, alias, reason)


# -- operations (a client in, an exit code out) ------------------------------------------------


def read_template(file: Path) -> str:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read {file}: {exc}", 2) from None
    if not text.strip():
        raise CLIError(f"{file} is empty: a prompt needs a template", 2)
    return text


def push(client: MlflowClient, text: str, name: str, message: str | None) -> int:
    """Register ``text`` as the next version of ``name``, unless the latest has that text."""
    latest = latest_version(client, name)
    if latest is not None and latest.is_text_prompt and latest.template == text:
        err.print(
            f"{escape(name)}: identical to version {latest.version}, no new version created",
            highlight=False,
        )
        print(latest.version)
        return 0
    pv = client.register_prompt(name=name, template=text, commit_message=message)
    variables = ", ".join(sorted(pv.variables)) or "none"
    err.print(
        f"registered [bold]{escape(name)}[/] version {pv.version} (variables: {escape(variables)})",
        highlight=False,
    )
    print(pv.version)
    return 0


def list_prompts(client: MlflowClient) -> int:
    table = Table("name", "latest", "aliases", "updated", "description")
    token: str | None = None
    rows = 0
    while True:
        page = client.search_prompts(max_results=100, page_token=token)
        for prompt in page:
            versions = all_versions(client, prompt.name)
            aliases = _aliases(client, prompt.name, versions)
            latest = versions[0] if versions else None
            table.add_row(
                escape(prompt.name),
                str(latest.version) if latest else "-",
                escape(", ".join(f"{a}→{v}" for a, v in aliases)),
                _when(latest.creation_timestamp if latest else None),
                escape(prompt.description or ""),
            )
            rows += 1
        token = page.token
        if not token:
            break
    if rows:
        out.print(table)
    else:
        err.print("no prompts yet; push one with `llmops prompts push FILE --name NAME`")
    return 0


def _aliases(
    client: MlflowClient, name: str, versions: list[PromptVersion]
) -> list[tuple[str, str]]:
    """(alias, version) pairs. MLflow's version search leaves aliases out and no public call
    lists a prompt's aliases: they come with each version, asked for in parallel."""

    def one(pv: PromptVersion) -> PromptVersion:
        return resolve(client, name, str(pv.version))

    with ThreadPoolExecutor(8) as pool:
        full = list(pool.map(one, versions))
    return sorted((alias, str(pv.version)) for pv in full for alias in pv.aliases)


def show(client: MlflowClient, ref: str) -> int:
    name, version_ref = parse_ref(ref)
    pv = resolve(client, name, version_ref)
    text = _text(pv)
    user_tags = {k: v for k, v in pv.tags.items() if not k.startswith(("mlflow.", "_mlflow"))}
    lines = [
        f"prompt    {pv.name}",
        f"version   {pv.version}",
        f"aliases   {', '.join(sorted(pv.aliases)) or '-'}",
        f"message   {pv.commit_message or '-'}",
        f"created   {_when(pv.creation_timestamp)}",
        f"variables {', '.join(sorted(pv.variables)) or '-'}",
        *(f"tag       {k}={v}" for k, v in sorted(user_tags.items())),
    ]
    for line in lines:
        err.print(escape(line), highlight=False, soft_wrap=True)
    sys.stdout.write(text)
    return 0


def diff(client: MlflowClient, name: str, a: str, b: str) -> int:
    old, new = resolve(client, name, a), resolve(client, name, b)
    lines = difflib.unified_diff(
        _text(old).splitlines(),
        _text(new).splitlines(),
        fromfile=f"{name}/{old.version} ({a})",
        tofile=f"{name}/{new.version} ({b})",
        lineterm="",
    )
    text = "\n".join(lines)
    if text:
        print(text)
    else:
        err.print(f"versions {old.version} and {new.version} have the same template")
    return 0


def promote(
    client: MlflowClient,
    name: str,
    version: str,
    alias: str,
    *,
    force: bool = False,
    reason: str | None = None,
    gate: PromoteGate | None = None,
) -> int:
    """Move ``alias`` to ``version`` (after ``gate`` agrees, or ``force``) and record it."""
    _check_force(force, reason)
    version = _check_version(version)
    resolve(client, name, version)  # exists, or a clear error
    if gate is not None:
        allowed, why = gate(client, name, version, alias)
        if not allowed and not force:
            raise CLIError(f"promotion of {name} version {version} to '{alias}' refused: {why}")
        if not allowed:
            err.print(
                f"[yellow]gate overridden with --force[/] ({escape(why)}): {escape(reason or '')}"
            )
    current = current_version(client, name, alias)
    if current == version:
        err.print(f"'{escape(alias)}' of {escape(name)} is already version {version}")
        return 0
    history = alias_history(client, name, alias)
    if current is not None and (not history or history[-1] != current):
        history.append(current)  # set outside this tool: keep it reachable by rollback
    _move(client, name, alias, version, [*history, version], reason)
    was = f" (was {current})" if current else ""
    err.print(f"'{escape(alias)}' of {escape(name)} -> version {version}{was}", highlight=False)
    return 0


def rollback(client: MlflowClient, name: str, alias: str) -> int:
    """Move ``alias`` back to the version that held it before the current one."""
    current = current_version(client, name, alias)
    if current is None:
        raise CLIError(f"alias '{alias}' of prompt '{name}' is not set: nothing to roll back")
    history = alias_history(client, name, alias)
    # Drop the current holder (and anything after it) from the history: what is left, newest
    # last, is what held the alias before.
    if current in history:
        history = history[: len(history) - 1 - history[::-1].index(current)]
    if not history:
        raise CLIError(
            f"no earlier version of prompt '{name}' held '{alias}' (history of "
            f"{HISTORY_TAG.format(alias=alias)} is empty); promote one explicitly instead"
        )
    previous = history[-1]
    _move(client, name, alias, previous, history, f"rollback from version {current}")
    err.print(f"'{escape(alias)}' of {escape(name)} rolled back: version {current} -> {previous}")
    return 0


def sync(
    client: MlflowClient, name: str, version: str, alias: str, *, gate: PromoteGate | None = None
) -> int:
    """Make ``alias`` point at ``version``, as an environment's version.yaml declares it (the
    chart's prompt-sync hook): nothing when it already does; back to it when it held the alias
    before (it passed the gate then: a rollback); else a promotion through the gate."""
    version = _check_version(version)
    current = current_version(client, name, alias)
    if current == version:
        err.print(f"'{escape(alias)}' of {escape(name)} is already version {version}")
        return 0
    history = alias_history(client, name, alias)
    if version not in history:
        return promote(client, name, version, alias, gate=gate)
    resolve(client, name, version)
    history = history[: len(history) - history[::-1].index(version)]
    _move(client, name, alias, version, history, f"back to version {version} (was {current})")
    err.print(f"'{escape(alias)}' of {escape(name)} back to version {version} (was {current})")
    return 0


# -- commands ----------------------------------------------------------------------------------


@prompts_app.command("push")
def push_cmd(
    file: Annotated[Path, typer.Argument(help="The template (text, {{ variable }} syntax).")],
    name: Annotated[str, typer.Option("--name", "-n", help="Prompt name, e.g. rag-answer.")],
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="Commit message of the version.")
    ] = None,
    tracking_uri: TrackingURI = None,
) -> None:
    """Register FILE as a new version (unless identical to the latest); print its number."""
    with _reported(tracking_uri):
        text = read_template(file)  # before connecting: a usage error needs no registry
        client = connect(tracking_uri)
        _check_name(name)
        code = push(client, text, name, message)
    raise typer.Exit(code)


@prompts_app.command("list")
def list_cmd(tracking_uri: TrackingURI = None) -> None:
    """Every prompt with its latest version and aliases."""
    with _reported(tracking_uri):
        code = list_prompts(connect(tracking_uri))
    raise typer.Exit(code)


@prompts_app.command("show")
def show_cmd(
    ref: Annotated[str, typer.Argument(help="NAME (latest), NAME@ALIAS or NAME/VERSION.")],
    tracking_uri: TrackingURI = None,
) -> None:
    """Metadata on stderr, the template on stdout (so it can be saved and pushed again)."""
    with _reported(tracking_uri):
        code = show(connect(tracking_uri), ref)
    raise typer.Exit(code)


@prompts_app.command("diff")
def diff_cmd(
    name: Annotated[str, typer.Argument(help="Prompt name.")],
    a: Annotated[str, typer.Argument(help="A version number or @alias.")],
    b: Annotated[str, typer.Argument(help="A version number or @alias.")],
    tracking_uri: TrackingURI = None,
) -> None:
    """Unified diff of two versions' templates."""
    with _reported(tracking_uri):
        code = diff(connect(tracking_uri), name, a, b)
    raise typer.Exit(code)


@prompts_app.command("promote")
def promote_cmd(
    name: Annotated[str, typer.Argument(help="Prompt name.")],
    version: Annotated[str, typer.Option("--version", "-v", help="The version to promote.")],
    to: Annotated[str, typer.Option("--to", help="The alias (environment) to move.")],
    force: Annotated[
        bool, typer.Option("--force", help="Promote even if the gate refuses (needs --reason).")
    ] = False,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why; recorded on the version.")
    ] = None,
    tracking_uri: TrackingURI = None,
) -> None:
    """Point the alias (--to) at --version; the previous holder stays in its history."""
    with _reported(tracking_uri):
        _check_force(force, reason)  # before connecting: a usage error needs no registry
        client = connect(tracking_uri)
        code = promote(client, name, version, to, force=force, reason=reason, gate=_gate())
    raise typer.Exit(code)


def _gate() -> PromoteGate:
    """The eval gate (services/cli/evaluate.py) unless something else was installed."""
    if PROMOTE_GATE is not None:
        return PROMOTE_GATE
    from services.cli.evaluate import eval_gate

    return eval_gate


@prompts_app.command("sync")
def sync_cmd(
    name: Annotated[str, typer.Argument(help="Prompt name.")],
    version: Annotated[str, typer.Option("--version", "-v", help="The version to serve.")],
    to: Annotated[str, typer.Option("--to", help="The alias (environment) to move.")],
    tracking_uri: TrackingURI = None,
) -> None:
    """Point the alias at --version as declared in Git: a no-op when it already is, a move back
    when the version held the alias before, else a promotion through the eval gate."""
    with _reported(tracking_uri):
        code = sync(connect(tracking_uri), name, version, to, gate=_gate())
    raise typer.Exit(code)


@prompts_app.command("rollback")
def rollback_cmd(
    name: Annotated[str, typer.Argument(help="Prompt name.")],
    to: Annotated[str, typer.Option("--to", help="The alias (environment) to move back.")],
    tracking_uri: TrackingURI = None,
) -> None:
    """Point the alias (--to) back at the version that held it before the current one."""
    with _reported(tracking_uri):
        code = rollback(connect(tracking_uri), name, to)
    raise typer.Exit(code)
