#!/usr/bin/env bash
# watchdog.sh PID STARTTIME DIR — started detached by `scripts/testcluster up
# --watch-pid PID`. Waits until process PID (identified by its start time, so
# a recycled PID does not count) has exited, then tears the cluster in DIR
# down. Exits quietly if DIR disappears first (someone ran `down`).
set -u
pid=$1 start=$2 dir=$3
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

alive() {
  local s f
  s=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  s=${s##*) }           # the command name may contain spaces and ')'
  read -ra f <<<"$s"    # f[0] = state (field 3), f[19] = starttime (field 22)
  [ "${f[0]}" != Z ] && [ "${f[19]}" = "$start" ]
}

while alive && [ -d "$dir" ]; do sleep 0.5; done
[ -d "$dir" ] || exit 0
exec "$repo/scripts/testcluster" down "$dir"
