"""Print the third-party requirements of waitroom with the given extras, from pyproject.toml alone.

The image's builder stage installs these in a layer of their own, before copying the source, so a
change to the code rebuilds only the (small) layer of waitroom itself. Extras that name waitroom's
own extras (``waitroom[platform]``) are followed.

    python3 images/requirements.py pyproject.toml ticketing,reaper,stats,notifier,telemetry
"""

import re
import sys
import tomllib


def requirements(project: dict, extras: list[str]) -> list[str]:
    name = project["name"]
    optional = project.get("optional-dependencies", {})
    found = list(project.get("dependencies", []))
    seen: set[str] = set()
    todo = list(extras)
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra {extra!r}")
        seen.add(extra)
        for requirement in optional[extra]:
            own = re.fullmatch(rf"{re.escape(name)}\s*\[([^\]]*)\]", requirement.strip())
            if own:
                todo.extend(part.strip() for part in own.group(1).split(","))
            elif requirement not in found:
                found.append(requirement)
    return found


def main() -> None:
    path, extras = sys.argv[1], sys.argv[2]
    with open(path, "rb") as file:
        project = tomllib.load(file)["project"]
    for requirement in requirements(project, [e for e in extras.split(",") if e]):
        print(requirement)  # noqa: T201


if __name__ == "__main__":
    main()
