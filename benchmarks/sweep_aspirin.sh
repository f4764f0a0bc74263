#!/usr/bin/env bash
# (lr, lambda) sweep of StABlE against its QM-only control on aspirin (issue 12, paper A.11), one training seed,
# reduced protocol: `boltzgrad experiment` once per cell, each resumable (run this script again to continue).
# Results: benchmarks/experiments/aspirin_sweep/<cell>/experiment/{summary.md,summary.json,eval/,*.png}.
#
#   nice -n 10 bash benchmarks/sweep_aspirin.sh            # all cells, in order
#   CELLS="sgd_lr0.01_qm0.3" bash benchmarks/sweep_aspirin.sh
#
# Protocol (chosen from pilots, see benchmarks/RESULTS.md): the converged data-limited model
# (configs/aspirin_schnet.yaml), StABlE with 16 replicas, tau = 400 steps, learning when more than 15% of
# the replicas are unstable (bond-length criterion 0.25 A), 3 cycles of 20 SGD steps each (lower threshold 0:
# a phase ends at its step budget, not on one window where the few unstable replicas happen to survive),
# gradient clipped at norm 1, one estimator over each window's samples (pooled_mean); evaluation on 32 held-out
# replicas x 12 ps at 500 K (bond-length criterion 0.5 A), the pre-trained median being about 4 ps.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/experiments/aspirin_sweep
CELLS=${CELLS:-"sgd_lr0.01_qm0.3 sgd_lr0.01_qm3 sgd_lr0.03_qm0.3 sgd_lr0.03_qm3"}
TRAIN="n_replicas: 16, tau: 400, check_every: 50, n_dump: 20, max_cycles: 3, max_learning_steps: 20,
 upper_threshold: 0.15, lower_threshold: 0.0, max_simulation_steps: 20000, minibatch: 40, optimizer: sgd,
 min_lr: 1.0e-6, lr_patience: 3, grad_clip: 1.0, pooled_mean: true, progress: false"
EVAL="replicas: 32, max_time: 12000.0, progress: false"
first=""
for cell in $CELLS; do
    lr=$(echo "$cell" | sed -E 's/.*_lr([0-9.e-]+)_.*/\1/')
    qm=$(echo "$cell" | sed -E 's/.*_qm([0-9.e-]+)$/\1/')
    dir=$OUT/$cell
    mkdir -p "$dir/experiment/eval"
    # the pre-trained model's evaluation is the same in every cell (same model, settings and seed): run it once
    if [ -n "$first" ] && [ -f "$first/experiment/eval/pretrained_s0.json" ] && [ ! -f "$dir/experiment/eval/pretrained_s0.json" ]; then
        cp "$first/experiment/eval/pretrained_s0.json" "$dir/experiment/eval/"
    fi
    echo "=== $cell: lr $lr, qm_weight $qm ($(date -u +%H:%M))"
    $PY -m boltzgrad.cli experiment --config configs/aspirin_schnet.yaml --out-dir "$dir" --threads 1 \
        --set "experiment={seeds: [0], arms: [pretrained, qm_only, stable], bootstrap: 1000,
               train: {$TRAIN, lr: $lr, qm_weight: $qm}, evaluate: {$EVAL}}"
    first=${first:-$dir}
done
