"""Print ``name==X`` for each ``name>=X`` in setup.py's install_requires that applies here.

CI installs the package once more with these as constraints, so the lowest versions that
setup.py allows are the ones proven to work.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement


def install_requires(setup_py: Path) -> list[str]:
    for node in ast.walk(ast.parse(setup_py.read_text())):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return [ast.literal_eval(item) for item in node.value.elts]  # type: ignore[attr-defined]
    raise SystemExit("no install_requires in setup.py")


def main() -> None:
    for text in install_requires(Path(sys.argv[1])):
        requirement = Requirement(text)
        if requirement.marker is not None and not Marker(str(requirement.marker)).evaluate():
            continue
        floors = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        if floors:
            sys.stdout.write(f"{requirement.name}=={floors[0]}\n")


if __name__ == "__main__":
    main()
