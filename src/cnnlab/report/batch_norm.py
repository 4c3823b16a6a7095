"""1.6 batch-normalization: does it change test accuracy, and training time?"""

from __future__ import annotations

import numpy as np

from ..analysis.batch_norm import accuracy_verdict, load_step_times, time_verdict, time_verdict_steps
from ..evaluation import evaluate
from ..figures import plot_bn_comparison
from ..metrics import read_metrics
from ..runs import open_run
from ..stats import mcnemar, mean_std, paired_ci
from .base import Context, Section, esc, fig_to_data_uri


def _time_to_reach(metrics: list[dict], target: float) -> float | None:
    """Training seconds until validation accuracy first reached `target` (None if never)."""
    for m in metrics:
        if m["val_acc"] >= target:
            return m["train_time_s"]
    return None


def section_1_6(ctx: Context) -> Section:
    """1.6 batch-normalization study"""
    p = ctx.printed
    sec = Section("1.6", "Batch-normalization: accuracy and training time",
                  "Use batch-normalization. Does it improve the test accuracy? Does it affect training time?")
    plain = [open_run(r) for r in ctx.runs["plain"]]
    bn = [open_run(r) for r in ctx.runs["batch_norm"]]
    if not bn:
        sec.answer.append("Not answered: this report was given no batch-norm network (<code>cnnlab report --runs "
                          "PLAIN BN</code> answers 1.6 from a plain and a batch-norm network).")
        sec.numbers = {"missing": "batch-norm network"}
        return sec
    if not all(r.info.timing for r in plain + bn):
        return _section_1_6_untimed(ctx, sec, plain, bn)
    acc_p = [r.test.accuracy for r in plain]
    acc_b = [r.test.accuracy for r in bn]
    ep_p = [float(np.mean(r.timing.epoch_times_s)) for r in plain]
    ep_b = [float(np.mean(r.timing.epoch_times_s)) for r in bn]
    reach = []
    for rp, rb in zip(plain, bn):
        mp = read_metrics(rp.path / "metrics.csv")
        mb = read_metrics(rb.path / "metrics.csv")
        target = mp[-1]["val_acc"]
        reach.append({"target": target, "plain_s": _time_to_reach(mp, target), "bn_s": _time_to_reach(mb, target)})
    n = len(plain)

    rows = []
    for i, rp in enumerate(plain):
        rows.append([str(rp.config.seed), f"{acc_p[i] * 100:.2f}%", f"{acc_b[i] * 100:.2f}%",
                     f"{ep_p[i]:.2f}", f"{ep_b[i]:.2f}",
                     _fmt_s(reach[i]["plain_s"]), _fmt_s(reach[i]["bn_s"])])
    sec.appendix_tables.append({"caption": "Plain vs batch-norm network, same split, seeds, budget and schedule. "
                                  "Reach = training seconds until validation accuracy first reached the plain "
                                  "model's final validation accuracy.",
                       "header": ["seed", "test acc (plain)", "test acc (BN)", "s/epoch (plain)", "s/epoch (BN)",
                                  "reach (plain)", "reach (BN)"], "rows": rows})

    mp_, sp_ = mean_std(acc_p)
    mb_, sb_ = mean_std(acc_b)
    diff = paired_ci(acc_p, acc_b)
    # Paired exact test on the test images for the first seed (works with one seed).
    # in the precision each run was tested in, so that the counts add up to the accuracies above
    ev_p = evaluate(plain[0].load_model(), ctx.split.test_x, ctx.split.test_y, precision=plain[0].precision)
    ev_b = evaluate(bn[0].load_model(), ctx.split.test_x, ctx.split.test_y, precision=bn[0].precision)
    y = ctx.split.test_y
    mc = mcnemar((ev_p.predictions == y).tolist(), (ev_b.predictions == y).tolist())
    acc_v = sec.verdict(accuracy_verdict(acc_p, acc_b, mc))
    steps_p, steps_b = [load_step_times(r) for r in plain], [load_step_times(r) for r in bn]
    if all(t is not None for t in steps_p + steps_b):
        time_v = sec.verdict(time_verdict_steps(steps_p, steps_b, reach))
    else:
        time_v = sec.verdict(time_verdict(ep_p, ep_b, reach))
    d_pts = 100 * diff["mean"]
    over = f" over {p('1.6.seeds', n, '{}')} seeds (mean)" if n > 1 else ""
    accs = (f"{p.pct('1.6.acc_bn_mean', mb_)} with batch-normalization against {p.pct('1.6.acc_plain_mean', mp_)} "
            f"without{over}")
    if acc_v.key == "yes":
        acc_text = f"<b>Accuracy: yes</b>, batch-normalization improved test accuracy: {accs}."
    elif acc_v.key == "no":
        acc_text = f"<b>Accuracy: no</b>, batch-normalization lowered test accuracy: {accs}."
    else:
        acc_text = (f"<b>Accuracy: not measurably</b>: {accs}, a difference of "
                    f"{p('1.6.acc_diff', d_pts, '{:+.2f}')} points that chance alone could produce"
                    + (" with one seed." if n == 1 else " across these seeds."))
    ratio = float(np.mean(ep_b) / np.mean(ep_p))
    tv = time_v.numbers
    if "ci_low" in tv:          # the per-step rule: medians of every optimizer step, with an interval
        per_step = time_v.key.split("/")[0]
        head = {"slower": "<b>Training time: yes</b>, it makes training slower",
                "faster": "<b>Training time: yes</b>, it makes training faster",
                "same": "<b>Training time: no</b> measurable change",
                "inconclusive": "<b>Training time: too close to call</b> on this machine"}[per_step]
        time_text = (f"{head}: a training step takes {p('1.6.step_ms_bn', tv['step_ms_bn'], '{:.1f}')} ms with and "
                     f"{p('1.6.step_ms_plain', tv['step_ms_plain'], '{:.1f}')} ms without batch-normalization "
                     f"(×{p('1.6.step_ratio', tv['ratio'], '{:.2f}')}, median over every step; 95% interval "
                     f"×{p('1.6.step_ratio_lo', tv['ci_low'], '{:.2f}')}–×{p('1.6.step_ratio_hi', tv['ci_high'], '{:.2f}')})"
                     + (", so timing noise decides." if per_step == "inconclusive" else "."))
        if tv.get("mean_disagrees"):
            sec.evidence.append(
                f"Comparing mean epoch times instead would have answered '{esc(tv['mean_key'])}' "
                f"(×{p('1.6.epoch_ratio', ratio, '{:.2f}')}): a few slow stretches of the machine move a mean, "
                f"while the median of thousands of steps ignores them.")
    else:                       # a run trained before step times were recorded: mean epoch times
        per_epoch = time_v.key.split("/")[0]
        time_text = {"slower": "<b>Training time: yes</b>, it makes training slower",
                     "faster": "<b>Training time: yes</b>, it makes training faster",
                     "same": "<b>Training time: no</b> measurable change"}[per_epoch]
        time_text += (f": an epoch takes {p('1.6.epoch_s_bn', float(np.mean(ep_b)), '{:.2f}')} s with and "
                      f"{p('1.6.epoch_s_plain', float(np.mean(ep_p)), '{:.2f}')} s without batch-normalization "
                      f"(×{p('1.6.epoch_ratio', ratio, '{:.2f}')}).")
    sec.answer.extend([acc_text, time_text])
    fused_plain = any("fused" in (r.info.kernels or "") for r in plain)
    fused_bn = any("fused" in (r.info.kernels or "") for r in bn)
    if fused_plain != fused_bn:
        sec.evidence.append(
            "The two did not train on the same code: the plain network used cnnlab's fused C kernels, which "
            "cannot apply when batch-norm sits between a convolution and its pool; part of the difference is "
            "that, not the normalization itself (appendix A.1.6).")
        sec.appendix.append("Kernels each run trained with: " + "; ".join(
            f"{esc(r.name)}: {esc(r.info.kernels or 'not recorded')}" for r in plain + bn) + ".")

    if n == 1:
        sec.evidence.append(
            f"On the same 10,000 test images, {p('1.6.only_plain', mc['only_a'], '{}')} are right only for the plain "
            f"network and {p('1.6.only_bn', mc['only_b'], '{}')} only for the batch-norm network; if the two were "
            f"equally good, a split at least this uneven would happen with probability "
            f"{p('1.6.mcnemar_p', mc['p_value'], '{:.2g}')} (McNemar's test), "
            + ("so the difference is unlikely to be chance." if acc_v.key != "inconclusive" else
               "too likely to call it a difference."))
    else:
        sec.evidence.append(
            f"The paired difference (batch-norm − plain, same seeds) is {p('1.6.acc_diff', d_pts, '{:+.2f}')} points, "
            f"95% confidence interval [{p('1.6.acc_diff_lo', 100 * diff['ci_low'], '{:+.2f}')}, "
            f"{p('1.6.acc_diff_hi', 100 * diff['ci_high'], '{:+.2f}')}]. The figure shows validation accuracy against "
            f"training seconds for every seed (appendix).")
    sec.numbers = {"test_acc_plain": acc_p, "test_acc_bn": acc_b, "epoch_s_plain": ep_p, "epoch_s_bn": ep_b,
                   "reach": reach, "paired_diff": diff, "mcnemar_seed0": mc, "epoch_time_ratio": ratio,
                   "acc_plain_sd": sp_, "acc_bn_sd": sb_, "time": time_v.numbers}
    ctx.results["batch_norm"] = sec.numbers

    fig = plot_bn_comparison([read_metrics(r.path / "metrics.csv") for r in plain],
                             [read_metrics(r.path / "metrics.csv") for r in bn])
    sec.appendix_figures.append((fig_to_data_uri(fig), "Validation accuracy against training seconds (left) and validation "
                                              "error against images seen (right); plain in blue, batch-norm in orange."))
    return sec


def _section_1_6_untimed(ctx: Context, sec: Section, plain: list, bn: list) -> Section:
    """1.6 for networks trained elsewhere (imported): accuracy by the same exact test; the training
    time was not measured by cnnlab, so it is not compared."""
    p = ctx.printed
    acc_p, acc_b = [plain[0].test.accuracy], [bn[0].test.accuracy]
    y = ctx.split.test_y
    ev_p = evaluate(plain[0].load_model(), ctx.split.test_x, y, precision=plain[0].precision)
    ev_b = evaluate(bn[0].load_model(), ctx.split.test_x, y, precision=bn[0].precision)
    mc = mcnemar((ev_p.predictions == y).tolist(), (ev_b.predictions == y).tolist())
    acc_v = sec.verdict(accuracy_verdict(acc_p, acc_b, mc))
    accs = (f"{p.pct('1.6.acc_bn_mean', acc_b[0])} with batch-normalization against "
            f"{p.pct('1.6.acc_plain_mean', acc_p[0])} without")
    head = {"yes": "<b>Accuracy: yes</b>, batch-normalization improved test accuracy",
            "no": "<b>Accuracy: no</b>, batch-normalization lowered test accuracy"}.get(
        acc_v.key, "<b>Accuracy: not measurably</b>, a difference chance alone could produce")
    sec.answer.append(f"{head}: {accs}.")
    sec.answer.append("<b>Training time: not available</b>: the networks were trained elsewhere and imported, so "
                      "cnnlab did not time their training.")
    sec.evidence.append(
        f"On the same 10,000 test images, {p('1.6.only_plain', mc['only_a'], '{}')} are right only for the plain "
        f"network and {p('1.6.only_bn', mc['only_b'], '{}')} only for the batch-norm network (McNemar's test: "
        f"p = {p('1.6.mcnemar_p', mc['p_value'], '{:.2g}')}). The two were not trained by the same recipe here, so "
        f"the difference may come from their training as much as from batch-normalization.")
    sec.numbers = {"test_acc_plain": acc_p, "test_acc_bn": acc_b, "mcnemar_seed0": mc, "time": None,
                   "imported": [bool(r.imported) for r in (plain[0], bn[0])]}
    ctx.results["batch_norm"] = sec.numbers
    return sec


def _fmt_s(x):
    return "never" if x is None else f"{x:.1f} s"
