#!/usr/bin/env bash
# A cold `swiftlet run --cold -- true` end to end, and where its time goes
# (the restored path is benchmarks/snapshot/run.sh).
#
#   benchmarks/run/run.sh [N]        N runs per variant (default 3), alternating A B A B ...
#
# Variants: "default" is the sandbox's own kernel command line (with `quiet`);
# "verbose" appends `loglevel=7`, which undoes `quiet`, to show what `quiet` buys.
# Each sample is one `swiftlet run --cold --timings -- true`; the figures are the
# medians of its `swiftlet-timings:` line (see README.md, "swiftlet run"):
#   boot-ms         process start -> the guest agent connected (kernel boot + init + agent)
#   agent-start-ms  the agent's own start-up, exec -> connected (guest clock)
#   job-ms          the command, fork -> exit (guest clock)
#   teardown-ms     the exit report -> the VM torn down (host)
#   total-ms        process start -> the end of swiftlet (host)
#   exits-io/mmio   VM exits to userspace: port I/O (mostly the UART) and MMIO (virtio, boot timer)
# Writes benchmarks/results/<date>-run.json as well.
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-3}
bin=.build/release/swiftlet
[[ -x $bin ]] || { echo "build first: make release" >&2; exit 1; }
keys=(boot-ms agent-start-ms job-ms teardown-ms total-ms exits-io exits-mmio)
declare -A samples
for ((i = 0; i < n; i++)); do
  for variant in default verbose; do
    extra=()
    [[ $variant == verbose ]] && extra=(--append loglevel=7)
    line=$("$bin" run --cold --timings "${extra[@]}" -- true 2>&1 >/dev/null | grep '^swiftlet-timings:')
    echo "$variant $((i + 1))/$n: ${line#swiftlet-timings: }" >&2
    for k in "${keys[@]}"; do
      v=$(sed -n "s/.* $k=\([0-9.]*\).*/\1/p" <<<"$line")
      samples[$variant.$k]+="${v:-nan} "
    done
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
printf '| variant | %s |\n|---|%s\n' "$(IFS='|'; echo "${keys[*]}" | sed 's/|/ | /g')" "$(printf -- '---|%.0s' "${keys[@]}")"
json="{\"date\":\"$(date -u +%FT%TZ)\",\"host\":\"$(uname -r)\",\"runs\":$n,\"variants\":{"
for variant in default verbose; do
  row="| $variant |"
  json+="\"$variant\":{"
  for k in "${keys[@]}"; do
    m=$(median <<<"${samples[$variant.$k]}")
    row+=" $m |"
    json+="\"$k\":{\"median\":$m,\"samples\":[$(sed 's/ $//; s/ /,/g' <<<"${samples[$variant.$k]}")]},"
  done
  json="${json%,}},"
  echo "$row"
done
json="${json%,}}}"
mkdir -p benchmarks/results
echo "$json" >"benchmarks/results/$(date -u +%F)-run.json"
