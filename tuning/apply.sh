#!/usr/bin/env bash
# Applies the host settings tuning/README.md recommends, idempotently: each step checks the
# current value first and changes only what differs. Needs root (except with --dry-run).
#
#   tuning/apply.sh --dry-run                      # print what would change, change nothing
#   tuning/apply.sh                                # governor, sysctls, THP, memlock limit
#   tuning/apply.sh --server-cpus 2-5              # also steer IRQs away from CPUs 2-5
#   tuning/apply.sh --smt-off                      # also turn SMT off (until reboot)
#
# Kernel command-line settings (isolcpus, nohz_full) cannot be applied to a running kernel:
# the script prints the line to add. `eventstream doctor` checks the result.
set -euo pipefail

dry=0
server_cpus=""
smt_off=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry=1 ;;
        --server-cpus) server_cpus=${2:?--server-cpus needs a CPU list, e.g. 2-5}; shift ;;
        --smt-off) smt_off=1 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "apply.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$dry" = 0 ] && [ "$(id -u)" != 0 ]; then
    echo "apply.sh: run as root (or with --dry-run to see what would change)" >&2
    exit 1
fi

# set_value FILE WANTED: writes WANTED into FILE unless it already holds it.
set_value() {
    local file=$1 wanted=$2 current
    [ -e "$file" ] || return 0
    current=$(cat "$file" 2>/dev/null || true)
    if [ "$current" = "$wanted" ] || [[ "$current" == *"[$wanted]"* ]]; then
        echo "already: $file = $wanted"
    elif [ "$dry" = 1 ]; then
        echo "would set: $file = $wanted (now: $current)"
    else
        echo "$wanted" >"$file" && echo "set: $file = $wanted (was: $current)"
    fi
}

# at_least SYSCTL VALUE: raises a numeric sysctl to VALUE, never lowers it.
at_least() {
    local key=$1 wanted=$2 file current
    file=/proc/sys/${key//.//}
    [ -e "$file" ] || { echo "absent: $key"; return 0; }
    current=$(cat "$file")
    if [ "$current" -ge "$wanted" ]; then
        echo "already: $key = $current (>= $wanted)"
    elif [ "$dry" = 1 ]; then
        echo "would set: $key = $wanted (now: $current)"
    else
        sysctl -qw "$key=$wanted" && echo "set: $key = $wanted (was: $current)"
    fi
}

echo "== CPU frequency governor: performance"
found=0
for gov in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor; do
    [ -e "$gov" ] || continue
    found=1
    set_value "$gov" performance
done
[ "$found" = 1 ] || echo "absent: no cpufreq (a VM or a fixed clock): nothing to do"

echo "== socket buffers and busy polling"
at_least net.core.rmem_max $((16 << 20))
at_least net.core.wmem_max $((16 << 20))
at_least net.core.busy_read 50
at_least net.core.busy_poll 50

echo "== transparent huge pages: madvise"
set_value /sys/kernel/mm/transparent_hugepage/enabled madvise

echo "== locked memory for io_uring (new sessions; systemd units need LimitMEMLOCK=infinity)"
limits=/etc/security/limits.d/eventstream.conf
wanted_limits=$'*  soft  memlock  unlimited\n*  hard  memlock  unlimited'
if [ -f "$limits" ] && [ "$(cat "$limits")" = "$wanted_limits" ]; then
    echo "already: $limits"
elif [ "$dry" = 1 ]; then
    echo "would write: $limits (memlock unlimited)"
elif [ -d /etc/security/limits.d ]; then
    printf '%s\n' "$wanted_limits" >"$limits" && echo "wrote: $limits"
else
    echo "absent: /etc/security/limits.d (no pam_limits): set the limit where the server starts"
fi

if [ -n "$server_cpus" ]; then
    echo "== IRQs away from server CPUs $server_cpus"
    all=$(cat /sys/devices/system/cpu/online)
    others=$(python3 - "$all" "$server_cpus" <<'PY'
import sys
def cpus(spec):
    out = set()
    for part in spec.split(','):
        a, _, b = part.partition('-')
        out.update(range(int(a), int(b or a) + 1))
    return out
rest = sorted(cpus(sys.argv[1]) - cpus(sys.argv[2]))
print(','.join(map(str, rest)))
PY
)
    if [ -z "$others" ]; then
        echo "skipped: no CPU left for IRQs outside $server_cpus"
    else
        for irq in /proc/irq/[0-9]*/smp_affinity_list; do
            current=$(cat "$irq")
            [ "$current" = "$others" ] && continue
            if [ "$dry" = 1 ]; then
                echo "would set: $irq = $others (now: $current)"
            else
                # Some IRQs cannot move (per-CPU timers): say so and go on.
                echo "$others" >"$irq" 2>/dev/null && echo "set: $irq = $others" \
                    || echo "fixed: $irq stays $current"
            fi
        done
    fi
    echo "kernel command line (needs a reboot): isolcpus=$server_cpus nohz_full=$server_cpus rcu_nocbs=$server_cpus"
fi

if [ "$smt_off" = 1 ]; then
    echo "== SMT off (until reboot; nosmt on the kernel command line makes it permanent)"
    set_value /sys/devices/system/cpu/smt/control off
fi
echo "done; check with: eventstream doctor"
