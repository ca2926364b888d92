"""Shell completion for ``chunkbackup`` (``chunkbackup completion bash``).

The script is generated from the command line's own parser, so it knows
every command and option. bash: ``eval "$(chunkbackup completion bash)"``
in ~/.bashrc; zsh: ``eval "$(chunkbackup completion zsh)"`` in ~/.zshrc
(through zsh's bashcompinit). Arguments that are files complete as files.
"""
import argparse
from typing import Dict, List

FUNCTION = '_chunkbackup_complete'


def _options(parser: argparse.ArgumentParser) -> List[str]:
    found = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS and not action.option_strings:
            continue
        found += [o for o in action.option_strings if o.startswith('--')]
    return sorted(set(found))


def commands(parser: argparse.ArgumentParser) -> Dict[str, List[str]]:
    """Each command's options, and the top level's under ''."""
    table = {'': _options(parser)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                table[name] = _options(sub)
    return table


def bash_script(parser: argparse.ArgumentParser) -> str:
    table = commands(parser)
    names = ' '.join(sorted(k for k in table if k))
    cases = ''.join(
        "        %s) opts='%s' ;;\n" % (name, ' '.join(table[name]))
        for name in sorted(k for k in table if k))
    return '''# chunkbackup completion for bash (chunkbackup completion bash)
%(fn)s() {
    local cur cmd i opts
    cur="${COMP_WORDS[COMP_CWORD]}"
    cmd=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            -*) ;;
            *) cmd="${COMP_WORDS[i]}"; break ;;
        esac
    done
    if [ -z "$cmd" ]; then
        if [[ "$cur" == -* ]]; then
            COMPREPLY=($(compgen -W '%(top)s' -- "$cur"))
        else
            COMPREPLY=($(compgen -W '%(names)s' -- "$cur"))
        fi
        return 0
    fi
    case "$cmd" in
%(cases)s        *) opts='' ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
    return 0
}
complete -o filenames -F %(fn)s chunkbackup
''' % {'fn': FUNCTION, 'top': ' '.join(table['']), 'names': names,
       'cases': cases}


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion script for ``bash`` or ``zsh``."""
    text = bash_script(parser)
    if shell == 'zsh':
        return ('# chunkbackup completion for zsh (chunkbackup completion '
                'zsh)\nautoload -U +X bashcompinit && bashcompinit\n' +
                text.split('\n', 1)[1])
    return text
