#!/bin/bash
# The README's first command, then every morning command of the README, on a fresh clone
# and a fresh venv, each timed ("STAGE rc=<exit status> <seconds>s: <command>").
#   bash benchmarks/readme_commands.sh [REPO (default: this checkout)] [WORKDIR (default: a new temp dir)]
set -u
repo=$(realpath "${1:-$(dirname "$0")/..}")
work=${2:-$(mktemp -d)}
mkdir -p "$work" && cd "$work" && rm -rf clone venv && git clone -q "$repo" clone && cd clone || exit 1
python3.11 -m venv ../venv && . ../venv/bin/activate
t() { local s; s=$(date +%s); "$@"; local rc=$?; echo "STAGE rc=$rc $(( $(date +%s) - s ))s: $*"; return $rc; }
t bash -c "pip install -q torch==2.13.0 && pip install -q -e ." || exit 1
t ggopt data sim --recipe quickstart --out data/sim --workers 2 || exit 1
t ggopt search studies/quickstart.toml || exit 1
t ggopt export studies/quickstart.toml --trial knee --out best/ --scenes 100 || exit 1
t ggopt pareto studies/quickstart.toml
t ggopt pareto studies/quickstart.toml --verify 2
trial=$(python -c "import json; print(json.load(open('best/config.json'))['trial'])")
t ggopt export studies/quickstart.toml --trial "$trial" --out best2/ --no-sim
t ggopt verify studies/quickstart.toml --trial "$trial" --scenes 20
t ggopt report studies/quickstart.toml --out report/
(mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5077 > mlflow.log 2>&1 &)
sleep 25
t curl -sf -o /dev/null http://127.0.0.1:5077/
pkill -f "port 5077"
t bash -c "pip install -q -e '.[dashboard]'"
(optuna-dashboard sqlite:///ggopt.db --port 8077 > dashboard.log 2>&1 &)
sleep 10
t curl -sf -o /dev/null http://127.0.0.1:8077/dashboard
pkill -f optuna-dashboard
echo "done in $work/clone"
