"""The report: the table files of a results folder, the README section, the rendered comparison.

:func:`write_report` writes ``benchmark.md`` and ``benchmark.csv`` into a results folder and,
for the project's own ``results/`` only, the repository README's section between
:data:`README_START` and :data:`README_END`: a report of any other folder (a copy, a test run, a
scratch suite) never rewrites the repository's README. Both hold the same parts
(:func:`report_markdown`): our LoveDA rows, the published reference rows, and the synthetic
rows apart as a pipeline check.

:func:`render_comparison` executes ``notebooks/04_results_comparison.ipynb`` on a results folder
and exports it to HTML as a report: the code hidden (the executed notebook keeps it), the
figures embedded.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

from .. import paths
from ..errors import ConfigError
from ..files import write_text_atomic
from .published import published_markdown, published_rows
from .references import PublishedResult
from .schema import Record
from .sections import replace_section
from .store import load_records
from .table import build_table, split_by_data, table_markdown

__all__ = [
    "COMPARISON_NOTEBOOK",
    "CSV_FILE",
    "MARKDOWN_FILE",
    "README_END",
    "README_START",
    "readme_target",
    "render_comparison",
    "report_markdown",
    "repository_readme",
    "write_report",
]

#: The table files in ``<results_dir>`` and the rendered comparison.
MARKDOWN_FILE = "benchmark.md"
CSV_FILE = "benchmark.csv"
COMPARISON_NOTEBOOK = "04_results_comparison.ipynb"
#: The README section :func:`write_report` rewrites lies between these two lines.
README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"


def repository_readme() -> Path:
    """The repository's own README (read from :mod:`loveda_utils.paths` at call time)."""
    return paths.PROJECT_ROOT / "README.md"


def _same(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def readme_target(
    results_dir: str | os.PathLike[str],
    readme: bool = True,
    readme_path: str | os.PathLike[str] | None = None,
) -> Path | None:
    """The README :func:`write_report` rewrites for ``results_dir``, or None.

    The repository's README shows the project's own ``results/`` (:data:`paths.RESULTS_DIR`)
    and nothing else: for any other ``results_dir`` it is left alone, whether it was named in
    ``readme_path`` or not (and a checkout without a README gets none). Another README named in
    ``readme_path`` is rewritten (it must exist and hold the markers). With ``readme=False``, no
    README.
    """
    if not isinstance(readme, bool):  # the README's path moved to readme_path
        raise TypeError(f"readme={readme!r}: pass True/False, and a README file as readme_path")
    if not readme:
        return None
    own_results = _same(results_dir, paths.RESULTS_DIR)
    if readme_path is not None and not _same(readme_path, repository_readme()):
        return Path(readme_path)
    target = repository_readme()
    return target if own_results and target.is_file() else None


def _readme_bytes(path: Path, section: str) -> bytes:
    """``path``'s bytes with the text between the results markers replaced by ``section``."""
    if not path.is_file():
        raise ConfigError(
            f"readme={str(path)!r} is not a file; pass an existing README or --no-readme"
        )
    text = path.read_bytes().decode("utf-8")
    new = replace_section(text, README_START, README_END, section, path, "or pass --no-readme")
    return new.encode("utf-8")


#: The report's parts, in order (headings; :func:`report_markdown`).
OURS_HEADING = "Our runs on LoveDA"
PUBLISHED_HEADING = "Published results (reported by their sources, not run here)"
PIPELINE_HEADING = "Pipeline check: synthetic mini-LoveDA (not LoveDA results)"
_NO_REAL_RUNS = (
    "_No LoveDA runs yet: run the suite on a LoveDA root (`LOVEDA_ROOT=/path/to/LoveDA python -m "
    "loveda_utils run-suite`); each run writes `runs/<run_name>/metrics.json`._"
)
_PIPELINE_INTRO = (
    "These rows were measured on the generated mini-LoveDA (`make-synthetic`): they show that the "
    "pipeline runs end to end (training, evaluation, timing, the record, this table) and say "
    "nothing about LoveDA. They are kept apart from the LoveDA rows above and from the published "
    "ones."
)


def report_markdown(
    records: Sequence[Record],
    problems: Sequence[str] = (),
    results_dir: str | os.PathLike[str] | None = None,
    link_base: str | os.PathLike[str] | None = None,
    level: int = 2,
    published: Sequence[PublishedResult] | None = None,
) -> str:
    """The report's sections as markdown, headings at ``level`` (``##`` in ``benchmark.md``,
    ``###`` in the README under its "Results"):

    1. :data:`OURS_HEADING`: our real LoveDA rows (newest per run group, ranked by mIoU, with
       their 95% intervals), the protocol footnote and any damaged record; a line saying there
       are none yet when so.
    2. :data:`PUBLISHED_HEADING`: the published reference rows (``published``, default
       :func:`~loveda_utils.results.published.published_rows`), one table per split, each row
       with its source; always present.
    3. :data:`PIPELINE_HEADING`: the synthetic mini-LoveDA rows (a line saying there are none
       when so), kept out of the two parts above.

    Links are relative to ``link_base`` (else ``results_dir``, see
    :func:`~loveda_utils.results.table.build_table`).
    """
    heading = "#" * level
    real, synthetic = split_by_data(records)
    rows = published_rows() if published is None else published
    parts = [
        f"{heading} {OURS_HEADING}",
        table_markdown(
            build_table(real, results_dir, link_base=link_base), problems, empty=_NO_REAL_RUNS
        ),
        f"{heading} {PUBLISHED_HEADING}",
        published_markdown(rows, heading=heading + "#"),
    ]
    parts.append(f"{heading} {PIPELINE_HEADING}")
    if synthetic:
        parts += [
            _PIPELINE_INTRO,
            table_markdown(build_table(synthetic, results_dir, link_base=link_base)),
        ]
    else:
        demo = f"{paths.RESULTS_DIR.name}/{paths.DEMO_RESULTS_DIR.name}/{MARKDOWN_FILE}"
        parts.append(
            "_No synthetic runs here. The demo's pipeline check (`./workbook demo`, on the "
            f"synthetic mini-LoveDA) has its own table, in the git-ignored `{demo}`._"
        )
    return "\n\n".join(part.strip("\n") for part in parts) + "\n"


def write_report(
    results_dir: str | os.PathLike[str],
    readme: bool = True,
    readme_path: str | os.PathLike[str] | None = None,
) -> dict[str, Path]:
    """Write ``benchmark.md`` and ``benchmark.csv`` in ``results_dir``, and a README section.

    Args:
        results_dir: the folder holding ``runs/*/metrics.json``.
        readme: False leaves every README alone (the suite's and the CLI's ``--no-readme``).
        readme_path: another README to rewrite; default: the repository's README, which is
            rewritten only when ``results_dir`` is the project's own ``results/``
            (:func:`readme_target`).

    The README keeps every byte outside the markers :data:`README_START` and
    :data:`README_END`; the table between them has links relative to the README's folder. All
    files are written atomically, and only after the README's markers are checked. No table
    holds a local absolute path: links are relative and damaged records are named by their
    place in ``results_dir``.

    Returns:
        ``{"markdown": ..., "csv": ..., "readme": ...}`` (``readme`` only when one was written).

    Raises:
        ConfigError: ``results_dir`` is not a folder, or the README or its markers are missing.
    """
    results_dir = Path(results_dir)
    records, problems = load_records(results_dir)
    published = published_rows()
    markdown = (
        "# LoveDA benchmark results\n\n"
        "Generated by `python -m loveda_utils report` from `runs/*/metrics.json` and the "
        "published reference rows; do not edit by hand.\n\n"
        + report_markdown(records, problems, results_dir, published=published)
    )
    raw = build_table(records, results_dir, formatted=False)
    writes: dict[str, tuple[Path, str | bytes]] = {
        "markdown": (results_dir / MARKDOWN_FILE, markdown),
        "csv": (results_dir / CSV_FILE, raw.to_csv(index=False)),
    }
    target = readme_target(results_dir, readme, readme_path)
    if target is not None:
        section = report_markdown(
            records, problems, results_dir, link_base=target.parent, level=3, published=published
        )
        writes["readme"] = (target, _readme_bytes(target, section))
    for path, data in writes.values():
        write_text_atomic(path, data)
    return {key: path for key, (path, _) in writes.items()}


def render_comparison(
    results_dir: str | os.PathLike[str],
    data_root: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    max_tiles: int = 4,
) -> dict[str, Path]:
    """Execute ``notebooks/04_results_comparison.ipynb`` on ``results_dir`` and export HTML.

    Writes ``<out_dir>/04_results_comparison.ipynb`` (executed, with code and outputs) and
    ``<out_dir>/04_results_comparison.html`` (the outputs and text only, images embedded);
    ``out_dir`` defaults to
    ``results_dir``, where the table's links resolve. Each file replaces the previous one only
    once complete; a failed execution is kept as ``04_results_comparison.failed.ipynb``.

    Returns:
        ``{"notebook": ..., "html": ...}``.
    """
    import nbformat
    import papermill as pm
    from nbconvert import HTMLExporter

    results_dir = Path(results_dir).resolve()
    if not results_dir.is_dir():
        raise ConfigError(f"results_dir={str(results_dir)!r} is not a folder")
    out = Path(out_dir) if out_dir is not None else results_dir
    out.mkdir(parents=True, exist_ok=True)
    notebook = out / COMPARISON_NOTEBOOK
    tmp = out / f".{COMPARISON_NOTEBOOK}.{uuid.uuid4().hex[:8]}.tmp.ipynb"
    parameters = {
        "results_dir": str(results_dir),
        "data_root": None if data_root is None else str(Path(data_root).resolve()),
        "max_tiles": int(max_tiles),
    }
    try:
        pm.execute_notebook(
            str(paths.NOTEBOOKS_DIR / COMPARISON_NOTEBOOK), str(tmp), parameters=parameters,
            kernel_name="python3", progress_bar=False, cwd=str(paths.NOTEBOOKS_DIR),
        )  # fmt: skip
    except BaseException:
        if tmp.exists():
            os.replace(tmp, out / COMPARISON_NOTEBOOK.replace(".ipynb", ".failed.ipynb"))
        raise
    os.replace(tmp, notebook)
    # A report, not a notebook: no code cells, no In/Out prompts (the .ipynb keeps them).
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True, embed_images=True)  # fmt: skip
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    html = write_text_atomic(notebook.with_suffix(".html"), body)
    return {"notebook": notebook, "html": html}
