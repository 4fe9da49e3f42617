"""The values table of the chart's README, from the `# --` comments of values.yaml.

``python deploy/tools/values_table.py`` rewrites the table in deploy/helm/llmops/README.md;
tests/deploy/test_chart.py fails when the two disagree or a value has no comment.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

CHART = Path(__file__).resolve().parents[1] / "helm" / "llmops"
START, END = "<!-- values:start -->", "<!-- values:end -->"
# Maps whose keys are free-form (Kubernetes objects, settings, label sets): documented as a whole.
FREE = {
    "podSecurityContext", "securityContext", "resources", "routing", "env", "secretEnv",
    "calls", "namespaceSelector", "podSelector", "data", "hosts", "annotations",
    "commonLabels", "schemas_item",
}  # fmt: skip
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?P<rest>.*)$")


def parse(text: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(path, default, description) of every documented key, and the keys lacking a comment."""
    rows: list[tuple[str, str, str]] = []
    missing: list[str] = []
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and comment:
            comment.append(stripped[1:].strip())
            continue
        m = _KEY.match(line)
        if not m or stripped.startswith("-"):
            if not stripped:
                comment = []
            continue
        indent, key, rest = len(m["indent"]), m["key"], m["rest"].split(" #")[0].strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents = [k for _, k in stack]
        path = ".".join([*parents, key])
        stack.append((indent, key))
        if any(p in FREE for p in parents):
            comment = []
            continue
        if not comment:
            missing.append(path)
        else:
            rows.append((path, rest, " ".join(comment)))
        comment = []
    return rows, missing


def table(text: str) -> str:
    rows, _ = parse(text)
    out = ["| key | default | description |", "| --- | --- | --- |"]
    for path, default, desc in rows:
        shown = (f"`{default}`" if default else "").replace("|", r"\|")
        text = desc.replace("|", r"\|")
        out.append(f"| `{path}` | {shown} | {text} |")
    return "\n".join(out)


def readme_with_table(readme: str, values: str) -> str:
    head, _, tail = readme.partition(START)
    _, _, tail = tail.partition(END)
    return f"{head}{START}\n{table(values)}\n{END}{tail}"


if __name__ == "__main__":
    readme = CHART / "README.md"
    new = readme_with_table(readme.read_text(), (CHART / "values.yaml").read_text())
    readme.write_text(new)
    sys.stdout.write(f"wrote {readme}\n")
