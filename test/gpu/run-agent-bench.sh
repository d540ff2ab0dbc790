#!/usr/bin/env bash
# The agent's GPU bench (issue 22: THP window, concurrent suspends, gRPC against the raw driver call,
# the 1 GiB restore), in one go of at most --deadline seconds (default 330) from this script's
# start: run-agent.sh's control plane and agent_bench.py. Leaves bench-results.md, results.json,
# bench.log and the agents' logs in $OUT. Exit status: agent_bench.py's (1 when a check failed).
#
# Carry .gpubin/agent-run from test/gpu/pack-agent.sh (it holds cuda-test for the raw path).
# The transparent huge page settings are read at the start and written back at the end whatever
# happens (agent_bench.py does the same; the agent puts back its own window's).
#
#   OUT=$OUT bash test/gpu/run-agent-bench.sh                    # on the GPU machine, as root
#   bash test/gpu/run-agent-bench.sh --dry-run --sizes 1,2 ...    # here: agent --simulate, fake THP folder
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export BENCH_T0=$(date +%s)
deadline=330
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
	case ${args[i]} in
	--deadline) deadline=${args[i + 1]} ;;
	--deadline=*) deadline=${args[i]#--deadline=} ;;
	esac
done
deadline=${deadline%.*}
dry=0
for a in "$@"; do [[ $a == --dry-run ]] && dry=1; done

thp=/sys/kernel/mm/transparent_hugepage
saved=()
((dry)) || for s in enabled defrag; do
	v=$(sed -n 's/.*\[\(.*\)\].*/\1/p' "$thp/$s" 2>/dev/null || true)
	[[ -n $v ]] && saved+=("$s=$v")
done
restore_thp() {
	local rc=$? kv
	for kv in "${saved[@]}"; do
		if [[ $(sed -n 's/.*\[\(.*\)\].*/\1/p' "$thp/${kv%%=*}") != "${kv#*=}" ]]; then
			echo "[run-agent-bench] putting back $thp/${kv%%=*} = ${kv#*=}" >&2
			echo "${kv#*=}" >"$thp/${kv%%=*}" || true
		fi
	done
	echo "[run-agent-bench] THP at the end: $(cat "$thp/enabled" 2>/dev/null) / $(cat "$thp/defrag" 2>/dev/null); $((SECONDS))s" >&2
	exit "$rc"
}
trap restore_thp EXIT
echo "[run-agent-bench] THP at the start: ${saved[*]:-unreadable}; deadline ${deadline}s" >&2

# agent_bench.py ends itself before the deadline (its own alarm); the timeouts are backstops.
set +e
SUITE_TIMEOUT=$((deadline + 5)) AGENT_SUITE=agent_bench.py AGENT_WORK=${AGENT_WORK:-/tmp/kyb-agent-bench} \
	timeout --signal=TERM --kill-after=5 $((deadline + 15)) bash "$here/run-agent.sh" "$@"
rc=$?
# At most 8 files come back from the lent machine: the logs go into one tarball, so that
# results.json and the report always come back (the first H100 run lost its results.json).
out=${OUT:-$here/results/out}
(cd "$out" && shopt -s nullglob && logs=(*.log *.log.tail) && ((${#logs[@]})) &&
	tar -cJf logs.tar.xz "${logs[@]}" && rm -f "${logs[@]}") || true
set -e
exit "$rc"
