#!/usr/bin/env python3
"""tests/deploy/values_doc.py -- the values table of charts/circus-warden/README.md, generated
from the `# --` comments in values.yaml (helm-docs' convention), so every value is documented.

  values_doc.py --check   fail if a value has no `# --` description, or if the README's table
                          (between <!-- values:start --> and <!-- values:end -->) is stale
  values_doc.py --write   rewrite that table in the README

A key with a `# --` comment is one row (its default shown as JSON); a mapping without one is
descended into; a leaf without one is an error. Runs with any Python that has PyYAML.
"""

import json
import pathlib
import sys

import yaml

CHART = pathlib.Path(__file__).resolve().parents[2] / "charts" / "circus-warden"
START, END = "<!-- values:start -->", "<!-- values:end -->"


def description(lines, key_line):
    """The `# --` comment block right above line `key_line` (0-based), joined."""
    block = []
    i = key_line - 1
    while i >= 0 and lines[i].lstrip().startswith("#"):
        block.insert(0, lines[i].strip())
        i -= 1
    for j, line in enumerate(block):
        if line.startswith("# --"):
            text = [line[4:].strip()] + [b[1:].strip() for b in block[j + 1:]]
            return " ".join(t for t in text if t)
    return None


def rows(node, lines, prefix, out, errors):
    for key_node, value_node in node.value:
        key = f"{prefix}{key_node.value}"
        desc = description(lines, key_node.start_mark.line)
        if desc is not None:
            value = yaml.safe_load(yaml.serialize(value_node))
            out.append((key, type_name(value), value, desc))
        elif isinstance(value_node, yaml.MappingNode) and value_node.value:
            rows(value_node, lines, key + ".", out, errors)
        else:
            errors.append(f"values.yaml:{key_node.start_mark.line + 1}: {key} has no `# --` description")


def type_name(value):
    return {dict: "object", list: "list", bool: "bool", int: "int", float: "number", str: "string",
            type(None): "null"}[type(value)]


def cell(text):
    return text.replace("|", "\\|").replace("\n", " ")


def table():
    text = (CHART / "values.yaml").read_text(encoding="utf-8")
    out, errors = [], []
    rows(yaml.compose(text), text.splitlines(), "", out, errors)
    body = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for key, typ, value, desc in out:
        default = json.dumps(value, separators=(", ", ": "))
        body.append(f"| `{key}` | {typ} | `{cell(default)}` | {cell(desc)} |")
    return "\n".join(body) + "\n", errors, len(out)


def main(argv):
    if argv[1:] not in (["--check"], ["--write"]):
        print(__doc__, file=sys.stderr)
        return 2
    generated, errors, count = table()
    for e in errors:
        print(e)
    readme = CHART / "README.md"
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"{readme}: no {START} ... {END} section")
        return 1
    head, rest = text.split(START, 1)
    current, tail = rest.split(END, 1)
    if argv[1] == "--write":
        readme.write_text(f"{head}{START}\n{generated}{END}{tail}", encoding="utf-8")
        print(f"wrote {count} values into {readme}")
        return 1 if errors else 0
    if current.strip() != generated.strip():
        print(f"{readme}: the values table is stale; run tests/deploy/values_doc.py --write")
        return 1
    if errors:
        return 1
    print(f"README documents all {count} values")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
