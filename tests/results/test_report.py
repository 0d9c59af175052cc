"""The report: table files, the README section (only for the project's own results/), the CLI,
and the rendered comparison notebook."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from conftest import REPO, write_tree
from record_factory import (
    FCN,
    PSPNET,
    make_record,
    published_row,
    write_run,
    write_runs_with_visuals,
)

from loveda_utils import paths
from loveda_utils.cli import main
from loveda_utils.errors import ConfigError
from loveda_utils.results.report import (
    OURS_HEADING,
    PIPELINE_HEADING,
    PUBLISHED_HEADING,
    README_END,
    README_START,
    readme_target,
    render_comparison,
    report_markdown,
    write_report,
)
from loveda_utils.results.store import claim_run_dir
from loveda_utils.results.table import SYNTHETIC_MARK, TABLE_COLUMNS

README = (
    "# LoveDA benchmark\r\n\r\nIntro with trailing spaces   \r\n\r\n"
    f"{README_START}\r\nold table\r\n{README_END}\r\n\r\n## After\r\nkeep me \u00e9\r\n"
)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in repository (README.md with the markers, an empty results/): the package's
    paths point at it, so no test touches the real README."""
    root = tmp_path / "repo"
    (root / "results").mkdir(parents=True)
    (root / "README.md").write_bytes(README.encode("utf-8"))
    monkeypatch.setattr(paths, "PROJECT_ROOT", root)
    monkeypatch.setattr(paths, "RESULTS_DIR", root / "results")
    return root


def test_write_report(tmp_path: Path) -> None:
    results_dir = tmp_path / "results"
    run = write_run(results_dir, make_record(), checkpoint=True)
    write_run(results_dir, make_record(FCN, 0.31, synthetic=True, crop_size=64, lr_schd=200))
    readme = tmp_path / "README.md"
    readme.write_bytes(README.encode("utf-8"))
    written = write_report(results_dir, readme_path=readme)
    assert written == {
        "markdown": results_dir / "benchmark.md",
        "csv": results_dir / "benchmark.csv",
        "readme": readme,
    }
    md = written["markdown"].read_text(encoding="utf-8")
    assert "| 50.99 |" in md and f"FCN {SYNTHETIC_MARK}" in md
    # Three parts: ours on LoveDA, the published rows, the synthetic pipeline check apart.
    ours, published, pipeline = _parts(md, "##")
    assert "| DeepLabV3+ | R-50 |" in ours and SYNTHETIC_MARK not in ours
    assert "not run here" in published and "DeepLabV3+ | R-50 |" not in published
    assert f"| FCN {SYNTHETIC_MARK} |" in pipeline and "pipeline runs end to end" in pipeline
    assert "| DeepLabV3+ | R-50 |" not in pipeline
    assert f"(runs/{run.name}/checkpoints/last.ckpt)" in md
    csv = pd.read_csv(written["csv"])
    assert csv.loc[csv["Method"] == "DeepLabV3+", "mIoU"].item() == pytest.approx(0.5099)
    assert csv.loc[csv["Method"] == "FCN", "synthetic"].item()
    # Everything outside the markers is byte-identical; links are relative to the README.
    new = readme.read_bytes()
    head, tail = (
        README.encode().split(README_START.encode())[0],
        README.encode().split(README_END.encode())[1],
    )
    assert new.startswith(head + README_START.encode()) and new.endswith(README_END.encode() + tail)
    section = new.decode()[new.decode().index(README_START) : new.decode().index(README_END)]
    assert "old table" not in section and "| 50.99 |" in section
    assert [h for h in section.splitlines() if h.startswith("### ")] == [
        f"### {OURS_HEADING}", f"### {PUBLISHED_HEADING}", f"### {PIPELINE_HEADING}",
    ]  # fmt: skip
    assert f"(results/runs/{run.name}/checkpoints/last.ckpt)" in section
    # Rerunning is idempotent.
    write_report(results_dir, readme_path=readme)
    assert readme.read_bytes() == new
    assert not [p for p in results_dir.iterdir() if p.name.endswith(".tmp")]


def _parts(markdown: str, heading: str) -> tuple[str, str, str]:
    """The report's three parts (ours, published, pipeline check), by their headings."""
    starts = [markdown.index(f"{heading} {h}\n") for h in (OURS_HEADING, PUBLISHED_HEADING,
                                                          PIPELINE_HEADING)]  # fmt: skip
    return (markdown[starts[0] : starts[1]], markdown[starts[1] : starts[2]], markdown[starts[2] :])


def test_report_parts_without_real_or_synthetic_rows(tmp_path: Path) -> None:
    synthetic_only = [make_record(FCN, 0.9, synthetic=True, crop_size=64)]
    ours, published, pipeline = _parts(report_markdown(synthetic_only, published=[]), "##")
    assert "No LoveDA runs yet" in ours and "| FCN" not in ours
    assert "No published reference rows" in published
    assert f"| FCN {SYNTHETIC_MARK} |" in pipeline
    ours, published, pipeline = _parts(report_markdown([make_record()], level=3), "###")
    assert "| DeepLabV3+ | R-50 |" in ours and "No synthetic runs here" in pipeline
    assert "`./workbook demo`" in pipeline and "`results/demo/benchmark.md`" in pipeline
    # Published rows appear in their own part only, under their split, marked as reported.
    row = published_row(method="PSPNet", backbone="R-101-D8", miou=0.5186)
    ours, published, _ = _parts(report_markdown([make_record()], published=[row]), "##")
    assert "PSPNet" not in ours
    assert "### LoveDA Val (published)" in published
    assert "| PSPNet | R-101-D8 |" in published and "LoveDA Val, reported" in published


def test_write_report_refuses_readme_without_markers(tmp_path: Path) -> None:
    write_run(tmp_path / "results", make_record())
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        write_report(tmp_path / "results", readme_path=readme)
    message = str(err.value)
    assert str(readme) in message and README_START in message and README_END in message
    assert "--no-readme" in message
    assert readme.read_text(encoding="utf-8") == "# no markers here\n"
    assert not (tmp_path / "results" / "benchmark.md").exists()  # nothing half-done
    with pytest.raises(ConfigError, match="not a file"):
        write_report(tmp_path / "results", readme_path=tmp_path / "missing.md")


def test_write_report_without_records(tmp_path: Path) -> None:
    written = write_report(tmp_path)
    assert "No LoveDA runs yet" in written["markdown"].read_text(encoding="utf-8")
    assert list(pd.read_csv(written["csv"]).columns[: len(TABLE_COLUMNS)]) == list(TABLE_COLUMNS)


# -- only the project's own results/ reach the repository's README --------------------------------


def test_report_of_another_folder_leaves_the_repository_readme(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "scratch-results"
    write_run(other, make_record(PSPNET, 0.5186))
    readme = project / "README.md"
    # Neither by default nor when the repository's README is named: another folder's table
    # goes to that folder only.
    assert readme_target(other) is None
    assert "readme" not in write_report(other)
    assert "readme" not in write_report(other, readme_path=readme)
    assert main(["report", "--results-dir", str(other)]) == 0
    assert main(["report", "--results-dir", str(other), "--readme", str(readme)]) == 0
    assert "no README updated" in capsys.readouterr().err
    assert readme.read_bytes() == README.encode("utf-8")
    assert "| PSPNet | R-101 |" in (other / "benchmark.md").read_text(encoding="utf-8")
    assert not (project / "results" / "benchmark.md").exists()


def test_report_of_the_projects_results_rewrites_its_readme(project: Path) -> None:
    results = project / "results"
    run = write_run(results, make_record(), checkpoint=True)
    readme = project / "README.md"
    assert write_report(results, readme=False).keys() == {"markdown", "csv"}
    assert readme.read_bytes() == README.encode("utf-8")
    assert readme_target(results) == readme
    with pytest.raises(TypeError, match="readme_path"):  # a path where the switch goes
        write_report(results, readme=readme)  # type: ignore[arg-type]
    assert main(["report"]) == 0  # the CLI's default: the project's results/ and its README
    text = readme.read_text(encoding="utf-8")
    assert "old table" not in text and f"(results/runs/{run.name}/checkpoints/last.ckpt)" in text
    assert main(["report", "--no-readme"]) == 0
    # Without a README in the checkout, the table is still written, named README or not.
    readme.unlink()
    assert "readme" not in write_report(results)
    assert "readme" not in write_report(results, readme_path=readme)


def test_report_holds_no_absolute_local_path(tmp_path: Path) -> None:
    results_dir = tmp_path / "results"
    elsewhere = tmp_path / "elsewhere"
    record = make_record(
        root=elsewhere / "LoveDA",
        checkpoint=str(elsewhere / "model.ckpt"),
        config={"data_root": str(elsewhere / "LoveDA"), "results_dir": str(elsewhere)},
    )
    write_run(results_dir, record, notebook=True, checkpoint=True)
    broken = claim_run_dir(results_dir, "broken")
    (broken / "metrics.json").write_text("not json", encoding="utf-8")
    readme = tmp_path / "docs" / "README.md"
    readme.parent.mkdir()
    readme.write_bytes(README.encode("utf-8"))
    written = write_report(results_dir, readme_path=readme)
    for path in written.values():
        text = path.read_text(encoding="utf-8")
        assert str(tmp_path) not in text and "elsewhere" not in text, path
        assert "runs/broken/metrics.json" in text or path.suffix == ".csv"
    assert "](../results/runs/" in readme.read_text(encoding="utf-8")


# -- the CLI ---------------------------------------------------------------------------------------


def test_report_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results_dir = tmp_path / "results"
    write_run(results_dir, make_record())
    broken = claim_run_dir(results_dir, "broken")
    (broken / "metrics.json").write_text("not json", encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_bytes(README.encode("utf-8"))
    assert main(["report", "--results-dir", str(results_dir), "--readme", str(readme)]) == 0
    out, err = capsys.readouterr()
    assert "| DeepLabV3+ | R-50 |" in out and "1 damaged record(s)" in out
    assert f"damaged record in {results_dir}: runs/broken/metrics.json: not valid JSON" in err
    assert "| 50.99 |" in readme.read_text(encoding="utf-8")
    assert main(["report", "--results-dir", str(tmp_path / "missing"), "--no-readme"]) == 2
    assert "does not exist" in capsys.readouterr().err
    readme.write_text("no markers\n", encoding="utf-8")
    assert main(["report", "--results-dir", str(results_dir), "--readme", str(readme)]) == 2
    assert README_START in capsys.readouterr().err


def test_report_cli_subprocess(tmp_path: Path) -> None:
    write_run(tmp_path, make_record(PSPNET, 0.5186))
    proc = subprocess.run(
        [sys.executable, "-m", "loveda_utils", "report", "--results-dir", str(tmp_path),
         "--no-readme"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "| PSPNet | R-101 |" in proc.stdout and "51.86" in proc.stdout
    assert (tmp_path / "benchmark.md").is_file() and (tmp_path / "benchmark.csv").is_file()


# -- the rendered comparison -----------------------------------------------------------------------


@pytest.mark.slow
def test_render_comparison(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "loveda", splits=("Val",), n=2, size=32)
    results_dir = tmp_path / "results"
    write_runs_with_visuals(results_dir, tree)
    out = render_comparison(results_dir, data_root=tree, max_tiles=2)
    assert out == {
        "notebook": results_dir / "04_results_comparison.ipynb",
        "html": results_dir / "04_results_comparison.html",
    }
    nb = nbformat.read(out["notebook"], as_version=4)
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "| PSPNet" in markdown and "not LoveDA results" in markdown
    assert "one forward pass at 1x3x1024x1024" in markdown  # the footnote, from the records
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 5  # 4 charts + visuals
    html = out["html"].read_text(encoding="utf-8")
    assert html.count("data:image/png;base64") >= 4 and "DeepLabV3+" in html
    assert not list(results_dir.glob(".*.tmp*"))
    # A report: the code stays in the executed notebook, not on the page.
    code = "".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "load_records(" in code and "report_markdown(" in code
    for source in ("load_records(", "report_markdown(", "plt.show()", "results_dir = "):
        assert source not in html, source
    assert "In&nbsp;[" not in html  # no In [n]: prompts
    assert not re.findall(r'class="jp-(?:Input|Output)Prompt', html)
    # The contents list (the page's one <ol>; every heading's own anchor link aside) leads to
    # every part, and to nothing else.
    (contents,) = re.findall(r"<ol>(.*?)</ol>", html, flags=re.S)
    targets = re.findall(r'href="#([^"]+)"', contents)
    sections = re.findall(r'<h2 id="([^"]+)"', html)
    assert len(sections) >= 9 and targets == sections, set(sections) ^ set(targets)


def test_an_empty_results_dir_is_refused_not_read_as_the_projects(project: Path, capsys) -> None:
    """``report --results-dir ""`` rewrote the repository's own table and README section."""
    write_run(project / "results", make_record())
    readme = (project / "README.md").read_bytes()
    assert main(["report", "--results-dir", ""]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--results-dir is empty: pass a folder path" in err
    assert (project / "README.md").read_bytes() == readme
    assert not (project / "results" / "benchmark.md").exists()
