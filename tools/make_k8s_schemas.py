"""Turn the Kubernetes JSON schemas shipped in the kubernetes-validate wheel into kubeconform's
offline layout.

kubernetes-validate (a PyPI package) ships the official OpenAPI schemas of each Kubernetes
release as JSON Schema, one file per type, with `$ref`s into a shared `_definitions.json`
addressed by URL. kubeconform, run offline, cannot follow those URLs, so every kind's schema
is written as one standalone file: the definitions it reaches are copied under `$defs` and
the `$ref`s rewritten to point inside the file. The output directory is what
`kubeconform -schema-location DIR -kubernetes-version X.Y.Z -strict` expects:
`DIR/vX.Y.Z-standalone-strict/{kind}-{group}-{version}.json`.

Usage: python3 make_k8s_schemas.py WHEEL K8S_VERSION OUT_DIR
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from typing import Any

# How the shipped files point at a shared definition: from a kind's file by URL path, from
# inside _definitions.json by fragment.
REF_PREFIXES = ("/api/_definitions.json#/$defs/", "#/$defs/")


def _def_name(ref: object) -> str | None:
    """The shared definition a `$ref` names, or None for any other ref."""
    if isinstance(ref, str):
        for prefix in REF_PREFIXES:
            if ref.startswith(prefix):
                return ref[len(prefix) :]
    return None


def _refs(node: Any) -> list[str]:
    """Names of the shared definitions a schema fragment points to."""
    found: list[str] = []
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            name = _def_name(cur.get("$ref"))
            if name is not None:
                found.append(name)
            stack.extend(cur.values())
        elif isinstance(cur, list):
            stack.extend(cur)
    return found


def _rewrite(node: Any) -> Any:
    """Copy of a schema fragment with shared-definition refs pointing into the same file."""
    if isinstance(node, dict):
        out = {k: _rewrite(v) for k, v in node.items()}
        name = _def_name(out.get("$ref"))
        if name is not None:
            out["$ref"] = "#/$defs/" + name
        return out
    if isinstance(node, list):
        return [_rewrite(v) for v in node]
    return node


def standalone(kind_schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One kind's schema with every definition it reaches inlined under `$defs`."""
    needed: set[str] = set()
    todo = _refs(kind_schema)
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        if name not in defs:
            raise SystemExit(f"definition {name} missing from _definitions.json")
        needed.add(name)
        todo.extend(_refs(defs[name]))
    out = _rewrite({k: v for k, v in kind_schema.items() if k != "$id"})
    if needed:
        out["$defs"] = {name: _rewrite(defs[name]) for name in sorted(needed)}
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    wheel, version, out_root = argv[1], argv[2].lstrip("v"), Path(argv[3])
    src = f"kubernetes_validate/kubernetes-json-schema/v{version}-local-strict/"
    out_dir = out_root / f"v{version}-standalone-strict"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.startswith(src) and n.endswith(".json")]
        if not names:
            raise SystemExit(f"{wheel} has no schemas for Kubernetes v{version}")
        defs = json.loads(zf.read(src + "_definitions.json"))["$defs"]
        for name in names:
            base = name[len(src) :]
            if base.startswith("_") or base == "all.json":
                continue
            schema = json.loads(zf.read(name))
            if "x-kubernetes-group-version-kind" not in schema:
                continue  # a nested type, not a kind kubeconform looks up
            (out_dir / base).write_text(json.dumps(standalone(schema, defs)))
            written += 1
    print(f"wrote {written} standalone schemas to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
