#!/bin/bash
# The part of MinIO's `mc` that compose's minio-init job uses, for the SeaweedFS stand-in:
#   mc alias set ALIAS URL USER PASSWORD
#   mc mb [--ignore-existing] ALIAS/BUCKET
#   mc admin policy create ALIAS NAME FILE       (the policy's buckets are remembered)
#   mc admin user add ALIAS ACCESS_KEY SECRET_KEY
#   mc admin policy attach ALIAS NAME --user ACCESS_KEY   (read/write/list on those buckets)
# It talks to the stand-in's master through `weed shell` (port 9333 of the alias's host).
set -euo pipefail
state=/tmp/mc-standin
mkdir -p "$state"

die() { echo "mc stand-in: $*" >&2; exit 1; }
weed_shell() {  # ALIAS; commands on stdin; fails when weed prints an error
    local host out
    host=$(cat "$state/alias-$1" 2>/dev/null) || die "unknown alias $1 (run mc alias set first)"
    out=$(timeout 60 weed shell -master="$host:9333" 2>&1) || die "weed shell failed: $out"
    if grep -qi '^error' <<<"$out"; then echo "$out" >&2; return 1; fi
    echo "$out"
}

case "${1:-} ${2:-}" in
"alias set")
    alias=$3 url=$4
    host=${url#*://}; host=${host%%[:/]*}
    echo "$host" > "$state/alias-$alias"
    weed_shell "$alias" <<<"s3.bucket.list" >/dev/null
    echo "Added \`$alias\` successfully." ;;
"mb "*)
    shift; ignore=0
    if [ "$1" = --ignore-existing ]; then ignore=1; shift; fi
    alias=${1%%/*} bucket=${1#*/}
    if out=$(weed_shell "$alias" <<<"s3.bucket.create -name $bucket" 2>&1); then
        echo "Bucket created successfully \`$1\`."
    elif [ "$ignore" = 1 ] && grep -q "already exists" <<<"$out"; then
        echo "Bucket \`$1\` already exists."
    else
        die "$out"
    fi ;;
"admin policy")
    case "$3" in
    create)
        name=$5 file=$6
        grep -o 'arn:aws:s3:::[A-Za-z0-9.-]*' "$file" | sed 's/^arn:aws:s3::://' | sort -u \
            > "$state/policy-$name"
        [ -s "$state/policy-$name" ] || die "policy $name names no bucket"
        echo "Created policy \`$name\` successfully." ;;
    attach)
        alias=$4 name=$5
        [ "${6:-}" = --user ] || die "only 'policy attach ALIAS NAME --user KEY' is supported"
        user=$7
        buckets=$(paste -sd, "$state/policy-$name") || die "unknown policy $name"
        weed_shell "$alias" >/dev/null <<<"s3.configure -user=$user -buckets=$buckets -actions=Read,Write,List,Tagging -apply"
        echo "Attached Policies: [$name] To User: $user" ;;
    *) die "unsupported: admin policy $3" ;;
    esac ;;
"admin user")
    [ "$3" = add ] || die "unsupported: admin user $3"
    alias=$4 key=$5 secret=$6
    weed_shell "$alias" >/dev/null <<<"s3.configure -user=$key -access_key=$key -secret_key=$secret -apply"
    echo "Added user \`$key\` successfully." ;;
*)
    die "unsupported command: $*" ;;
esac
