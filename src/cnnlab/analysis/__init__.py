"""The assignment's analysis questions, one module per question (numbers as in the assignment).

    anatomy.py        1.3–1.5  summary(): layer table, parameters, neurons
    filters.py        2.1–2.2  filters(): learned kernels decomposed, vs their initial values
    activations.py    2.3      activations(): feature maps after ReLU, by depth
    occlusion.py      2.4      occlusion() (the assignment's maps)
    meaningful.py     2.4      meaningful_experiment(), meaningful_verdict() (is the learning meaningful?)
    class_models.py   3.1      synthesize(), synthesize_regularized()
    targeted.py       3.2      adversarial(), beta_sweep()
    likeness.py       3.x      digit_likeness(): does an image look like a digit?
    robustness.py     beyond   fgsm(), pgd(), robustness()
    batch_norm.py     1.6      accuracy_verdict(), time_verdict() (the runs come from cnnlab.train)
    verdict.py                 Verdict: key, answer, rule, numbers of one judgment answer

Each question returns a result with `to_dict()`, `figure()` and `save(dir)`. Each judgment the
report states comes from one `*_verdict()` function beside the analysis it judges (filters:
patterns_verdict; activations: depth_verdict; class_models: confidence_verdict, cost_verdict;
likeness: looks_like_digits; targeted: resemblance_verdict; robustness: robustness_verdict).
"""

from ._shared import untrained_for_run, untrained_like

__all__ = ["untrained_for_run", "untrained_like"]
