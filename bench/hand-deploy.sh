#!/usr/bin/env bash
# The hand-run floor for scenario 4: what a person (or a webhook + shell script) does to put a commit live,
# with the same transport as haul (git over SSH, the same deploy key and pinned host key), and nothing else:
# no audit, no locking, no validation, no atomic switch (`ln -sfn` unlinks, then creates).
#
#   hand-deploy.sh fetch DIR URL             git fetch of the branch into DIR/mirror.git (created if missing)
#   hand-deploy.sh deploy DIR URL SHA NAME   fetch + `git checkout` of SHA into the fresh DIR/releases/NAME
#                                            + `ln -sfn releases/NAME DIR/current`
#   hand-deploy.sh durable DIR URL SHA NAME  the same, made as durable as haul's switch: syncfs(2) of the
#                                            filesystem before the link (`sync -f`), fsync of DIR after it
#
# Environment: BENCH_KEY, BENCH_KNOWN_HOSTS (the deploy key and the known_hosts file haul uses too).
set -euo pipefail
mode=$1
dir=$2
url=$3
export GIT_SSH_COMMAND="ssh -F /dev/null -i $BENCH_KEY -o IdentitiesOnly=yes -o IdentityAgent=none \
-o StrictHostKeyChecking=yes -o UserKnownHostsFile=$BENCH_KNOWN_HOSTS -o GlobalKnownHostsFile=/dev/null \
-o BatchMode=yes -o LogLevel=ERROR"
export GIT_TERMINAL_PROMPT=0

mirror="$dir/mirror.git"
[ -d "$mirror" ] || git init -q --bare "$mirror"
git --git-dir="$mirror" fetch -q --no-tags "$url" +refs/heads/main:refs/heads/main

case $mode in
fetch) ;;
deploy | durable)
  sha=$4
  name=$5
  mkdir -p "$dir/releases/$name"
  git --git-dir="$mirror" --work-tree="$dir/releases/$name" checkout -q -f "$sha" -- .
  [ "$mode" = deploy ] || sync -f "$dir/releases/$name"
  ln -sfn "releases/$name" "$dir/current"
  [ "$mode" = deploy ] || sync "$dir"
  ;;
*)
  echo "usage: $0 fetch|deploy|durable DIR URL [SHA NAME]" >&2
  exit 2
  ;;
esac
