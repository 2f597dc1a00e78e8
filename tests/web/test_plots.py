"""The console's inline SVG plots and the utilisation figures they draw."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

from qhpc.store import UsageRecord
from qhpc.web.plots import usage_against_share, utilisation_timeline
from qhpc.web.views import AccountRow, utilisation


def usage(resource: str, finished_at: float, qpu_seconds: float) -> UsageRecord:
    return UsageRecord("t", "j", "u", "a", None, resource, None, qpu_seconds, 1, 1, finished_at)


def test_utilisation_lays_each_task_on_the_time_before_it_finished() -> None:
    records = [
        usage("qpu", 1000.0, 50.0),  # [950, 1000): half of the last bucket
        usage("qpu", 850.0, 150.0),  # [700, 850): a whole bucket and a half
        usage("qpu", 100.0, 10_000.0),  # from before the window: only its part inside
        usage("elsewhere", 990.0, 5.0),  # a resource not asked about
    ]
    series = utilisation(records, ["qpu", "idle"], now=1000.0, window=1000.0, buckets=10)
    assert series["idle"] == [0.0] * 10
    assert series["qpu"] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.5]
    assert set(series) == {"qpu", "idle"}


def test_utilisation_is_capped_at_one() -> None:
    # an emulator books device time faster than the clock: many tasks in one bucket
    records = [usage("emu", 999.0, 80.0) for _ in range(5)]
    series = utilisation(records, ["emu"], now=1000.0, window=1000.0, buckets=10)
    assert max(series["emu"]) == 1.0


def test_the_timeline_says_in_words_what_it_draws() -> None:
    svg = utilisation_timeline({"emu": [0.0, 0.5, 1.0, 0.5], "aer": [0.0] * 4}, 60.0)
    root = ET.fromstring(str(svg))
    assert root.tag.endswith("svg") and root.get("role") == "img"
    texts = ["".join(t.itertext()) for t in root.iter() if t.tag.endswith("text")]
    assert "emu" in texts and "aer" in texts
    assert "50 % busy" in texts and "0 % busy" in texts
    bars = [r for r in root.iter() if r.tag.endswith("rect") and r.get("class") == "bar"]
    assert len(bars) == 3  # zero buckets draw nothing
    heights = sorted(float(b.get("height", "0")) for b in bars)
    assert math.isclose(heights[2], 2 * heights[0])
    assert "style=" not in str(svg)  # the CSP allows no inline styles


def test_labels_are_escaped() -> None:
    hostile = '<script>alert(1)</script>"&'
    for svg in (
        utilisation_timeline({hostile: [0.5]}, 60.0),
        usage_against_share([AccountRow(hostile, None, 1.0, 0.5, 0.25, 3.0)]),
    ):
        assert "<script>" not in str(svg)
        assert "&lt;script&gt;" in str(svg)
        ET.fromstring(str(svg))  # still well-formed


def test_usage_against_share_draws_both_fractions_with_their_numbers() -> None:
    rows = [
        AccountRow("chem", None, 2.0, 2 / 3, 0.9, 9.0),
        AccountRow("phys", None, 1.0, 1 / 3, 0.1, 1.0),
        AccountRow("odd", None, 1.0, math.nan, 7.0, 1.0),  # garbage in: clamped, not drawn out
    ]
    svg = str(usage_against_share(rows))
    labels = re.findall(r">((?:share|usage) \d+ %)<", svg)
    assert labels == [
        "share 67 %", "usage 90 %", "share 33 %", "usage 10 %", "share 0 %", "usage 100 %",
    ]  # fmt: skip
    widths = [float(w) for w in re.findall(r'class="(?:share|usage)"[^>]*width="([\d.]+)"', svg)]
    assert max(widths) <= 640
    assert usage_against_share([]).startswith("<p")
