"""Shell completion scripts for ``orchctl``, generated from its argument parser.

``orchctl completion bash|zsh|fish`` prints a script to source; it completes
the subcommands, each subcommand's options, directories for ``--target`` and
``--runtime-dir``, files for ``--plan``, agent names, and SESSION arguments
with the ids of the daemon's sessions, which it gets by running
``orchctl completion --list-sessions`` (nothing when no daemon answers
within a second).  The zsh script is the bash one under ``bashcompinit``.
"""

from __future__ import annotations

import argparse

SESSION_COMMANDS = ("status", "pause", "resume", "stop", "clean", "watch", "logs", "review", "answer", "reviews",
                    "recoveries")
AGENTS = "claude codex gemini command"
DIR_OPTIONS = ("--target", "--runtime-dir")
FILE_OPTIONS = ("--plan",)
AGENT_OPTIONS = ("--agent", "--agents", "--planner")


def _commands(parser: argparse.ArgumentParser, hidden: tuple[str, ...]) -> dict[str, list[str]]:
    """``{command: [its long options]}`` for the commands listed in ``--help``."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = {}
    for name, p in sub.choices.items():
        if name in hidden:
            continue
        out[name] = sorted({o for a in p._actions for o in a.option_strings
                            if o.startswith("--") and a.help != argparse.SUPPRESS})
    return out


def _global(parser: argparse.ArgumentParser) -> list[str]:
    return sorted({o for a in parser._actions for o in a.option_strings if o.startswith("--")})


def bash(parser: argparse.ArgumentParser, hidden: tuple[str, ...]) -> str:
    cmds = _commands(parser, hidden)
    cases = "\n".join(f"        {name}) opts=\"{' '.join(opts)}\";;" for name, opts in cmds.items())
    return f"""# bash completion for orchctl (orchctl completion bash)
_orchctl_sessions() {{
    local rt=() i
    for ((i=1; i<${{#COMP_WORDS[@]}}; i++)); do
        [[ "${{COMP_WORDS[i]}}" == --runtime-dir ]] && rt=(--runtime-dir "${{COMP_WORDS[i+1]}}")
    done
    "${{COMP_WORDS[0]}}" completion --list-sessions "${{rt[@]}}" 2>/dev/null
}}

_orchctl() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}" cmd="" i opts
    for ((i=1; i<COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            --runtime-dir|--timeout) ((i++));;
            -*) ;;
            *) cmd="${{COMP_WORDS[i]}}"; break;;
        esac
    done
    case "$prev" in
        {'|'.join(DIR_OPTIONS)}) COMPREPLY=($(compgen -d -- "$cur")); return;;
        {'|'.join(FILE_OPTIONS)}) COMPREPLY=($(compgen -f -- "$cur")); return;;
        {'|'.join(AGENT_OPTIONS)}) COMPREPLY=($(compgen -W "{AGENTS}" -- "$cur")); return;;
        --timeout|--since|--limit|--worker|--kind) return;;
    esac
    if [[ -z "$cmd" ]]; then
        COMPREPLY=($(compgen -W "{' '.join(cmds)} {' '.join(_global(parser))}" -- "$cur"))
        return
    fi
    case "$cmd" in
{cases}
        *) opts="";;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        return
    fi
    case "$cmd" in
        {'|'.join(SESSION_COMMANDS)}) COMPREPLY=($(compgen -W "$(_orchctl_sessions)" -- "$cur"));;
        completion) COMPREPLY=($(compgen -W "bash zsh fish" -- "$cur"));;
        parse) COMPREPLY=($(compgen -f -- "$cur"));;
    esac
}}
complete -F _orchctl orchctl
"""


def zsh(parser: argparse.ArgumentParser, hidden: tuple[str, ...]) -> str:
    return ("# zsh completion for orchctl (orchctl completion zsh): the bash one, through bashcompinit\n"
            "autoload -U +X compinit && compinit\nautoload -U +X bashcompinit && bashcompinit\n"
            + bash(parser, hidden))


def fish(parser: argparse.ArgumentParser, hidden: tuple[str, ...]) -> str:
    cmds = _commands(parser, hidden)
    lines = ["# fish completion for orchctl (orchctl completion fish)", "complete -c orchctl -f",
             f"complete -c orchctl -n __fish_use_subcommand -a '{' '.join(cmds)}'"]
    for opt in _global(parser):
        lines.append(f"complete -c orchctl -l {opt[2:]}")
    for name, opts in cmds.items():
        for opt in opts:
            extra = " -r -a '(__fish_complete_directories)'" if opt in DIR_OPTIONS else (
                " -r -F" if opt in FILE_OPTIONS else (f" -r -a '{AGENTS}'" if opt in AGENT_OPTIONS else ""))
            lines.append(f"complete -c orchctl -n '__fish_seen_subcommand_from {name}' -l {opt[2:]}{extra}")
    lines.append(f"complete -c orchctl -n '__fish_seen_subcommand_from {' '.join(SESSION_COMMANDS)}' "
                 "-a '(orchctl completion --list-sessions 2>/dev/null)'")
    lines.append("complete -c orchctl -n '__fish_seen_subcommand_from completion' -a 'bash zsh fish'")
    lines.append("complete -c orchctl -n '__fish_seen_subcommand_from parse' -F")
    return "\n".join(lines) + "\n"


SHELLS = {"bash": bash, "zsh": zsh, "fish": fish}
