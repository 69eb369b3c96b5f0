"""README.md opens with the two commands that must stay true; CI runs the second."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def first_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_main_command_is_the_demo_sweep_and_its_space_exists():
    main, _ = first_commands()
    assert main.startswith("pip install -e . && undial sweep search_spaces/demo.yaml")
    assert (ROOT / "search_spaces" / "demo.yaml").is_file()


def test_ci_runs_the_readme_test_command():
    _, tests = first_commands()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines
