#!/bin/sh
# Replays every artifact of a target and prints its first panic (or sanitizer) line, so that
# distinct findings can be told apart: ./triage.sh recovery
target=${1:-recovery}
bin=target/x86_64-unknown-linux-gnu/release/$target
for f in artifacts/$target/*; do
    line=$("$bin" "$f" 2>&1 | grep -m1 -A1 -E "panicked at|ERROR: AddressSanitizer|memory allocation of" | tr '\n' ' ' | cut -c1-400)
    echo "$(basename "$f") $(xxd -p "$f" | tr -d '\n')  $line"
done
