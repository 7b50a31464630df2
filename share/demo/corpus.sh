#!/bin/sh
# Real English prose that every Debian machine carries, one document per file:
#   /usr/share/common-licenses/*      (package base-files: the GPL, Apache, MPL, ... license texts)
#   Perl's documentation, rendered with pod2text from /usr/share/perl/5.*/ (package perl-modules-5.*,
#   installed with perl, which build-essential pulls in)
# Usage: corpus.sh OUTDIR [MAX_BYTES]   writes OUTDIR/train/*.txt and OUTDIR/heldout/*.txt (every 10th
# document held out), in a fixed order, so the same machine image gives the same corpus.
set -eu
out=$1
max=${2:-2000000}
mkdir -p "$out/train" "$out/heldout"
n=0 total=0
emit() { # name, file with the text
    size=$(wc -c <"$2")
    [ "$size" -ge 1500 ] || return 0
    n=$((n + 1))
    dir=train
    [ $((n % 10)) -eq 0 ] && dir=heldout
    cp "$2" "$out/$dir/$(printf '%04d' "$n")-$1.txt"
    total=$((total + size))
}
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
for f in $(find /usr/share/common-licenses -maxdepth 1 -type f | LC_ALL=C sort); do
    emit "license-$(basename "$f")" "$f"
done
for f in $(find /usr/share/perl/5.* \( -name '*.pod' -o -name '*.pm' \) -type f 2>/dev/null | LC_ALL=C sort); do
    [ "$total" -lt "$max" ] || break
    pod2text "$f" >"$tmp" 2>/dev/null || continue
    emit "perl-$(basename "$f" | tr -c 'A-Za-z0-9._\n-' '_')" "$tmp"
done
echo "corpus: $n documents, $total bytes in $out" >&2
