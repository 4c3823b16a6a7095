"""4.1 (beyond the assignment) FGSM and PGD robustness."""

from __future__ import annotations

from ..analysis.robustness import robustness, robustness_verdict
from ..runs import open_run
from .base import Context, Section, fig_to_data_uri


def section_robustness(ctx: Context) -> Section:
    """4.1 robustness to standard attacks"""
    p = ctx.printed
    n = ctx.analysis.robustness_n
    x = ctx.split.test_x[:n].float() / 255
    y = ctx.split.test_y[:n]
    sec = Section("4.1", "Robustness to standard attacks (FGSM, PGD)",
                  "Beyond the assignment: how much does an L∞-bounded perturbation (on the [0, 1] pixel scale) "
                  "lower test accuracy, for the plain and the batch-norm network?", beyond=True)
    if not ctx.runs["batch_norm"]:
        sec.answer.append("Not measured: this report was given no batch-norm network to compare "
                          "(<code>cnnlab robustness RUN</code> measures one network).")
        return sec
    runs = {"plain": open_run(ctx.runs["plain"][0]), "batch-norm": open_run(ctx.runs["batch_norm"][0])}
    models = {k: r.load_model() for k, r in runs.items()}
    kernels = {k: r.config.fused_kernels for k, r in runs.items()}
    fg = robustness(models, x, y, attack="fgsm", kernels=kernels)
    pg = robustness(models, x, y, attack="pgd", steps=ctx.analysis.pgd_steps, kernels=kernels)
    sec.figures.append((fig_to_data_uri(fg.figure()), "FGSM, untargeted."))
    sec.appendix_figures.append((fig_to_data_uri(pg.figure()), f"PGD-{ctx.analysis.pgd_steps}, untargeted, random start."))
    eps = [e for e in pg.eps_list]
    rows = []
    for e in eps:
        row = [f"{e:g} ({e * 255:.0f} grey levels)"]
        for res in (fg, pg):
            for name in models:
                r = next(r for r in res.table if r["model"] == name and r["eps"] == e)
                row.append(f"{100 * r['accuracy']:.1f}%")
        rows.append(row)
    sec.tables.append({"caption": f"Accuracy on the first {n} test images (attacks computed in {fg.params['precision']}; "
                                  f"`cnnlab robustness` defaults to fp32).",
                       "header": ["ε", "FGSM plain", "FGSM BN", "PGD plain", "PGD BN"], "rows": rows})
    at = lambda res, name, e: next(r["accuracy"] for r in res.table if r["model"] == name and r["eps"] == e)  # noqa: E731
    e1 = 0.1 if 0.1 in eps else eps[len(eps) // 2]
    sec.answer.append(
        f"At ε = {e1:g} ({e1 * 255:.0f} grey levels per pixel) FGSM leaves "
        f"{p.pct('4.1.fgsm_plain', at(fg, 'plain', e1), 1)} accuracy for the plain and "
        f"{p.pct('4.1.fgsm_bn', at(fg, 'batch-norm', e1), 1)} for the batch-norm network; PGD leaves "
        f"{p.pct('4.1.pgd_plain', at(pg, 'plain', e1), 1)} and {p.pct('4.1.pgd_bn', at(pg, 'batch-norm', e1), 1)}. "
        f"Neither network was trained to resist attacks.")
    v = sec.verdict(robustness_verdict(fg.table, pg.table, e1))
    sec.answer[0] = f"<b>{v.key.capitalize()}</b>. " + sec.answer[0]
    ctx.results["robustness"] = {"fgsm": fg.to_dict(), "pgd": pg.to_dict()}
    sec.numbers = {"fgsm": fg.to_dict(), "pgd": pg.to_dict()}
    return sec
