"""src/exit_codes.py is the one definition: the stages, the shell script and the README agree with it."""

import re
import subprocess
from pathlib import Path

from src.exit_codes import STAGE_FAILURE, SUMMARY, ExitCode, shell_assignments

ROOT = Path(__file__).resolve().parents[1]


def test_every_stage_of_dvc_yaml_has_its_failure_code():
    stages = re.findall(r"^  ([a-z_]+):\n    cmd:", (ROOT / "dvc.yaml").read_text(), flags=re.M)
    assert stages and set(stages) <= set(STAGE_FAILURE)


def test_the_shell_reads_every_code_from_python():
    script = (f"eval \"$(cd {ROOT} && python -m src.exit_codes)\"; "
              "echo $EXIT_OK $EXIT_PREREQUISITES $EXIT_VALIDATION $STAGE_EXIT_tokenize $STAGE_EXIT_bundle; "
              "echo \"$EXIT_CODES_SUMMARY\"")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["0 1 5 3 4", SUMMARY]
    assert len(shell_assignments().splitlines()) == len(ExitCode) + len(STAGE_FAILURE) + 1


def test_the_summary_and_the_readme_state_the_codes():
    stated = [int(code) for code in re.findall(r"(\d) [a-z]", SUMMARY)]
    assert stated == [code.value for code in ExitCode if code.value < 128]
    assert SUMMARY in (ROOT / "README.md").read_text().replace("\n", " ")


def test_the_script_defines_no_code_of_its_own():
    script = (ROOT / "scripts" / "train_pipeline.sh").read_text()
    assert not re.search(r"\bEXIT_[A-Z]+=\d", script)
