"""Shell completion of `kubectl cellar`, from the argument parser itself (so it cannot fall behind the verbs).

- `kubectl cellar completion bash|zsh` prints a script for the console script `kubectl-cellar` (source it);
- `kubectl_complete-cellar`, the executable kubectl (1.26+) runs to complete a plugin's arguments
  (`kubectl cellar <TAB>`), prints one candidate a line and cobra's directive `:4` (no file names); for a
  verb's NAME it lists the backups and archives of the namespace (best effort: nothing when that fails).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# Flags that take a value: the word after one is no verb.
VALUED = frozenset({"--kubeconfig", "--context", "-n", "--namespace", "-o", "--output"})
NO_FILE_COMPLETION = ":4"


def verbs_and_flags(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """verb -> its flags; "" -> the top level's."""
    table = {"": [f for a in parser._actions for f in a.option_strings]}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):  # argparse has no public accessor for its verbs
            for verb, sub in action.choices.items():
                table[verb] = [f for a in sub._actions for f in a.option_strings]
    return table


def takes_name(parser: argparse.ArgumentParser, verb: str) -> bool:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and verb in action.choices:
            return any(a.dest == "name" and not a.option_strings for a in action.choices[verb]._actions)
    return False


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    table = verbs_and_flags(parser)
    verbs = " ".join(v for v in table if v)
    valued = "|".join(sorted(VALUED))
    cases = "\n".join(f'    {verb}) words="{" ".join(flags)}" ;;' for verb, flags in table.items() if verb)
    body = f"""_kubectl_cellar() {{
  local cur=${{COMP_WORDS[COMP_CWORD]}} verb="" skip="" words i
  for ((i = 1; i < COMP_CWORD; i++)); do
    if [[ -n $skip ]]; then skip=""; continue; fi
    case ${{COMP_WORDS[i]}} in
      {valued}) skip=1 ;;
      -*) ;;
      *) verb=${{COMP_WORDS[i]}}; break ;;
    esac
  done
  case $verb in
    "") words="{verbs} {" ".join(table[""])}" ;;
{cases}
  esac
  mapfile -t COMPREPLY < <(compgen -W "$words" -- "$cur")
}}
complete -F _kubectl_cellar kubectl-cellar
"""
    if shell == "zsh":
        return "autoload -Uz bashcompinit && bashcompinit\n" + body
    return body


def candidates(parser: argparse.ArgumentParser, words: Sequence[str]) -> list[str]:
    """What may come in place of the last of `words` (the arguments after `kubectl cellar`)."""
    *before, current = list(words) or [""]
    table = verbs_and_flags(parser)
    verb, positional, skip, namespace, kubeconfig, context = "", 0, "", None, None, None
    for word in before:
        if skip:
            namespace = word if skip in ("-n", "--namespace") else namespace
            kubeconfig = word if skip == "--kubeconfig" else kubeconfig
            context = word if skip == "--context" else context
            skip = ""
        elif word in VALUED:
            skip = word
        elif word.startswith("-"):
            continue
        elif not verb:
            verb = word
        else:
            positional += 1
    if skip:
        return []
    if current.startswith("-") or (verb and positional > 0):
        return [f for f in table.get(verb, []) if f.startswith(current)]
    if not verb:
        return [v for v in table if v and v.startswith(current)]
    if takes_name(parser, verb):
        return [n for n in _resource_names(namespace, kubeconfig, context) if n.startswith(current)]
    return []


def _resource_names(namespace: str | None, kubeconfig: str | None, context: str | None) -> list[str]:
    from cli.cluster import Target, connect
    from cli.status import list_resources
    from common.errors import CellarError
    from common.kube import DATABASE_BACKUP, TABLE_ARCHIVE

    try:
        cluster, default_namespace = connect(kubeconfig, context)
        target = Target(namespace or default_namespace)
        return sorted(
            {
                r["metadata"]["name"]
                for kind in (DATABASE_BACKUP, TABLE_ARCHIVE)
                for r in list_resources(cluster, kind, target)
            }
        )
    except CellarError:
        return []


def complete_entrypoint() -> None:
    """`kubectl_complete-cellar ARGS...`: kubectl's plugin completion protocol (cobra's __complete)."""
    from cli.parser import build_parser

    for candidate in candidates(build_parser(), sys.argv[1:]):
        print(candidate)
    print(NO_FILE_COMPLETION)
