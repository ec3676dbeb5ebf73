"""The README's configuration reference: one Markdown table per callback, from the structured configs.

Keys, types and defaults come from the structured configs (``nn_neuroimaging_lightning/config.py``,
the YAML schema); the meaning of each key from the ``Args:`` section of its callback's docstring
(parsed by ``docstring_parser``, Google style). ``README.md`` embeds the output between the
``<!-- config-reference:start -->`` and ``<!-- config-reference:end -->`` markers, and
``tests/test_config.py`` fails when the embedded copy is stale.

Usage::

    python scripts/config_reference.py            # print the reference
    python scripts/config_reference.py --write    # rewrite it into README.md
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import pathlib
import sys
from typing import Dict, List

import docstring_parser

from nn_neuroimaging_lightning import config as C
from nn_neuroimaging_lightning.callbacks import CrossModalCallback, NNEEGCallback, NNfMRICallback

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
#: The callbacks in README order, with their shipped YAML file.
CALLBACKS = ((NNEEGCallback, "configs/eeg.yaml"), (NNfMRICallback, "configs/fmri.yaml"), (CrossModalCallback, "configs/cross_modal.yaml"))


def described_arguments(cls: type) -> Dict[str, str]:
    """``{argument: description}`` from the ``Args:`` section of a class docstring, on one line each."""
    parsed = docstring_parser.parse(inspect.getdoc(cls) or "", style=docstring_parser.DocstringStyle.GOOGLE)
    return {p.arg_name: " ".join((p.description or "").split()) for p in parsed.params}


def reference_markdown() -> str:
    """The whole reference, as embedded in README.md."""
    out: List[str] = []
    for cls, path in CALLBACKS:
        described = described_arguments(cls)
        fields = dataclasses.fields(C.config_class(cls))
        out += [f"### `{cls.__name__}` (`{path}`)", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for f in fields:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
            kind = str(getattr(f.type, "__name__", None) or f.type).replace("typing.", "")
            text = described.get(f.name, "").replace("|", "\\|")
            out.append(f"| `{f.name}` | `{kind}` | `{default!r}` | {text} |")
        python_only = C.python_only(cls)
        if python_only:
            out += ["", "Python only (no YAML key): " + ", ".join(f"`{n}`" for n in python_only) + "."]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def embedded(readme: str) -> str:
    """The reference currently embedded in the README text."""
    if START not in readme or END not in readme:
        raise ValueError(f"README.md lacks the markers {START.strip()!r} and {END!r}.")
    return readme.split(START, 1)[1].split(END, 1)[0]


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the reference in README.md")
    args = parser.parse_args(argv)
    text = reference_markdown()
    if not args.write:
        print(text, end="")
        return 0
    readme = README.read_text(encoding="utf-8")
    before, rest = readme.split(START, 1)
    README.write_text(before + START + text + END + rest.split(END, 1)[1], encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
