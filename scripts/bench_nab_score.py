#!/usr/bin/env python
"""Score the output of ``streamad benchmark nab`` with NAB's own scorer.

NAB's code is not part of this project. Check out numenta/NAB yourself and install its
dependencies into a separate environment; pass that environment's interpreter with
``--python``. NAB's ``nab/labeler.py`` writes into ``Series.values``, which pandas 3.1.1
returns read-only, so NAB fails there. pandas 1.5.3 with numpy 1.26 works.

The script leaves the checkout untouched. In a scratch folder it

1. runs NAB's ``null`` detector on the files of the label table (the baseline that
   ``--normalize`` subtracts),
2. copies every detector folder of the streamad results folder next to it,
3. runs ``run.py -d null,<detectors> --optimize --score --normalize`` with the given label
   table and a copy of NAB's ``config/thresholds.json``,

and writes NAB's normalized scores, per detector and profile, to
``<results>/nab_scores.json``. A label table of a subset of NAB's files restricts both
the null baseline and the perfect score to that subset. The result is then not
comparable with NAB's published scoreboard, which covers all 58 files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nab", required=True, type=Path, help="a numenta/NAB checkout (contains run.py, data/, config/)")
    parser.add_argument("--results", required=True, type=Path, help="the --out folder of 'streamad benchmark nab'")
    parser.add_argument("--labels", type=Path, help="label windows to score against (default: NAB's labels/combined_windows.json)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with NAB's dependencies (default: this one)")
    parser.add_argument("--work", type=Path, help="scratch folder for NAB's results tree (default: a new temporary folder)")
    parser.add_argument("--cpus", type=int, default=1, help="worker processes for NAB's scorer (default 1)")
    return parser.parse_args(argv)


def detector_folders(results: Path) -> list[Path]:
    """Return the detector folders of a streamad results folder: those with a <category>/<file>.csv tree."""
    return sorted(path for path in results.iterdir() if path.is_dir() and any(path.glob("*/*.csv")))


def run_nab(args: argparse.Namespace, work: Path, labels: Path, thresholds: Path, detectors: list[str], steps: list[str]) -> None:
    command = [
        args.python,
        "run.py",
        "--skipConfirmation",
        "-d",
        ",".join(detectors),
        *steps,
        "--windowsFile",
        str(labels),
        "--resultsDir",
        str(work),
        "--thresholdsFile",
        str(thresholds),
        "-n",
        str(args.cpus),
    ]
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, cwd=args.nab, check=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nab = args.nab.resolve()
    if not (nab / "run.py").is_file():
        sys.exit(f"{nab} has no run.py; pass a checkout of numenta/NAB with --nab")
    labels = (args.labels or nab / "labels" / "combined_windows.json").resolve()
    results = args.results.resolve()
    folders = detector_folders(results)
    if not folders:
        sys.exit(f"{results} contains no detector folder with <category>/<file>.csv results; run 'streamad benchmark nab' first")

    work = (args.work or Path(tempfile.mkdtemp(prefix="nab-results-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    thresholds = work / "thresholds.json"
    shutil.copyfile(nab / "config" / "thresholds.json", thresholds)

    run_nab(args, work, labels, thresholds, ["null"], ["--detect"])
    for folder in folders:
        target = work / folder.name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(folder, target)
    detectors = [folder.name for folder in folders]
    run_nab(args, work, labels, thresholds, ["null", *detectors], ["--optimize", "--score", "--normalize"])

    final = json.loads((work / "final_results.json").read_text())
    scores = {name: final[name] for name in detectors if name in final}
    document = {"nab": str(nab), "labels": str(labels), "label_files": len(json.loads(labels.read_text())), "scores": scores}
    (results / "nab_scores.json").write_text(json.dumps(document, indent=2) + "\n")
    for name, profiles in scores.items():
        print(name + ": " + ", ".join(f"{profile} {value:.2f}" for profile, value in sorted(profiles.items())))
    print(f"NAB's results tree: {work}; scores written to {results / 'nab_scores.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
