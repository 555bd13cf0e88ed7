"""Command-line helpers: ``--version``, suggestions for misspelled commands, shell completion, and checking a
``train`` command's overrides (types, grid size) before Hydra starts and anything loads."""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterable, Sequence

from promptbench.core.errors import error_line

PROG = "promptbench"


def version_text() -> str:
    """``promptbench <version>`` (the installed distribution's, else the package's)."""
    from importlib import metadata

    try:
        version = metadata.version(PROG)
    except metadata.PackageNotFoundError:
        from promptbench import __version__ as version
    return f"{PROG} {version}"


def unknown_command(command: str, commands: Iterable[str]) -> str:
    """One line for an unknown command, with the closest commands when there are any."""
    close = difflib.get_close_matches(command, sorted(commands), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"{PROG}: unknown command {command!r}{hint} (commands: {', '.join(commands)}; see {PROG} --help)"


# ------------------------------------------------------------------------------------------- completion
BASH_COMPLETION = r"""# bash completion for promptbench: eval "$(promptbench completion bash)" (e.g. in ~/.bashrc)
_promptbench_complete() {
    local cur="${COMP_WORDS[COMP_CWORD]}"
    if [ "$COMP_CWORD" -le 1 ]; then
        COMPREPLY=($(compgen -W "__COMMANDS__ --help --version" -- "$cur"))
        return
    fi
    case "${COMP_WORDS[1]}" in
        train|sweep)
            # Hydra's completion of config groups and keys, asked as if the subcommand were the program
            local rest="${COMP_LINE#*${COMP_WORDS[1]}}"
            local choices
            choices=$(COMP_LINE="promptbench$rest" promptbench train -sc query=bash 2>/dev/null)
            COMPREPLY=($(compgen -o nospace -o default -W "$choices" -- "$cur"))
            ;;
        *)
            COMPREPLY=($(compgen -o default -- "$cur"))
            ;;
    esac
}
COMP_WORDBREAKS=${COMP_WORDBREAKS//=}
complete -o nospace -o default -F _promptbench_complete promptbench
"""


def completion_script(commands: Iterable[str], shell: str = "bash") -> str:
    if shell != "bash":
        raise ValueError(f"completion: only bash is supported (got {shell!r}); zsh: autoload bashcompinit first")
    return BASH_COMPLETION.replace("__COMMANDS__", " ".join(commands))


def is_completion_request(argv: Sequence[str]) -> bool:
    """``-sc install=bash`` / ``--shell-completion`` given to ``train``: Hydra's own installer would register the
    wrong program name, so the CLI prints :data:`BASH_COMPLETION` instead (queries still go to Hydra)."""
    flags = {"-sc", "--shell-completion"}
    return any(a in flags for a in argv) and not any(a.startswith("query=") for a in argv)


# ------------------------------------------------------------------------------------------- train checks
def check_train_overrides(argv: Sequence[str]) -> tuple[int | None, str | None]:
    """Compose a ``train`` command's config(s) without running anything: (number of cells, error line)."""
    cells, error = train_cells(argv)
    return (None if cells is None else len(cells)), error


def train_cells(argv: Sequence[str]) -> tuple[list[list[str]] | None, str | None]:
    """(every cell's overrides, error line) of a ``train`` command, checked without running anything.

    A single run is composed once (one cell: its own overrides); a multirun (``-m``) is expanded into its grid
    and every cell's values are applied (typed keys checked). ``(None, None)`` when Hydra's own flags are given.
    """
    from promptbench.config.choices import choice_error, grid_choice_error
    from promptbench.sweep.grid import compose_cells, grid

    args = [a for a in argv if a not in ("-m", "--multirun")]
    if any(a.startswith("-") for a in args):  # --help, --cfg, -c ..., --info: Hydra's own flags
        return None, None
    if error := choice_error(args):  # method=cop: one did-you-mean line, not Hydra's listing
        return None, error
    try:
        if len(args) != len(argv):
            cells = grid(args)
            if error := grid_choice_error(cells):
                return None, error
            compose_cells(cells, with_status=False)
            return cells, None
        from promptbench.config import compose

        compose(args)
        return [args], None
    except Exception as err:  # noqa: BLE001 - a bad override: one line, not a traceback
        return None, error_line(err)


def set_total(total: int | None, env: str) -> None:
    """Tell the jobs how many cells the multirun has (for ``[i/N]``)."""
    if total is not None:
        os.environ[env] = str(total)


def print_error(line: str) -> None:
    print(f"{PROG}: {line}", file=sys.stderr)
