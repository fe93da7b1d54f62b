#!/usr/bin/env bash
# The default suite, again and again on a starved machine: RUNS times on one
# core (taskset -c 0), then RUNS times with every core kept busy by spinning
# processes (one per core, started here and killed by PID when this script
# ends, whatever happens).  Stops at the first failing run and says which.
# A test that passes here does not depend on how fast the machine is.
#
#   tests/stress.sh [PYTHON [PYTEST ARGS...]]     (make stress-test)
#   STRESS_RUNS=2 tests/stress.sh                 (fewer runs)
set -u

PY=${1:-.venv/bin/python}
shift || true
RUNS=${STRESS_RUNS:-5}
burners=()

stop_burners() {
    for pid in "${burners[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${burners[@]}"; do
        wait "$pid" 2>/dev/null
    done
    burners=()
}
trap stop_burners EXIT
trap 'exit 130' INT TERM

# runs LABEL COMMAND...: COMMAND (a pytest run) RUNS times; exit at the first failure
runs() {
    local label=$1 i start
    shift
    for i in $(seq 1 "$RUNS"); do
        echo "== stress-test: $label, run $i of $RUNS"
        start=$SECONDS
        if ! "$@"; then
            echo "== stress-test FAILED: $label, run $i of $RUNS (after $((SECONDS - start)) s)"
            exit 1
        fi
        echo "== stress-test: $label, run $i of $RUNS passed in $((SECONDS - start)) s"
    done
}

runs "one core (taskset -c 0)" taskset -c 0 "$PY" -m pytest "$@"

cores=$(nproc)
for _ in $(seq 1 "$cores"); do
    "$PY" -c "while True: pass" &
    burners+=($!)
done
runs "$cores core(s) kept busy by $cores spinning process(es)" "$PY" -m pytest "$@"
stop_burners

echo "== stress-test passed: $RUNS runs on one core, $RUNS runs with every core busy ($SECONDS s)"
