"""Build-time checks of the Lambda runtime image (run by deploy/lambda/Dockerfile; standard library only).

    python3 check_runtime.py python CLIENT_PYTHON [BASE_TAG]
        refuses (exit 1, one message) unless this interpreter's major.minor is CLIENT_PYTHON, the Python
        of the client that will submit the runs, and that version is one the Lambda base image can
        serve polaragg with (3.12 or newer);
    python3 check_runtime.py lithops LITHOPS_VERSION
        refuses unless the installed Lithops is LITHOPS_VERSION and the handler named in the image's CMD
        (HANDLER below) imports and is callable.

Lithops itself refuses, at the first invocation, a runtime whose Python minor version or Lithops version
differs from the client's; these checks move that refusal to `docker build`, before anything is pushed.
tests/test_deploy.py runs this file and the Dockerfile's command lines with this repository's interpreter.
"""

from __future__ import annotations

import importlib
import re
import sys

# The module.function the Lambda runtime interface client calls (the image's CMD). Lithops 3.x ships it in
# its aws_lambda backend; `lithops runtime deploy` creates container functions without overriding CMD.
HANDLER = "lithops.serverless.backends.aws_lambda.entry_point.lambda_handler"

# Lambda's Python 3.11 base image is Amazon Linux 2 (glibc 2.26). numpy >= 2.4, h5py >= 3.16, pyarrow >= 26
# and pyproj >= 3.7.2 (polaragg's minimum versions) publish no wheels for a glibc that old, and the image has
# no compiler, so pip cannot install polaragg there. 3.12 and later are Amazon Linux 2023 (glibc 2.34).
OLDEST_SERVABLE = (3, 12)

_VERSION = re.compile(r"^(\d+)\.(\d+)$")


class Refusal(Exception):
    """A build that must stop; the message says why and what to pass instead."""


def parse_minor(text: str, name: str) -> tuple[int, int]:
    match = _VERSION.match(text.strip())
    if not match:
        raise Refusal(f"build arg {name}={text.strip()!r} is not a Python version of the form MAJOR.MINOR "
                      "(e.g. 3.12)")
    return int(match.group(1)), int(match.group(2))


def check_python(client: str, have: tuple[int, int] | None = None, base_tag: str = "") -> str:
    """The image's Python against the client's; returns a one-line confirmation or raises Refusal."""
    have = tuple(sys.version_info[:2]) if have is None else tuple(have)
    shown = f"{have[0]}.{have[1]}"
    base = f"public.ecr.aws/lambda/python:{base_tag}" if base_tag else "the base image"
    if not client.strip():
        raise Refusal(
            "build arg CLIENT_PYTHON is required: the MAJOR.MINOR Python version of the environment that "
            "will submit the runs, e.g. --build-arg CLIENT_PYTHON=$(python -c 'import sys; "
            "print(\"%d.%d\" % sys.version_info[:2])'), and PYTHON_VERSION to the same value"
        )
    want = parse_minor(client, "CLIENT_PYTHON")
    if want != have:
        raise Refusal(
            f"this image has Python {shown} ({base}) but the client runs Python {want[0]}.{want[1]}; Lithops "
            f"refuses a runtime whose Python minor version differs from the client's: rebuild with "
            f"--build-arg PYTHON_VERSION={want[0]}.{want[1]}"
        )
    if have < OLDEST_SERVABLE:
        raise Refusal(
            f"Python {shown}: the Lambda base image for it is Amazon Linux 2 (glibc 2.26), for which "
            "polaragg's dependencies (numpy>=2.4, h5py>=3.16, pyarrow>=26, pyproj>=3.7.2) publish no wheels; "
            "submit Lambda runs from a Python 3.12 or newer environment and build with that version"
        )
    return f"Python {shown} matches the client (CLIENT_PYTHON={client.strip()})"


def check_lithops(expected: str) -> str:
    """The installed Lithops against LITHOPS_VERSION, and the CMD handler importable and callable."""
    if not expected.strip():
        raise Refusal("build arg LITHOPS_VERSION is empty: pass the client's Lithops version "
                      "(polaragg.cloud.runtime_build_args())")
    try:
        from lithops.version import __version__ as installed
    except ImportError as exc:
        raise Refusal(f"Lithops is not installed in the image ({exc})") from None
    if installed != expected.strip():
        raise Refusal(f"the image has Lithops {installed} but LITHOPS_VERSION is {expected.strip()}; Lithops "
                      "refuses a runtime whose version differs from the client's")
    module_name, _, function = HANDLER.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure means the functions could not start
        problem = f"{type(exc).__name__}: {exc}"
        raise Refusal(f"the Lambda handler module {module_name} does not import: {problem}") from None
    if not callable(getattr(module, function, None)):
        raise Refusal(f"{module_name} has no callable {function}: the image's CMD would not start")
    return f"Lithops {installed}, handler {HANDLER}"


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("python", "lithops"):
        print("usage: check_runtime.py python CLIENT_PYTHON [BASE_TAG] | lithops LITHOPS_VERSION",
              file=sys.stderr)
        return 2
    try:
        if argv[0] == "python":
            message = check_python(argv[1], base_tag=argv[2] if len(argv) > 2 else "")
        else:
            message = check_lithops(argv[1])
    except Refusal as exc:
        print(f"polaragg runtime image: refusing to build: {exc}", file=sys.stderr)
        return 1
    print(f"polaragg runtime image: {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
