"""Generate, drift-check and lint the stepline.v1 protobuf contracts.

The .proto files under ``proto/`` are the source of truth; the Python code under
``libs/proto/src/stepline/v1`` is generated from them and committed. Subcommands:

    uv run python scripts/proto.py generate   # regenerate the committed code
    uv run python scripts/proto.py check      # exit 1 if it drifts from the .proto files; + lint
    uv run python scripts/proto.py lint       # buf lint (STANDARD rules, proto/buf.yaml)
    uv run python scripts/proto.py breaking   # buf breaking against the main branch

Generation uses ``grpc_tools.protoc`` and ``mypy-protobuf`` pinned in uv.lock, so the output is
deterministic: ``*_pb2.py`` + ``*_pb2.pyi`` for every file, ``*_pb2_grpc.py`` + ``*_pb2_grpc.pyi``
for files that declare a service, and ``descriptor_set.binpb`` (a FileDescriptorSet with imports
and source info, for analysts and schema tooling). buf comes from npm (``@bufbuild/buf``), installed
on first use into the git-ignored ``.local/node``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROTO_DIR = REPO_ROOT / "proto"
DEFAULT_OUT_DIR = REPO_ROOT / "libs" / "proto" / "src"
NODE_PREFIX = REPO_ROOT / ".local" / "node"
BUF_PACKAGE = "@bufbuild/buf"
BUF_VERSION = "1.75.0"
DEFAULT_BREAKING_AGAINST = f"{REPO_ROOT / '.git'}#branch=main,subdir=proto"

# The generated tree lives under this package directory of the output root.
GENERATED_ROOT = "stepline"
DESCRIPTOR_SET = "stepline/v1/descriptor_set.binpb"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
REGENERATE_HINT = "run `make proto` (uv run python scripts/proto.py generate) and commit the result"

_SERVICE_RE = re.compile(r"^\s*service\s+\w+", re.MULTILINE)


class ProtoError(Exception):
    """A tool failed or the inputs are unusable; the message says what to do."""


def find_protos(proto_dir: Path) -> list[str]:
    """Return the .proto files under proto_dir as sorted, relative POSIX paths."""
    if not proto_dir.is_dir():
        raise ProtoError(f"proto directory not found: {proto_dir}")
    protos = sorted(p.relative_to(proto_dir).as_posix() for p in proto_dir.rglob("*.proto"))
    if not protos:
        raise ProtoError(f"no .proto files under {proto_dir}")
    return protos


def declares_service(path: Path) -> bool:
    """Tell whether a .proto file declares at least one service."""
    return _SERVICE_RE.search(path.read_text(encoding="utf-8")) is not None


def is_generated(relpath: str) -> bool:
    """Tell whether a path (relative to the output root) is owned by the generator."""
    return relpath == DESCRIPTOR_SET or relpath.endswith(GENERATED_SUFFIXES)


def _plugin(name: str) -> str:
    """Return a --plugin flag for a protoc plugin installed next to this interpreter."""
    exe = Path(sys.executable).parent / name
    if not exe.exists():
        raise ProtoError(f"{name} not found next to {sys.executable}; run `uv sync` (dev group)")
    return f"--plugin={name}={exe}"


def _run_protoc(proto_dir: Path, args: Sequence[str], files: Sequence[str]) -> None:
    """Run the pinned grpc_tools protoc (which adds the well-known types to the include path)."""
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}", *args, *files]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ProtoError(f"protoc failed (exit {proc.returncode}):\n{proc.stderr.strip()}")


def render(proto_dir: Path) -> dict[str, bytes]:
    """Generate all code for proto_dir in a temp dir and return {relative path: content}."""
    protos = find_protos(proto_dir)
    services = [p for p in protos if declares_service(proto_dir / p)]
    with tempfile.TemporaryDirectory(prefix="stepline-proto-") as tmp:
        out = Path(tmp)
        _run_protoc(
            proto_dir,
            [_plugin("protoc-gen-mypy"), f"--python_out={out}", f"--mypy_out={out}"],
            protos,
        )
        if services:
            _run_protoc(
                proto_dir,
                [
                    _plugin("protoc-gen-mypy_grpc"),
                    f"--grpc_python_out={out}",
                    f"--mypy_grpc_out={out}",
                ],
                services,
            )
        descriptor = out / DESCRIPTOR_SET
        descriptor.parent.mkdir(parents=True, exist_ok=True)
        _run_protoc(
            proto_dir,
            [f"--descriptor_set_out={descriptor}", "--include_imports", "--include_source_info"],
            protos,
        )
        return read_generated(out)


def read_generated(out_dir: Path) -> dict[str, bytes]:
    """Return the generator-owned files under out_dir as {relative path: content}."""
    root = out_dir / GENERATED_ROOT
    if not root.is_dir():
        return {}
    files: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(out_dir).as_posix()
        if path.is_file() and "__pycache__" not in path.parts and is_generated(rel):
            files[rel] = path.read_bytes()
    return files


def diff(expected: dict[str, bytes], actual: dict[str, bytes]) -> list[str]:
    """Describe how actual differs from expected, one line per file; empty when in sync."""
    lines = [f"missing: {p}" for p in sorted(expected.keys() - actual.keys())]
    lines += [
        f"stale (no .proto produces it): {p}" for p in sorted(actual.keys() - expected.keys())
    ]
    lines += [
        f"differs: {p}" for p in sorted(expected.keys() & actual.keys()) if expected[p] != actual[p]
    ]
    return lines


def generate(proto_dir: Path, out_dir: Path) -> int:
    """Regenerate the code in out_dir, deleting generated files no .proto produces any more."""
    expected = render(proto_dir)
    actual = read_generated(out_dir)
    for rel in sorted(actual.keys() - expected.keys()):
        (out_dir / rel).unlink()
        print(f"deleted {rel}")
    for rel, content in expected.items():
        if actual.get(rel) != content:
            target = out_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            print(f"wrote   {rel}")
    print(f"generated {len(expected)} files from {proto_dir} into {out_dir}")
    return 0


def check_drift(proto_dir: Path, out_dir: Path) -> bool:
    """Regenerate into a temp dir and report whether the committed code matches."""
    problems = diff(render(proto_dir), read_generated(out_dir))
    if not problems:
        print(f"generated code in {out_dir} matches {proto_dir}")
        return True
    print(f"generated code in {out_dir} is out of date with {proto_dir}:", file=sys.stderr)
    for line in problems:
        print(f"  {line}", file=sys.stderr)
    print(REGENERATE_HINT, file=sys.stderr)
    return False


def buf_path() -> Path:
    """Return where the npm-installed buf executable lives."""
    return NODE_PREFIX / "node_modules" / ".bin" / "buf"


def _installed_buf_version(buf: Path) -> str | None:
    """Return the version the buf at path reports, or None when it is missing or broken."""
    if not buf.exists():
        return None
    proc = subprocess.run([str(buf), "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def ensure_buf() -> Path:
    """Install the pinned buf from npm into .local/node unless it is already there."""
    buf = buf_path()
    if _installed_buf_version(buf) == BUF_VERSION:
        return buf
    npm = shutil.which("npm")
    if npm is None:
        raise ProtoError("npm not found on PATH: install Node.js (>= 18) to run buf lint")
    print(f"installing {BUF_PACKAGE}@{BUF_VERSION} into {NODE_PREFIX}", file=sys.stderr)
    NODE_PREFIX.mkdir(parents=True, exist_ok=True)
    cmd = [
        npm,
        "install",
        "--prefix",
        str(NODE_PREFIX),
        f"{BUF_PACKAGE}@{BUF_VERSION}",
        "--no-audit",
        "--no-fund",
        "--no-save",
    ]
    env = {**os.environ, "CI": "true", "npm_config_update_notifier": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    found = _installed_buf_version(buf)
    if proc.returncode != 0 or found != BUF_VERSION:
        raise ProtoError(
            f"could not install {BUF_PACKAGE}@{BUF_VERSION} (npm exit {proc.returncode}, "
            f"buf version {found!r}):\n{proc.stderr.strip()}"
        )
    return buf


def _run_buf(proto_dir: Path, args: Sequence[str]) -> bool:
    """Run buf with the module at proto_dir as working directory; True when it succeeds."""
    if not (proto_dir / "buf.yaml").is_file():
        raise ProtoError(f"{proto_dir / 'buf.yaml'} not found")
    proc = subprocess.run([str(ensure_buf()), *args], cwd=proto_dir, check=False)
    return proc.returncode == 0


def lint(proto_dir: Path) -> bool:
    """Run buf lint on the module at proto_dir; True when it is clean."""
    ok = _run_buf(proto_dir, ["lint"])
    print("buf lint: ok" if ok else "buf lint: failed (see the lines above)", file=sys.stderr)
    return ok


def breaking(proto_dir: Path, against: str) -> bool:
    """Run buf breaking against a previous version of the module; True when compatible."""
    ok = _run_buf(proto_dir, ["breaking", "--against", against])
    print(
        "buf breaking: ok" if ok else "buf breaking: failed (see the lines above)", file=sys.stderr
    )
    return ok


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    dirs = argparse.ArgumentParser(add_help=False)
    dirs.add_argument(
        "--proto-dir",
        type=Path,
        default=DEFAULT_PROTO_DIR,
        help="buf module root holding stepline/v1/*.proto (default: %(default)s)",
    )
    dirs.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help="output root of the generated package (default: %(default)s)",
    )
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("generate", parents=[dirs], help="regenerate the committed code")
    check = sub.add_parser("check", parents=[dirs], help="fail on drift; also runs buf lint")
    check.add_argument("--skip-lint", action="store_true", help="only check for drift")
    sub.add_parser("lint", parents=[dirs], help="run buf lint")
    brk = sub.add_parser("breaking", parents=[dirs], help="run buf breaking")
    brk.add_argument(
        "--against",
        default=DEFAULT_BREAKING_AGAINST,
        help="buf input to compare with (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand and return the process exit code."""
    args = parse_args(argv)
    proto_dir: Path = args.proto_dir.resolve()
    out_dir: Path = args.out_dir.resolve()
    try:
        if args.command == "generate":
            return generate(proto_dir, out_dir)
        if args.command == "check":
            in_sync = check_drift(proto_dir, out_dir)
            linted = True if args.skip_lint else lint(proto_dir)
            return 0 if in_sync and linted else 1
        if args.command == "lint":
            return 0 if lint(proto_dir) else 1
        return 0 if breaking(proto_dir, args.against) else 1
    except ProtoError as exc:
        print(f"proto.py: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
