"""The rule of question 2.4: thresholds and decisions on measured rates, nothing else.

Pure functions of the numbers the experiment measured (analysis/meaningful.py): each network's
behaviour call and occlusion call, whether the controls came out as they must, and M's verdict.
RULE states them in words and is quoted in every result.
"""

from __future__ import annotations

# Thresholds of the rule (fractions of images).
ACC_MIN = 0.5        # digit alone must give the label on more than half the images (chance: 0.1)
FOLLOW_MAX = 0.2     # a moved marker may take the prediction on at most 1 in 5 images (chance ≈ 0.1)
REMOVED_MAX = 0.5    # without the digit, the label may come back on at most half the images
HIT_MIN = 0.5        # the largest drop must fall on the digit on more than half the images
OFF_MAX = 0.5        # at most half the images may have most of their drop mass off the digit

RULE = (
    "All rates are over images, with 95% Wilson intervals [lo, hi]. Behaviour: the model READS THE "
    f"DIGIT if lo(accuracy, digit alone) ≥ {ACC_MIN}, hi(prediction follows a moved marker) ≤ "
    f"{FOLLOW_MAX} and hi(accuracy, digit removed) ≤ {REMOVED_MAX}; it DOES NOT if hi(accuracy, "
    f"digit alone) < {ACC_MIN} or lo(follows marker) > {FOLLOW_MAX} or lo(accuracy, digit removed) "
    f"> {REMOVED_MAX}; otherwise undecided. Occlusion (3×3 patch of 0, stride 2, drop of log p(label) "
    f"on marked copies of correctly classified images): ON THE DIGIT if lo(largest drop on the digit) "
    f"≥ {HIT_MIN} and hi(most drop mass off the digit) ≤ {OFF_MAX}; OFF THE DIGIT if hi(largest drop "
    f"on the digit) < {HIT_MIN} or lo(most drop mass off the digit) > {OFF_MAX}; otherwise undecided. "
    "A model is 'not meaningful' when it does not read the digit (occlusion cannot overrule a failed "
    "intervention: the untrained network R shows that occlusion alone can point at the digit); "
    "'meaningful' when it reads the digit and occlusion is on the digit; otherwise 'inconclusive'. "
    "The controls' answers are known without M: N (trained on labels only a marker carries) must not "
    "read the digit, P (trained on true labels with markers in random slots, scored against its own "
    "readings) must read it, and R (untrained) must not; if one of these fails, the verdict is "
    "'invalid'. A 'meaningful' verdict also needs the occlusion controls: N's occlusion off the digit "
    "and P's on it; if one fails, the verdict is 'invalid'.")

VERDICTS = ("meaningful", "not meaningful", "inconclusive", "invalid")


def behaviour_call(b: dict) -> str:
    a, f, r = b["accuracy_digit_alone"], b["follows_moved_marker"], b["accuracy_digit_removed"]
    if a["lo"] >= ACC_MIN and f["hi"] <= FOLLOW_MAX and r["hi"] <= REMOVED_MAX:
        return "reads the digit"
    if a["hi"] < ACC_MIN or f["lo"] > FOLLOW_MAX or r["lo"] > REMOVED_MAX:
        return "does not read the digit"
    return "undecided"


def occlusion_call(o: dict) -> str:
    h, m = o["largest_drop_on_digit"], o["most_drop_mass_off_digit"]
    if h["lo"] >= HIT_MIN and m["hi"] <= OFF_MAX:
        return "on the digit"
    if h["hi"] < HIT_MIN or m["lo"] > OFF_MAX:
        return "off the digit"
    return "undecided"


def subject_verdict(behaviour: str, occlusion: str) -> str:
    """RULE for one network, before the controls: behaviour decides, occlusion only confirms."""
    if behaviour == "does not read the digit":
        return "not meaningful"
    if behaviour == "reads the digit" and occlusion == "on the digit":
        return "meaningful"
    return "inconclusive"


def controls_held(res: dict) -> tuple[dict, list[str]]:
    """Which controls came out as they must, by group, and a reason for each that did not."""
    n_, p_, r_ = res["N"], res["P"], res["R"]
    reasons = []
    if n_["behaviour_call"] != "does not read the digit":
        reasons.append(f"the negative control N (trained on labels only a marker carries) came out "
                       f"'{n_['behaviour_call']}' (it must not read the digit)")
    if p_["behaviour_call"] != "reads the digit":
        reasons.append(f"the positive control P (trained on the true labels) came out '{p_['behaviour_call']}' "
                       f"(it must read the digit)")
    if r_["behaviour_call"] == "reads the digit":
        reasons.append("the untrained network R came out 'reads the digit'")
    behaviour_ok = not reasons
    if n_["occlusion_call"] != "off the digit":
        reasons.append(f"N's occlusion came out '{n_['occlusion_call']}' (it must be off the digit)")
    if p_["occlusion_call"] != "on the digit":
        reasons.append(f"P's occlusion came out '{p_['occlusion_call']}' (it must be on the digit)")
    occlusion_ok = n_["occlusion_call"] == "off the digit" and p_["occlusion_call"] == "on the digit"
    return {"behaviour": behaviour_ok, "occlusion": occlusion_ok}, reasons


def decide(m_behaviour: str, m_occlusion: str, controls: dict) -> str:
    """RULE: M's verdict given its calls and which control groups held."""
    if not controls["behaviour"]:
        return "invalid"
    if m_behaviour == "does not read the digit":
        return "not meaningful"
    if m_behaviour == "reads the digit" and m_occlusion == "on the digit":
        return "meaningful" if controls["occlusion"] else "invalid"
    return "inconclusive"
