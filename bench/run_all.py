"""Every benchmark in one command: the scheduling study, the real-broker run, the micro-benchmarks.

Writes the JSON reports and PNG plots into ``--out`` (default ``results/``), then,
with ``--readme``, regenerates the README's performance section and the tables of
docs/benchmarks.md (the text between their ``<!-- bench:begin -->`` /
``<!-- bench:end -->`` markers) from those reports, and copies the plots to docs/img/.

Run: ``.venv/bin/python bench/run_all.py [--quick] [--out results] [--slurm] [--readme]``
     ``.venv/bin/python bench/run_all.py --readme-only``  (tables from the existing reports)
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from qhpc.cli import main as qhpc
from qhpc.study.tables import docs_section, readme_section, replace_between_markers

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str]) -> None:
    try:
        qhpc(args)
    except SystemExit as exc:
        if exc.code:
            raise


def write_docs(results: Path) -> None:
    readme = ROOT / "README.md"
    readme.write_text(replace_between_markers(readme.read_text(), readme_section(results)))
    print(f"updated {readme}")
    docs = ROOT / "docs" / "benchmarks.md"
    docs.write_text(replace_between_markers(docs.read_text(), docs_section(results)))
    print(f"updated {docs}")
    images = ROOT / "docs" / "img"
    images.mkdir(exist_ok=True)
    for png in sorted(results.glob("*.png")):
        shutil.copy(png, images / png.name)
    print(f"copied the plots to {images}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small runs (CI smoke test)")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="results folder")
    parser.add_argument("--micro-only", action="store_true", help="only the micro-benchmarks")
    parser.add_argument("--study-only", action="store_true", help="only the simulated study")
    parser.add_argument("--skip-real", action="store_true", help="skip the real-broker run")
    parser.add_argument(
        "--slurm",
        action="store_true",
        help="also the real run through Slurm (root, scripts/slurm.sh)",
    )
    parser.add_argument("--readme", action="store_true", help="then regenerate README and docs")
    parser.add_argument("--readme-only", action="store_true", help="only regenerate them")
    args = parser.parse_args()
    common = [*(["--quick"] if args.quick else []), "--out", str(args.out)]
    bench_dir = ["--bench-dir", str(ROOT / "bench")]
    if not args.readme_only:
        if not args.micro_only:
            run(["bench", "study", *common])
            if not (args.study_only or args.skip_real):
                run(["bench", "real", *common, *bench_dir])
                if args.slurm:
                    run(["bench", "real", "--slurm", *common, *bench_dir])
        if not args.study_only:
            run(["bench", "micro", *common, *bench_dir])
    if args.readme or args.readme_only:
        write_docs(args.out)


if __name__ == "__main__":
    main()
