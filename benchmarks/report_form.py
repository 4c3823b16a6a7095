"""The report as a reader meets it: pages, the page where the assignment's answers end, words per
question in the main body, words past the page's edge, and the smallest figure text in print.

    python benchmarks/report_form.py reports/demo [reports/other ...]

Words per question count every paragraph of the question's main-body section (not tables, figure
captions or the appendix), so reports written before and after the part-14 layout compare.
"""

from __future__ import annotations

import html as htmllib
import json
import re
import sys
from pathlib import Path

import pypdfium2 as pdfium


def _text(s: str) -> str:
    return re.sub(r"\s+", " ", htmllib.unescape(re.sub(r"<[^>]+>", " ", s))).strip()


def words_per_question(html: str) -> dict[str, int]:
    out = {}
    for m in re.finditer(r'<section class="q" id="q([\d.]+)" data-section="[\d.]+">(.*?)</section>', html, re.S):
        paras = re.findall(r"<p[^>]*>(.*?)</p>", m.group(2), re.S)
        out[m.group(1)] = sum(len(_text(p).split()) for p in paras)
    return out


def pdf_facts(pdf_path: Path) -> dict:
    pdf = pdfium.PdfDocument(str(pdf_path))
    off, end_page = 0, None
    for n in range(len(pdf)):
        page = pdf[n]
        width, height = page.get_width(), page.get_height()
        tp = page.get_textpage()
        text = tp.get_text_range()
        if end_page is None and ("End of the assignment" in text or "Beyond the assignment" in text):
            end_page = n + 1
        for i in range(tp.count_chars()):
            if not tp.get_text_range(i, 1).strip():
                continue
            l, b, r, t = tp.get_charbox(i)
            if l < -0.5 or r > width + 0.5:
                off += 1
    return {"pages": len(pdf), "answers_end_page": end_page, "characters_past_the_edge": off}


def main(paths: list[str]) -> None:
    for p in map(Path, paths):
        results = json.loads((p / "results.json").read_text(encoding="utf-8"))
        words = words_per_question((p / "report.html").read_text(encoding="utf-8"))
        figs = results.get("figures", [])
        smallest = min((f["min_font_pt"] for f in figs if f.get("min_font_pt") is not None), default=None)
        facts = {"report": str(p), "preset": results.get("preset"), "total_s": round(results.get("total_seconds", 0), 1),
                 **pdf_facts(p / "report.pdf"), "main_body_words": sum(words.values()), "words": words,
                 "smallest_figure_text_pt": smallest}
        print(json.dumps(facts))


if __name__ == "__main__":
    main(sys.argv[1:])
