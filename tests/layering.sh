#!/bin/bash
# Check every #include in lib/ and kernels/ against the layer table of docs/DEVELOPING.md: a module may
# include itself and modules of lower layers only. Prints one line per violation; exit 1 if any.
# Usage: tests/layering.sh [ROOT]   (default: the repository this script is in)
set -u
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
declare -A layer
modules=0
while IFS='|' read -r _ n mods _; do
    n=${n// /}
    [[ $n =~ ^[0-9]+$ ]] || continue
    for m in ${mods//,/ }; do layer[$m]=$n; modules=$((modules + 1)); done
done < <(grep -E '^\| *[0-9]+ *\|' "$root/docs/DEVELOPING.md")
[ "$modules" -gt 0 ] || { echo "layering: no layer table in docs/DEVELOPING.md" >&2; exit 2; }
bad=0
for f in "$root"/lib/*/*.[ch] "$root"/kernels/*.cu "$root"/kernels/*.cuh "$root"/kernels/*.h; do
    [ -f "$f" ] || continue
    rel=${f#"$root"/}
    # kernels/ is the CUDA half of ops
    case $rel in kernels/*) mod=ops ;; *) mod=$(basename "$(dirname "$rel")") ;; esac
    [ -n "${layer[$mod]:-}" ] || { echo "$rel: module '$mod' is not in the layer table"; bad=1; continue; }
    while IFS=: read -r line inc; do
        inc=${inc#*\"}; inc=${inc%%\"*}
        if [[ $inc == */* ]]; then dep=${inc%%/*}
        elif [ -f "$root/kernels/$inc" ]; then dep=ops
        else continue; fi  # a header beside the file (model/internal.h style) or a system header
        [ "$dep" = "$mod" ] && continue
        if [ -z "${layer[$dep]:-}" ]; then echo "$rel:$line: includes $inc: '$dep' is not in the layer table"; bad=1
        elif [ "${layer[$dep]}" -ge "${layer[$mod]}" ]; then
            echo "$rel:$line: $mod (layer ${layer[$mod]}) includes $inc: $dep is layer ${layer[$dep]}"; bad=1
        fi
    done < <(grep -n '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$f")
done
exit $bad
