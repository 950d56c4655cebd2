"""``ggopt report``: one HTML page that travels as one file (plots embedded)."""

from __future__ import annotations

import base64
import html
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna

from search.config import StudyConfig
from search.front import (
    SCOPE_NAMES,
    feasible_front,
    front_rows,
    hypervolume_history,
    latency_scope,
    recipe_rows,
    recommended_row,
)
from search.review.plots import plot_front, plot_layers
from search.review.table import ci_text, recipe_verdict, speedup_text


def write_report(study: optuna.Study, config: StudyConfig, out: Path) -> Path:
    """PNG plots and one HTML page: the front, hypervolume over trials, and per layer what
    each front model changed."""
    out.mkdir(parents=True, exist_ok=True)
    plot_front(study, config.objectives, out / "pareto.png")
    history = hypervolume_history(study, config.objectives)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ax.plot(range(len(history)), history, drawstyle="steps-post")
    ax.set_xlabel("trial")
    ax.set_ylabel("hypervolume (feasible front)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "hypervolume.png")
    plt.close(fig)
    front = feasible_front(study, config.objectives)
    plot_layers(front, out / "layers.png")
    rows = "".join(
        f"<tr><td>{r['trial']}</td><td>{r['precision']}</td>"
        f"<td>{r['accuracy']:.3f}{ci_text(r['accuracy_ci'])}</td>"
        f"<td>{r['accuracy_change_pp']:+.1f}{ci_text(r['accuracy_change_ci_pp'], '{:+.1f}')}</td>"
        f"<td>{r['size_bytes'] / 1e3:.1f}</td>"
        f"<td>{r['size_reduction']:.1f}×</td><td>{r['latency_ms']:.2f}</td>"
        f"<td>{speedup_text(r)}</td></tr>" for r in front_rows(study, config.objectives))
    base = study.user_attrs.get("baseline", {})
    variant = html.escape(str(base.get("variant")))
    row = recommended_row(study, config.objectives, front_rows(study, config.objectives))
    recommended = "<p>No feasible trial yet.</p>"
    if row is not None:
        recommended = (
            f"<p class='pick'><b>Recommended: trial {row['trial']}</b> ({row['precision']}), "
            f"the knee of the front: validation accuracy {row['accuracy']:.3f}"
            f"{ci_text(row['accuracy_ci'])}, {row['accuracy_change_pp']:+.1f} pp against the "
            f"baseline{ci_text(row['accuracy_change_ci_pp'], '{:+.1f}')}; "
            f"{row['size_bytes'] / 1e3:.1f} kB ({row['size_reduction']:.1f}× smaller); "
            f"{row['latency_ms']:.2f} ms ({speedup_text(row)} faster, "
            f"{SCOPE_NAMES[latency_scope(study)]}).<br>Ship it with <code>ggopt export "
            f"{html.escape(str(config.path))} --trial {row['trial']} --out best/</code>, which "
            f"also scores it on the test images and grasps with it in simulation.</p>")
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>{html.escape(study.study_name)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:0 .8em;
text-align:right}}.pick{{background:#eef6ee;padding:.6em;border-left:4px solid #393}}
img{{max-width:100%}}</style></head><body>
<h1>{html.escape(study.study_name)}</h1>
{recommended}
<p>{len(study.trials)} trials; baseline (uncompressed, fp32, {variant}):
accuracy {base.get('accuracy', float('nan')):.3f}, {base.get('size', 0) / 1e3:.1f} kB,
{base.get('latency', float('nan')):.2f} ms. All numbers are measured on the exported artifact.</p>
<h2>Feasible Pareto front</h2>
<p>Validation accuracy on {base.get('accuracy_images')} images with its 95 % interval; Δ is
paired with the baseline on the same images, with its 95 % interval.</p>
<table><tr><th>trial</th><th>precision</th><th>val accuracy</th>
<th>Δ pp</th><th>kB</th><th>smaller</th><th>ms ({SCOPE_NAMES[latency_scope(study)]})</th>
<th>faster</th></tr>{rows}</table>
{_embedded(out / "pareto.png")}{_recipes_section(study, config)}
<h2>Hypervolume</h2>{_embedded(out / "hypervolume.png")}
<h2>What each front model changed, per layer</h2>{_embedded(out / "layers.png")}
{_sensitivity_section(config, out)}</body></html>"""
    (out / "index.html").write_text(page)
    return out / "index.html"



def _recipes_section(study: optuna.Study, config: StudyConfig) -> str:
    """The hand recipes the study ran first, each against the front."""
    rows = recipe_rows(study, config.objectives)
    if not rows:
        return ""
    cells = "".join(
        f"<tr><td style='text-align:left'>{html.escape(r['recipe'])}</td><td>{r['trial']}</td>"
        + (f"<td>{r['accuracy_change_pp']:+.1f}"
           f"{ci_text(r['accuracy_change_ci_pp'], '{:+.1f}')}</td>"
           f"<td>{r['size_bytes'] / 1e3:.1f}</td><td>{r['latency_ms']:.2f}</td>"
           f"<td>{speedup_text(r)}</td>" if "accuracy" in r else "<td></td>" * 4)
        + f"<td style='text-align:left'>{html.escape(recipe_verdict(r))}</td></tr>"
        for r in rows)
    return ("<h2>Hand recipes against the front</h2><p>One setting for every layer, run "
            "with the study's own recovery; beaten by: front trials at least as good on "
            "every objective and better on one (validation).</p><table><tr><th>recipe</th>"
            "<th>trial</th><th>Δ pp</th><th>kB</th><th>ms</th><th>faster</th>"
            f"<th>against the front</th></tr>{cells}</table>")



def _sensitivity_section(config: StudyConfig, out: Path) -> str:
    """The heat map of ``ggopt sensitivity``, when it has been run for this study."""
    plot = Path(config.artifacts_dir) / config.name / "sensitivity.png"
    if not plot.is_file():
        return (f"<p>Per-layer sensitivity: not measured (<code>ggopt sensitivity "
                f"{html.escape(str(config.path))}</code>).</p>")
    shutil.copyfile(plot, out / "sensitivity.png")
    return ("<h2>Per-layer sensitivity</h2><p>Each knob setting on one layer alone, "
            "the accuracy change against the baseline on the validation images (paired), "
            "after a short recovery.</p>" + _embedded(out / "sensitivity.png"))



def _embedded(png: Path) -> str:
    """An image tag holding the PNG itself: MLflow shows an HTML artifact in a sandboxed
    frame where relative links to files beside it never load, and the page should travel
    as one file."""
    data = base64.b64encode(png.read_bytes()).decode()
    return f'<img alt="{html.escape(png.stem)}" src="data:image/png;base64,{data}">'
