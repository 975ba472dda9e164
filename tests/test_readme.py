"""README.md cannot drift from the code: its offline command runs as written; "Use a method in your own code" holds
one Python block per script, which that script's API test runs verbatim in an empty folder holding only the script
and common.py, as a user who copied them would (conftest.readme_block); every relative link in README.md and
benchmarks/README.md points to a file that exists. Commands a user copies name no path outside the repository."""
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READMES = [os.path.join(REPO, "README.md"), os.path.join(REPO, "benchmarks", "README.md")]


def text(path):
    with open(path) as f:
        return f.read()


def blocks(source, lang):
    return re.findall(rf"```{lang}\n(.*?)```", source, re.S)


def python_blocks():
    section = text(READMES[0]).split("## Use a method in your own code", 1)[1].split("\n## ", 1)[0]
    return blocks(section, "python")


def test_the_section_has_one_block_per_script():
    imported = [re.search(r"^import (toll|lis_ae|cance|itad|csi_gen)$", b, re.M).group(1) for b in python_blocks()]
    assert imported == ["toll", "lis_ae", "cance", "itad", "csi_gen"]


def test_the_offline_check_runs_as_written(tmp_path):
    lines = [ln for b in blocks(text(READMES[0]), "bash") for ln in b.splitlines() if "--dataset digits" in ln]
    assert lines, "README shows no offline (digits) command"
    for line in lines:
        cmd = line.split()
        p = subprocess.run([sys.executable if cmd[0] == "python" else cmd[0], *cmd[1:]], cwd=REPO, capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, OMP_NUM_THREADS="1", AD_OFFLINE="1"))
        assert p.returncode == 0, p.stderr[-3000:]
        assert p.stdout.strip().splitlines()[-1].startswith("RESULT method=")


@pytest.mark.parametrize("readme", READMES, ids=["README", "benchmarks/README"])
def test_relative_links_point_to_files_that_exist(readme):
    links = re.findall(r"\]\(([^)#\s]+)\)", text(readme))
    relative = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert relative
    missing = [link for link in relative if not os.path.exists(os.path.join(os.path.dirname(readme), link))]
    assert not missing, missing


@pytest.mark.parametrize("readme", READMES, ids=["README", "benchmarks/README"])
def test_no_path_outside_the_repository(readme):
    assert "../shared" not in text(readme)
