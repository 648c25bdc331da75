"""Nothing in conf/ or src/ is chosen, or justified, by test-split numbers.

The test split is read only by ``evaluate``; a setting picked because it gave a
better test PSNR makes every reported test number optimistic. This scans the
comments, docstrings and strings of conf/ and src/ for a test metric named next
to a verb of choosing or improving ("0.02 gave +0.8 dB test PSNR"), in either
order. A negation between the two ("the test split is never used to choose")
or a counterfactual right after them ("choosing ... by its test score would
make ...") states the rule rather than breaking it and is not flagged.
"""

from __future__ import annotations

import bisect
import re
from pathlib import Path

import pytest

from helpers import ROOT

SCANNED = ("conf", "src")
SUFFIXES = (".py", ".yaml", ".yml")

# A test-split number or the split itself: "test PSNR", "test-set", "test_ssim", "test split".
TEST_METRIC = (
    r"\btest[ _/-]?(?:psnr|ssim|rmse|split|set|scores?|metrics?|numbers?|results?|"
    r"data|slices|subjects|performance|loss|error)\b"
)
# Choosing, or a result that would justify a choice.
ACTION = (
    r"\b(?:gave|gives?|giving|better|best|chose|chosen|choos(?:e|es|ing)|"
    r"pick(?:s|ed|ing)?|select(?:s|ed|ing)?|tun(?:e|ed|es|ing)|improv\w*|"
    r"optimi[sz](?:e|ed|es|ing)|beat(?:s|en)?|won|wins?)\b"
)
# At most this many characters between the two, within one clause.
GAP = 40
CLAUSE_END = re.compile(r"[.;:!?]\s")
TEST_RE = re.compile(TEST_METRIC, re.IGNORECASE)
ACTION_RE = re.compile(ACTION, re.IGNORECASE)
# Between the two: the sentence says the test split is NOT used for the choice.
NEGATION_INSIDE = re.compile(r"\b(?:never|not|no|nothing|without)\b", re.IGNORECASE)
# Right after the two: a counterfactual ("... would make the numbers optimistic")
# or an empty object ("it selects nothing").
COUNTERFACTUAL_AFTER = re.compile(r"^\W{0,3}(?:would|could|nothing)\b", re.IGNORECASE)


def _joined(text: str) -> tuple[str, list[int]]:
    """The file as one line of prose: comment markers dropped, lines joined by a space,
    so a sentence wrapped over several lines is read whole. Also the offset at which
    each line starts, to report hits by line."""
    parts, starts, offset = [], [], 0
    for line in text.splitlines():
        stripped = re.sub(r"^\s*#+\s?", "", line).strip()
        starts.append(offset)
        parts.append(stripped)
        offset += len(stripped) + 1
    return " ".join(parts), starts


def _is_finding(prose: str, end: int, gap: str) -> bool:
    if len(gap) > GAP or CLAUSE_END.search(gap) or NEGATION_INSIDE.search(gap):
        return False
    return not COUNTERFACTUAL_AFTER.search(prose[end:])


def findings(text: str) -> list[tuple[int, str]]:
    """``(line number, matched words)`` for each statement that picks by test numbers:
    a test metric within ``GAP`` characters of a verb of choosing, in either order."""
    prose, starts = _joined(text)
    metrics = list(TEST_RE.finditer(prose))
    hits = []
    for action in ACTION_RE.finditer(prose):
        for metric in metrics:
            first, last = sorted((action, metric), key=lambda m: m.start())
            gap = prose[first.end() : last.start()]
            if first.end() <= last.start() and _is_finding(prose, last.end(), gap):
                line = bisect.bisect_right(starts, first.start())
                hits.append((line, prose[first.start() : last.end()]))
                break
    return hits


def _scanned_files() -> list[Path]:
    files = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in SUFFIXES and path.is_file() and "egg-info" not in str(path):
                files.append(path)
    return files


@pytest.mark.parametrize(
    "sentence",
    [
        "0.02 gave +0.8 dB test PSNR at 60 views.",
        "# encoder served segmentation; 0.02 gave +0.8 dB test PSNR at 60 views.",
        "lr 2e-3 chosen because it had the best test SSIM",
        "crop 64 was picked on the test split",
        "Tuned on the test set.",
        "the threshold prior improves test PSNR by 0.3 dB",
        "0.2 does not improve test PSNR, so the weight stays at 0.02",
        "the champion is selected by test/psnr",
        "kept 0.05: it gave\n# +0.4 dB on the test\n# split at 120 views",
    ],
)
def test_detector_flags_a_choice_by_test_numbers(sentence):
    assert findings(sentence), sentence


@pytest.mark.parametrize(
    "sentence",
    [
        "the test split is read only by evaluate",
        "chosen on the validation split (val/psnr 40.1 dB)",
        "the test split is never used to choose",
        "Model selection uses the validation split only; the test split is not even loaded.",
        "picking the champion by its test score would make the reported test numbers optimistic",
        "choosing the champion by its test score\nwould make the reported test numbers optimistic",
        "This is the only stage that reads the test split's reconstructions, and it\n"
        "selects nothing: checkpoints were chosen on validation data by ``train``.",
        "# champion's on the same frozen validation split by at least this much (ties\n"
        "# keep the champion). Never the test split: that would leak into the report.",
        "test metrics are recorded, never compared",
    ],
)
def test_detector_leaves_honest_statements_alone(sentence):
    assert not findings(sentence), findings(sentence)


def test_the_scan_covers_conf_and_src():
    files = {path.relative_to(ROOT).as_posix() for path in _scanned_files()}
    assert "conf/config.yaml" in files and "src/sparsect/registry.py" in files
    assert any(name.startswith("conf/trainer/") for name in files)


def test_nothing_is_chosen_by_test_numbers():
    hits = [
        f"{path.relative_to(ROOT).as_posix()}:{line}: {words!r}"
        for path in _scanned_files()
        for line, words in findings(path.read_text(encoding="utf-8"))
    ]
    assert not hits, (
        "Settings must be chosen and justified on the validation split, never by test "
        "numbers; rewrite these (val/* metrics, or no number at all):\n" + "\n".join(hits)
    )
