# bash completion for capturefs(1). Installed by meson into
# share/bash-completion/completions/capturefs.
_capturefs() {
  local cur prev words cword
  _init_completion 2>/dev/null || {
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD-1]}
    words=("${COMP_WORDS[@]}")
    cword=$COMP_CWORD
  }
  local commands="mount umount status peek cat watch take"
  if ((cword == 1)); then
    COMPREPLY=($(compgen -W "$commands --help --version" -- "$cur"))
    return
  fi
  local opts=""
  case ${words[1]} in
    mount) opts="--foreground --debug --verbose -o --max-memory --max-stream --spill-dir --spill-limit
                 --no-spill --ready-fd --threads --exec --exec-glob --exec-jobs --hold --socket --no-socket
                 --log-file --help" ;;
    umount | unmount) opts="--lazy --help" ;;
    status) opts="--socket --json --watch --help" ;;
    peek) opts="--socket --bytes --help" ;;
    cat) opts="--socket --wait --progress --help" ;;
    watch) opts="--socket --help" ;;
    take) opts="--socket --to --exec --once --help" ;;
  esac
  case $prev in
    --spill-dir | --to) COMPREPLY=($(compgen -d -- "$cur")); return ;;
    --socket | --log-file) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    --max-memory | --max-stream | --spill-limit | --exec | --exec-glob | --exec-jobs | --hold | --threads | \
      --ready-fd | --bytes | --watch | -o) return ;;
  esac
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
  else
    COMPREPLY=($(compgen -f -- "$cur"))
  fi
}
complete -F _capturefs capturefs
