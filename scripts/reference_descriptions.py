"""Turn the reference code's class descriptions into a JSON file for ``dataset.descriptions=``.

BiomedCoOp keeps its GPT-4 descriptions (about 50 per class, every dataset in one dict keyed by class name) in
``trainers/prompt_templates.py`` as ``BIOMEDCOOP_TEMPLATES``. This script reads that file without running it
(``ast.literal_eval`` of the one assignment) and writes ``{class name: [sentence, ...]}``; one file serves every
dataset, since promptbench looks classes up by name:

    python scripts/reference_descriptions.py BiomedCoOp/trainers/prompt_templates.py descriptions.json
    promptbench train method=biomedcoop dataset=btmri dataset.descriptions=$PWD/descriptions.json ...

``--name`` picks another dict of the same shape (e.g. a Biomed-DPT copy of the file).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path


def read_dict(source: Path, name: str) -> dict[str, list[str]]:
    """The literal value of ``<name> = {...}`` in ``source`` (nothing is executed)."""
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            value = ast.literal_eval(node.value)
            if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
                raise ValueError(f"{source}: {name} is not a dict of class name -> list of sentences")
            return {str(k): [str(s) for s in v] for k, v in value.items()}
    raise ValueError(f"{source}: no assignment to {name} (is this the reference trainers/prompt_templates.py?)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the reference trainers/prompt_templates.py")
    parser.add_argument("out", type=Path, help="JSON file to write")
    parser.add_argument("--name", default="BIOMEDCOOP_TEMPLATES", help="dict to read (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        data = read_dict(args.source, args.name)
    except (OSError, SyntaxError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    counts = sorted({len(v) for v in data.values()})
    print(f"{args.out}: {len(data)} classes, {counts[0]}-{counts[-1]} sentences each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
