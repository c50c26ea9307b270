"""``build_report``: one self-contained HTML page from a run store.

The page is rendered from ``templates/report.html.j2`` with inline CSS and every image as a
data URI, so it can be mailed or archived as one file and still show everything. Sections are
built by the functions in ``SECTION_BUILDERS`` (each ``fn(ctx) -> Section | None``); later
features extend the report by passing or appending their own builder, not by editing this file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

import medrobust
from medrobust.errors import MedrobustError
from medrobust.report.attack_examples import attack_examples_section
from medrobust.report.blocks import Section
from medrobust.report.certify_section import certify_section
from medrobust.report.confidence_section import confidence_section
from medrobust.report.context import ReportContext
from medrobust.report.defence_section import defence_section
from medrobust.report.ensemble_section import ensemble_section
from medrobust.report.gallery import gallery_section
from medrobust.report.glance import glance_section
from medrobust.report.robust_section import robust_section
from medrobust.report.sections import (
    analysis_section,
    attack_summary_section,
    model_quality_section,
    provenance_section,
)
from medrobust.report.segmentation_section import segmentation_section
from medrobust.report.task_section import budget_section, task_attack_section

if TYPE_CHECKING:
    from medrobust.store import Store

SectionBuilder = Callable[[ReportContext], "Section | None"]

#: The standard sections, in page order. Provenance is the appendix: it is built last so it can
#: list, per run, the sections above that show it.
SECTION_BUILDERS: list[SectionBuilder] = [
    glance_section,
    model_quality_section,
    attack_summary_section,
    gallery_section,
    analysis_section,
    confidence_section,
    segmentation_section,
    task_attack_section,
    budget_section,
    attack_examples_section,
    defence_section,
    robust_section,
    ensemble_section,
    certify_section,
    provenance_section,
]

REPORT_NAME = "report.html"
TEMPLATE = "report.html.j2"


_NUMERIC = re.compile(r"^(?:[<>]\s*)?[-+]?(?:\d[\d,]*)?\.?\d+(?:e[-+]?\d+)?(?:\s*%)?$|^-$")


def is_numeric_cell(value: object) -> bool:
    """Whether a table cell reads as a number (right-aligned in the page)."""
    return isinstance(value, str) and bool(_NUMERIC.match(value.strip()))


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("medrobust.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.tests["numeric_cell"] = is_numeric_cell
    return env


def render_html(sections: Sequence[Section], title: str, subtitle: str) -> str:
    """The page for ``sections`` (no file is written)."""
    template = _environment().get_template(TEMPLATE)
    return template.render(
        title=title, subtitle=subtitle, sections=list(sections),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        version=medrobust.__version__,
    )


def build_report(store: Store, out_dir: str | Path,
                 sections: Sequence[SectionBuilder] | None = None) -> Path:
    """Write ``out_dir/report.html`` (and the analysis files under ``out_dir/analysis``).

    Raises MedrobustError if the store holds no run at all.
    """
    runs = store.runs()
    if not runs:
        raise MedrobustError(f"no runs in {store.path}: nothing to report yet")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = ReportContext(store=store, out_dir=out, runs=runs)
    built = [s for s in (fn(ctx) for fn in (sections or SECTION_BUILDERS)) if s is not None]
    html = render_html(built, "medrobust robustness report",
                       f"Run store {store.path} \u00b7 {len(runs)} run(s)")
    path = out / REPORT_NAME
    path.write_text(html, encoding="utf-8")
    return path
