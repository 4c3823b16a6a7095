#!/usr/bin/env bash
# Regenerates the README's figures in docs/ from a report run: tools/make_docs.sh REPORT_DIR
set -euo pipefail
R=${1:?usage: tools/make_docs.sh REPORT_DIR}
C=.venv/bin/cnnlab
BEST=$(.venv/bin/python -c "import json,sys; print(json.load(open('$R/results.json'))['provenance']['best_run'])")
RUN="$R/$BEST"
OTHER=$(ls -d "$R"/runs/* | grep -v "$(basename "$RUN")" | head -1)
T=$(mktemp -d)
mkdir -p docs
# A report's runs carry no per-run figures (the report draws them): draw 1.1's and 1.2's from the
# report's plain network, as the report does.
PLAIN=$(ls -d "$R"/runs/plain-* | head -1)
.venv/bin/python - "$PLAIN" <<'PY'
import sys
from pathlib import Path
from cnnlab.figures import plot_curves, plot_predictions
from cnnlab.output import save_figure
from cnnlab.runs import open_run
from cnnlab.train import read_metrics
run = open_run(Path(sys.argv[1]))
seed = run.info["config"]["seed"]
save_figure(plot_curves(read_metrics(run.path / "metrics.csv"), title=f"plain network, seed {seed}"), Path("docs/curves.png"))
save_figure(plot_predictions(run.load_model(), run.load_split(None), n=24, seed=seed), Path("docs/predictions.png"))
PY
# The sample report and its notebook, as `make demo` wrote them.
cp "$R/report.pdf" docs/report-standard.pdf
cp "$R/report-notebook.pdf" docs/report-notebook.pdf
$C filters "$RUN" --layer conv1 --out "$T/f1" >/dev/null
$C filters "$RUN" --layer conv2 --out "$T/f2" >/dev/null
$C activations "$RUN" --index 18 --out "$T/a" >/dev/null
$C occlusion "$RUN" --index 18 --out "$T/o" >/dev/null
$C occlusion "$RUN" --meaningful --out "$T/m" >/dev/null
$C synthesize "$RUN" --transfer "$OTHER" --out "$T/s" >/dev/null
$C adversarial "$RUN" --source-digit 2 --beta-sweep --out "$T/adv" >/dev/null
$C robustness "$RUN" "$OTHER" --attack pgd --n 1000 --out "$T/r" >/dev/null
find "$T" -name "*.png" | sort
cp "$T/f1/filters_conv1.png" docs/filters_conv1.png
cp "$T/f2/filters_conv2.png" docs/filters_conv2.png
cp "$T"/a/activations_18.png docs/activations.png
cp "$T"/o/test-18/occlusion.png docs/occlusion.png
cp "$T"/m/meaningful.png docs/meaningful.png
cp "$T"/s/synthesize.png docs/synthesize.png
cp "$T"/s/likeness.png docs/likeness.png
cp "$T"/s/synthesize_cost.png docs/synthesize_cost.png
cp "$T"/adv/adversarial.png docs/adversarial.png
cp "$T"/adv/beta_sweep.png docs/beta_sweep.png
cp "$T"/r/robustness_pgd.png docs/robustness_pgd.png
