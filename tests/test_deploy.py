"""deploy/ against the code: the recipe examples validate, the Lambda image's build args, version refusal and
handler agree with polaragg.cloud and the installed Lithops, the option tables of deploy/README.md name real
options with their real defaults and keyword arguments, and the IAM policies are least-privilege.

Fast and offline: no docker, no network; the image's check steps run under this interpreter.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from polaragg import cloud
from polaragg.recipe import (
    CoiledOptions,
    CredentialsConfig,
    LambdaOptions,
    Recipe,
    RecipeError,
    load_recipe,
)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
README = DEPLOY / "README.md"
DOCKERFILE = DEPLOY / "lambda" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "lambda" / "Dockerfile.dockerignore"
CHECK_SCRIPT = DEPLOY / "lambda" / "check_runtime.py"
IAM = DEPLOY / "iam"
RECIPE_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))

# The placeholders every file in deploy/ shares (deploy/README.md replaces them with one sed).
ACCOUNT = "123456789012"
STORE_BUCKET = "my-polaragg-store"
STORE_PREFIX = "polaragg/"
LITHOPS_BUCKET = "my-lithops-scratch-us-west-2"
ROLE = "polaragg-lambda"


def readme() -> str:
    return README.read_text()


def fenced(text: str, lang: str) -> list[str]:
    """Bodies of the ```lang code blocks of a Markdown text."""
    return [m.group(1) for m in re.finditer(rf"^```{lang}\n(.*?)^```", text, re.DOTALL | re.MULTILINE)]


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Markdown tables as (header cells, rows of cells)."""
    found, lines = [], text.splitlines()
    i = 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and re.match(r"^\|[\s|:-]+\|$", lines[i + 1]):
            header = [c.strip() for c in lines[i].strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            found.append((header, rows))
        else:
            i += 1
    return found


def table_with(text: str, column: str) -> tuple[list[str], list[list[str]]]:
    matches = [t for t in tables(text) if column in t[0]]
    assert len(matches) == 1, f"expected one table with a column {column!r} in deploy/README.md"
    return matches[0]


def code(cell: str) -> str:
    """The text of a table cell written as `code`."""
    match = re.fullmatch(r"`([^`]*)`", cell)
    assert match, f"table cell {cell!r} should be one `code` span"
    return match.group(1)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comment lines dropped."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        pending += line
        word, _, rest = pending.partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def dockerfile_args() -> dict[str, str | None]:
    """Build args the Dockerfile declares, with their default (None: no default anywhere)."""
    args: dict[str, str | None] = {}
    for word, rest in dockerfile_instructions(DOCKERFILE.read_text()):
        if word == "ARG":
            name, eq, default = rest.partition("=")
            if eq:
                args[name] = default
            else:
                args.setdefault(name, None)
    return args


def load_check_module():
    spec = importlib.util.spec_from_file_location("polaragg_check_runtime", CHECK_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------
# Recipe examples
# ------------------------------------------------------------------------------------------------

BASE = {"name": "deploy-doc", "source": {"kind": "synthetic"}, "aoi": {"bbox": [70.0, -88.0, 110.0, -83.0]}}


def test_recipe_examples_exist_for_both_cloud_executors():
    names = {p.relative_to(DEPLOY).as_posix() for p in RECIPE_FILES}
    assert {"lambda/recipe.yaml", "coiled/recipe.yaml"} <= names


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_recipe_file_loads(path):
    recipe = load_recipe(path)
    folder = path.parent.name
    assert recipe.executor.name == folder
    assert recipe.output.store.startswith(f"s3://{STORE_BUCKET}/{STORE_PREFIX}")
    assert recipe.executor.work_dir.startswith(f"s3://{STORE_BUCKET}/{STORE_PREFIX}")
    assert recipe.credentials.granules.source == "earthdata"  # NSIDC's bucket takes nothing else
    assert recipe.source.kind == "cmr" and recipe.source.access == "direct" and recipe.reader == "h5coro"
    options = recipe.executor.aws_lambda if folder == "lambda" else recipe.executor.coiled
    assert options.region == "us-west-2"


def _key_paths(data, prefix=()):
    if isinstance(data, dict):
        for key, value in data.items():
            yield (*prefix, key)
            yield from _key_paths(value, (*prefix, key))


def _renamed(data, path, new_name):
    out = copy.deepcopy(data)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[new_name] = node.pop(path[-1])
    return out


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_key_of_a_recipe_example_is_validated(path):
    """A misspelled option anywhere in the example fails to load, naming where it is."""
    data = yaml.safe_load(path.read_text())
    load_recipe(data)
    paths = list(_key_paths(data))
    assert len(paths) > 30
    for key_path in paths:
        typo = f"{key_path[-1]}_typo"
        with pytest.raises(RecipeError) as info:
            load_recipe(_renamed(data, key_path, typo))
        assert typo in str(info.value) or key_path[-1] in str(info.value), key_path


@pytest.mark.parametrize(
    "path, value",
    [
        (("executor", "lambda", "architecture"), "aarch64"),
        (("executor", "lambda", "memory_mb"), 20480),
        (("executor", "lambda", "role_arn"), "polaragg-lambda"),
        (("credentials", "granules", "source"), "nasa"),
        (("credentials", "store", "workers_refresh"), True),  # earthdata only
    ],
)
def test_lambda_recipe_bad_values_are_refused(path, value):
    data = yaml.safe_load((DEPLOY / "lambda" / "recipe.yaml").read_text())
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(RecipeError, match=re.escape(".".join(path[:2]))):
        load_recipe(data)


def test_coiled_recipe_refuses_x86_vm_types_with_arm():
    data = yaml.safe_load((DEPLOY / "coiled" / "recipe.yaml").read_text())
    data["executor"]["coiled"]["worker_vm_types"] = ["m7i.xlarge"]
    with pytest.raises(RecipeError, match="worker_vm_types"):
        load_recipe(data)


def test_lambda_recipe_fits_the_function_and_the_credentials_outlive_a_task():
    recipe = load_recipe(DEPLOY / "lambda" / "recipe.yaml")
    lam = recipe.executor.aws_lambda
    assert lam.architecture == "arm64" and lam.role_arn == f"arn:aws:iam::{ACCOUNT}:role/{ROLE}"
    assert lam.storage_bucket == LITHOPS_BUCKET
    assert lam.memory_mb * 1_000_000 >= recipe.executor.memory_bytes  # lambda_preflight's rule
    granules = recipe.credentials.granules
    # Lambda workers cannot be pushed new credentials: a dispatched snapshot must last longer than one
    # task (timeout_s), and a margin over the ~1 h lifetime could never be met.
    assert granules.workers_refresh or lam.timeout_s < granules.refresh_margin_s < 3600
    assert recipe.credentials.store.source == "worker"  # the execution role writes the store


def test_coiled_recipe_uses_graviton_spot_vms():
    options = load_recipe(DEPLOY / "coiled" / "recipe.yaml").executor.coiled
    assert options.arm and options.spot_policy == "spot_with_fallback"
    vm_types = options.worker_vm_types + options.scheduler_vm_types
    assert all(re.match(r"^[a-z]+\d+g[a-z]*\.", vm) for vm in vm_types)


def test_readme_yaml_blocks_are_recipes_or_recipe_sections():
    blocks = fenced(readme(), "yaml")
    assert len(blocks) >= 3
    for block in blocks:
        data = yaml.safe_load(block)
        assert isinstance(data, dict)
        if {"name", "source", "aoi"} <= set(data):
            load_recipe(data)
        else:
            assert set(data) <= set(Recipe.model_fields), f"not a recipe section: {sorted(data)}"
            load_recipe({**BASE, **data})


def test_readme_executor_blocks_equal_the_recipe_files():
    sections = {}
    for block in fenced(readme(), "yaml"):
        data = yaml.safe_load(block)
        if set(data) == {"executor"}:
            sections[data["executor"]["name"]] = data["executor"]
    for name in ("lambda", "coiled"):
        file_executor = yaml.safe_load((DEPLOY / name / "recipe.yaml").read_text())["executor"]
        shown = sections[name]
        assert {k: v for k, v in file_executor.items() if k in shown} == shown, name
        assert shown[name] == file_executor[name]


def test_readme_mentions_only_files_that_exist():
    text = readme()
    for path in set(re.findall(r"deploy/[\w./-]+\w", text)):
        assert (ROOT / path).exists(), path
    for path in set(re.findall(r"(?<![\w/])((?:lambda|coiled|iam)/[\w.-]+\.(?:json|yaml|py|txt))", text)):
        assert (DEPLOY / path).exists(), path
    for name in set(re.findall(r"file://iam/([\w.-]+\.json)", text)):
        assert (IAM / name).exists(), name


def test_readme_names_the_check_command():
    assert "polaragg check RECIPE" in readme()
    from polaragg.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert "check" in commands
    assert "recipe" in [a.dest for a in commands["check"]._actions]


# ------------------------------------------------------------------------------------------------
# Option tables of deploy/README.md
# ------------------------------------------------------------------------------------------------


def _default(model, name):
    field = model.model_fields[name]
    return field.get_default(call_default_factory=True)


def test_credentials_table_names_every_option_with_its_default():
    header, rows = table_with(readme(), "meaning")
    assert header[:2] == ["option", "default"]
    documented = {code(r[0]): yaml.safe_load(code(r[1])) for r in rows}
    assert set(documented) == set(CredentialsConfig.model_fields)
    for name, default in documented.items():
        assert default == _default(CredentialsConfig, name), name


def test_lambda_table_names_every_option_its_default_and_lithops_key():
    header, rows = table_with(readme(), "Lithops config key")
    assert header[:3] == ["option", "default", "Lithops config key"]
    assert {code(r[0]) for r in rows} == set(LambdaOptions.model_fields)
    options = LambdaOptions(architecture="x86_64", memory_mb=3008, timeout_s=600, region="us-east-2",
                            runtime="x:y", max_workers=7,
                            storage_bucket="bucket-b", role_arn="arn:aws:iam::210987654321:role/r")
    config = cloud.lithops_config(options)
    for row in rows:
        name = code(row[0])
        assert yaml.safe_load(code(row[1])) == _default(LambdaOptions, name), name
        section, _, key = code(row[2]).partition(".")
        assert config[section][key] == getattr(options, name), row[2]


def _kwarg_cell(cell: str) -> str | None:
    return None if cell == "-" else code(cell)


def test_coiled_table_matches_option_defaults_and_coiled_keyword_arguments():
    header, rows = table_with(readme(), "`coiled.Cluster`")
    assert header[:4] == ["option", "default", "`coiled.Cluster`", "`coiled.function`"]
    assert {code(r[0]) for r in rows} == set(CoiledOptions.model_fields)
    options = CoiledOptions(mode="functions", n_workers=7, worker_vm_types=["m7g.xlarge", "m6g.xlarge"],
                            scheduler_vm_types=["m7g.large"], spot_policy="spot", arm=True,
                            region="eu-west-1",
                            name="named", idle_timeout="7 minutes", software="env-x")
    cluster = cloud.coiled_cluster_kwargs(options)
    function = cloud.coiled_function_kwargs(options)
    documented_cluster, documented_function = set(), set()
    for row in rows:
        name = code(row[0])
        assert yaml.safe_load(code(row[1])) == _default(CoiledOptions, name), name
        value = getattr(options, name)
        columns = ((row[2], cluster, documented_cluster), (row[3], function, documented_function))
        for cell, kwargs, documented in columns:
            kwarg = _kwarg_cell(cell)
            if kwarg is None:
                continue
            documented.add(kwarg)
            assert kwargs[kwarg] == (list(value) if isinstance(value, list) else value), (name, kwarg)
    assert documented_cluster == set(cluster)
    assert documented_function == set(function)  # `environ` appears only when credentials are given


def test_documented_coiled_keyword_arguments_exist_in_the_installed_coiled():
    coiled = pytest.importorskip("coiled")
    _, rows = table_with(readme(), "`coiled.Cluster`")
    cluster_params = inspect.signature(coiled.Cluster.__init__).parameters
    function_params = inspect.signature(coiled.function).parameters
    for row in rows:
        for cell, params in ((row[2], cluster_params), (row[3], function_params)):
            kwarg = _kwarg_cell(cell)
            assert kwarg is None or kwarg in params, kwarg


def test_readme_lithops_config_snippet_writes_the_recipe_config(tmp_path):
    snippet = re.search(r"python - <<'PY' > lithops\.yaml\n(.*?)\nPY\n", readme(), re.DOTALL)
    assert snippet
    done = subprocess.run([sys.executable, "-c", snippet.group(1)], cwd=ROOT, capture_output=True, text=True,
                          check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    written = yaml.safe_load(done.stdout)
    expected = cloud.lithops_config(load_recipe(DEPLOY / "lambda" / "recipe.yaml").executor.aws_lambda)
    assert written == json.loads(json.dumps(expected))
    assert written["lithops"]["backend"] == "aws_lambda" and written["aws_lambda"]["architecture"] == "arm64"
    assert written["aws_lambda"]["execution_role"] == f"arn:aws:iam::{ACCOUNT}:role/{ROLE}"


# ------------------------------------------------------------------------------------------------
# The Lambda runtime image
# ------------------------------------------------------------------------------------------------


def test_dockerfile_builds_on_the_lambda_base_image_for_the_python_build_arg():
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    assert instructions[0] == ("ARG", "PYTHON_VERSION=3.12")  # global: only FROM sees it
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert froms == ["public.ecr.aws/lambda/python:${PYTHON_VERSION}"]
    stage = instructions[instructions.index(("FROM", froms[0])):]
    after_from = [rest for word, rest in stage if word == "ARG"]
    assert {"PYTHON_VERSION", "CLIENT_PYTHON"} <= {a.partition("=")[0] for a in after_from}


def test_dockerfile_build_args_are_runtime_build_args_plus_the_required_client_python():
    args = dockerfile_args()
    build_args = cloud.runtime_build_args()
    with_default = {name for name, default in args.items() if default is not None}
    required = {name for name, default in args.items() if default is None}
    assert with_default == set(build_args)
    assert required == {"CLIENT_PYTHON"}
    assert args["LITHOPS_VERSION"] == build_args["LITHOPS_VERSION"]  # the pin follows the client's Lithops
    check = load_check_module()
    assert check.parse_minor(args["PYTHON_VERSION"], "PYTHON_VERSION") >= check.OLDEST_SERVABLE


def test_readme_build_arg_table_is_the_dockerfile():
    _, rows = table_with(readme(), "build arg")
    args = dockerfile_args()
    documented = {code(r[0]): r[1] for r in rows}
    assert set(documented) == set(args)
    for name, default in args.items():
        assert documented[name] == ("(required)" if default is None else f"`{default}`"), name


def test_every_docker_build_command_passes_every_build_arg():
    declared = set(dockerfile_args())
    texts = [readme(), DOCKERFILE.read_text()]
    mentioned = {m for t in texts for m in re.findall(r"--build-arg (\w+)=", t)}
    assert mentioned == declared
    header = [line.lstrip("# ") for line in DOCKERFILE.read_text().splitlines() if line.startswith("#")]
    example = " ".join(line.rstrip("\\ ") for line in header
                       if "--build-arg" in line or "docker buildx" in line)
    assert set(re.findall(r"--build-arg (\w+)=", example)) == declared
    commands = [line for block in fenced(readme(), "bash") for line in block.replace("\\\n", " ").splitlines()
                if line.startswith(("docker buildx build", "lithops runtime build"))]
    assert len(commands) == 2
    for command in commands:
        assert "$BUILD_ARGS" in command and "--provenance=false" in command, command
        assert "-f deploy/lambda/Dockerfile" in command
        if command.startswith("docker buildx"):
            assert "--platform linux/arm64" in command


def test_readme_build_args_snippet_gives_every_dockerfile_arg(tmp_path):
    snippet = re.search(r"BUILD_ARGS=\$\(python - <<'PY'\n(.*?)\nPY\n\)", readme(), re.DOTALL)
    assert snippet
    done = subprocess.run([sys.executable, "-c", snippet.group(1)], capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    given = dict(re.findall(r"--build-arg (\w+)=(\S+)", done.stdout))
    assert set(given) == set(dockerfile_args())
    here = "{}.{}".format(*sys.version_info[:2])
    assert given["PYTHON_VERSION"] == given["CLIENT_PYTHON"] == here
    assert given["LITHOPS_VERSION"] == cloud.runtime_build_args()["LITHOPS_VERSION"]


def test_dockerfile_handler_is_the_installed_lithops_lambda_handler():
    cmds = [rest for word, rest in dockerfile_instructions(DOCKERFILE.read_text()) if word == "CMD"]
    assert len(cmds) == 1
    (handler,) = json.loads(cmds[0])
    assert handler == load_check_module().HANDLER
    module_name, _, function = handler.rpartition(".")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, function))
    assert inspect.signature(getattr(module, function)).parameters.keys() == {"event", "context"}
    # The same file Lithops uploads as `entry_point.py` for its zip runtime
    # (Handler=entry_point.lambda_handler).
    backend = importlib.import_module("lithops.serverless.backends.aws_lambda.aws_lambda")
    assert Path(module.__file__).parent == Path(backend.__file__).parent
    assert "Handler='entry_point.lambda_handler'" in Path(backend.__file__).read_text()


def test_dockerfile_checks_the_python_before_installing_anything():
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    runs = [(i, rest) for i, (word, rest) in enumerate(instructions) if word == "RUN"]
    first_index, first = runs[0]
    assert "check_runtime.py python" in first and "pip" not in first
    copies = [i for i, (word, rest) in enumerate(instructions)
              if word == "COPY" and "check_runtime.py" in rest]
    assert copies and copies[0] < first_index
    installs = [rest for _, rest in runs if "pip install" in rest]
    assert installs and all("check_runtime.py lithops" in rest for rest in installs)


def test_dockerignore_lets_every_copied_file_in():
    rules = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    assert "*" in rules
    for word, rest in dockerfile_instructions(DOCKERFILE.read_text()):
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _ = rest.split()
            for source in sources:
                assert f"!{source}" in rules or f"!{source}/" in rules, source


def _run_step(tmp_path, fragment: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the Dockerfile's command containing `fragment` with `sh`, python3 being this interpreter."""
    runs = [rest for word, rest in dockerfile_instructions(DOCKERFILE.read_text()) if word == "RUN"]
    parts = [part.strip() for rest in runs for part in rest.split("&&") if fragment in part]
    assert parts, f"no RUN step runs {fragment!r}"
    command = parts[0]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "python3"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    (tmp_path / "check_runtime.py").write_text(CHECK_SCRIPT.read_text())  # the COPY into WORKDIR
    full_env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", **env}
    return subprocess.run(["sh", "-c", command], cwd=tmp_path, env=full_env, capture_output=True, text=True,
                          check=False, timeout=120)


def test_python_check_step_accepts_only_the_image_python(tmp_path):
    here = "{}.{}".format(*sys.version_info[:2])
    other = f"{sys.version_info[0]}.{sys.version_info[1] + 1}"
    base = {"PYTHON_VERSION": here}

    done = _run_step(tmp_path, "check_runtime.py python", {**base, "CLIENT_PYTHON": here})
    if sys.version_info[:2] >= (3, 12):
        assert done.returncode == 0, done.stderr
        assert "matches the client" in done.stdout
    else:  # this interpreter's version is one the Lambda base image cannot serve polaragg with
        assert done.returncode == 1
        assert "Amazon Linux 2 (glibc 2.26)" in done.stderr and "3.12 or newer" in done.stderr

    done = _run_step(tmp_path, "check_runtime.py python", {**base, "CLIENT_PYTHON": other})
    assert done.returncode == 1
    assert f"this image has Python {here}" in done.stderr
    assert f"rebuild with --build-arg PYTHON_VERSION={other}" in done.stderr

    done = _run_step(tmp_path, "check_runtime.py python", base)  # CLIENT_PYTHON not passed
    assert done.returncode == 1 and "CLIENT_PYTHON is required" in done.stderr

    done = _run_step(tmp_path, "check_runtime.py python", {**base, "CLIENT_PYTHON": "3"})
    assert done.returncode == 1 and "MAJOR.MINOR" in done.stderr


def test_python_check_logic_for_other_image_versions():
    check = load_check_module()
    assert "matches" in check.check_python("3.12", have=(3, 12))
    assert "matches" in check.check_python("3.13", have=(3, 13), base_tag="3.13")
    with pytest.raises(check.Refusal, match="client runs Python 3.13"):
        check.check_python("3.13", have=(3, 12), base_tag="3.12")
    with pytest.raises(check.Refusal, match="Amazon Linux 2"):
        check.check_python("3.11", have=(3, 11))


def test_lithops_check_step_compares_the_installed_lithops(tmp_path):
    installed = cloud.runtime_build_args()["LITHOPS_VERSION"]
    done = _run_step(tmp_path, "check_runtime.py lithops", {"LITHOPS_VERSION": installed})
    assert done.returncode == 0, done.stderr
    assert load_check_module().HANDLER in done.stdout
    done = _run_step(tmp_path, "check_runtime.py lithops", {"LITHOPS_VERSION": "0.0.1"})
    assert done.returncode == 1 and f"has Lithops {installed}" in done.stderr


# ------------------------------------------------------------------------------------------------
# IAM policies
# ------------------------------------------------------------------------------------------------

POLICY_FILES = sorted(IAM.glob("*.json"))
STAR_ONLY_ACTIONS = {"lambda:ListFunctions", "lambda:ListLayers", "ecr:GetAuthorizationToken"}


def _statements(path):
    policy = json.loads(path.read_text())
    assert policy["Version"] == "2012-10-17"
    return policy["Statement"]


def _listed(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def test_policy_files_exist():
    assert {p.name for p in POLICY_FILES} == {
        "lambda-trust-policy.json", "lambda-execution-policy.json", "store-access-policy.json",
        "client-run-policy.json", "client-deploy-policy.json",
    }


@pytest.mark.parametrize("path", POLICY_FILES, ids=lambda p: p.name)
def test_policy_is_least_privilege(path):
    statements = _statements(path)
    sids = [s["Sid"] for s in statements]
    assert len(set(sids)) == len(sids)
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert "NotAction" not in statement and "NotResource" not in statement
        actions = _listed(statement["Action"])
        for action in actions:
            _, _, name = action.partition(":")
            assert name and "*" not in name, f"{path.name}: wildcard action {action}"
        if "Principal" in statement:  # the trust policy
            assert statement["Principal"] == {"Service": "lambda.amazonaws.com"}
            assert actions == ["sts:AssumeRole"]
            continue
        resources = _listed(statement["Resource"])
        if "*" in resources:
            assert resources == ["*"] and set(actions) <= STAR_ONLY_ACTIONS, statement["Sid"]
        for resource in resources:
            assert "nsidc" not in resource.lower()  # Earthdata credentials, not these policies, read NSIDC
        if any(a.startswith("s3:") for a in actions):
            assert all(a.startswith("s3:") for a in actions)
            for resource in resources:
                bucket = resource.removeprefix("arn:aws:s3:::").split("/")[0]
                assert bucket in (STORE_BUCKET, LITHOPS_BUCKET), resource
                if bucket == STORE_BUCKET and "/" in resource:
                    assert resource == f"arn:aws:s3:::{STORE_BUCKET}/{STORE_PREFIX}*"
            if "s3:ListBucket" in actions and resources == [f"arn:aws:s3:::{STORE_BUCKET}"]:
                prefixes = statement["Condition"]["StringLike"]["s3:prefix"]
                assert all(p.startswith(STORE_PREFIX.rstrip("/")) for p in prefixes)


def _resources_for(path, action):
    return [r for s in _statements(path) if action in _listed(s["Action"]) for r in _listed(s["Resource"])]


def test_policies_name_what_lithops_creates():
    """The function, log group and repository patterns match Lithops 3.x's own names."""
    from lithops.serverless.backends.aws_lambda.aws_lambda import AWSLambdaBackend

    recipe = load_recipe(DEPLOY / "lambda" / "recipe.yaml")
    lam = recipe.executor.aws_lambda
    fake = SimpleNamespace(user_key="abcd", namespace=None)
    function = AWSLambdaBackend._format_function_name(fake, lam.runtime, lam.memory_mb)
    function_arn = f"arn:aws:lambda:{lam.region}:{ACCOUNT}:function:{function}"
    for name, action in (("client-run-policy.json", "lambda:InvokeFunction"),
                         ("client-deploy-policy.json", "lambda:CreateFunction")):
        assert any(fnmatch.fnmatchcase(function_arn, r) for r in _resources_for(IAM / name, action)), name
    log_stream = f"arn:aws:logs:{lam.region}:{ACCOUNT}:log-group:/aws/lambda/{function}:log-stream:x"
    assert any(fnmatch.fnmatchcase(log_stream, r)
               for r in _resources_for(IAM / "lambda-execution-policy.json", "logs:PutLogEvents"))

    uri = cloud.lithops_image_uri(lam.runtime, account_id=ACCOUNT, user_id="AIDAEXAMPLEABCD",
                                  region=lam.region)
    repository = uri.split("/", 1)[1].rpartition(":")[0]
    repository_arn = f"arn:aws:ecr:{lam.region}:{ACCOUNT}:repository/{repository}"
    assert any(fnmatch.fnmatchcase(repository_arn, r)
               for r in _resources_for(IAM / "client-deploy-policy.json", "ecr:PutImage"))

    pass_role = _resources_for(IAM / "client-deploy-policy.json", "iam:PassRole")
    assert pass_role == [lam.role_arn]


def test_execution_role_and_lifecycle_cover_lithops_job_objects():
    from lithops.constants import JOBS_PREFIX

    objects = _resources_for(IAM / "lambda-execution-policy.json", "s3:GetObject")
    assert objects == [f"arn:aws:s3:::{LITHOPS_BUCKET}/{JOBS_PREFIX}/*"]
    # every worker checks its bucket with HeadBucket, which needs s3:ListBucket on the bucket, unconditioned
    probe = [s for s in _statements(IAM / "lambda-execution-policy.json")
             if "s3:ListBucket" in _listed(s["Action"])]
    assert probe and all("Condition" not in s for s in probe)
    lifecycle = json.loads((DEPLOY / "lambda" / "lithops-bucket-lifecycle.json").read_text())
    assert [r["Filter"]["Prefix"] for r in lifecycle["Rules"]] == [f"{JOBS_PREFIX}/"]


def test_readme_sed_replaces_every_placeholder():
    text = readme()
    sed = re.search(r"for f in deploy/iam/\*\.json; do\n(.*?)\ndone", text, re.DOTALL).group(1)
    for placeholder in (ACCOUNT, STORE_BUCKET, LITHOPS_BUCKET):
        assert f"s/{placeholder}/" in sed
    placeholders = set()
    for path in POLICY_FILES:
        placeholders |= set(re.findall(r"\d{12}", path.read_text()))
    assert placeholders == {ACCOUNT}


def test_quota_code_is_lambda_concurrent_executions():
    codes = set(re.findall(r"L-[0-9A-F]{8}", readme() + (DEPLOY / "lambda" / "recipe.yaml").read_text()))
    assert codes == {"L-B99A9384"}
    assert "--service-code lambda --quota-code L-B99A9384" in readme()
