"""The part of curl the README's examples use, so a test can run them exactly as written.

The README walk (`tests/e2e/readme_walk.py`) runs each example in bash with `curl` defined as
this module: bash does the quoting, variables and here-documents as it does for a reader, and
this sends the request. It knows `-s`, `-X`, `-H`, `-d`/`--data` (`@-` and `@FILE`, newlines
removed as curl does), `--data-binary` and `-o`; any other option is an error, so an example
using one fails the walk instead of passing untested. The body goes to standard output (or to
`-o`'s file, inside `$TOLLGATE_WALK_DIR`), the status to the file `$TOLLGATE_WALK_STATUS`.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

_CONNECT_FAILED = 7  # curl's exit status when it cannot connect


def _data(value: str, *, binary: bool) -> bytes:
    if value == "@-":
        raw = sys.stdin.buffer.read()
    elif value.startswith("@"):
        raw = Path(value[1:]).read_bytes()
    else:
        return value.encode()
    # Like curl, `-d @file` sends the file without its line breaks; `--data-binary` keeps them.
    return raw if binary else raw.replace(b"\r", b"").replace(b"\n", b"")


def main(argv: list[str]) -> int:
    """Send the request the arguments describe; return curl's exit status."""
    method: str | None = None
    headers: dict[str, str] = {}
    data: bytes | None = None
    out: str | None = None
    url: str | None = None
    args = iter(argv)
    for arg in args:
        if arg in ("-s", "--silent"):
            continue
        if arg == "-X":
            method = next(args)
        elif arg.startswith("-X"):
            method = arg[2:]
        elif arg in ("-H", "--header"):
            name, _, value = next(args).partition(":")
            headers[name.strip()] = value.strip()
        elif arg in ("-d", "--data", "--data-binary"):
            data = _data(next(args), binary=arg == "--data-binary")
        elif arg == "-o":
            out = next(args)
        elif arg.startswith("-"):
            sys.stderr.write(f"curl_shim: option {arg} is not supported\n")
            return 2
        else:
            url = arg if "://" in arg else f"http://{arg}"
    if url is None:
        sys.stderr.write("curl_shim: no URL\n")
        return 2
    if data is not None:
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    request = urllib.request.Request(  # the README's loopback URLs
        url, data=data, headers=headers, method=method or ("POST" if data is not None else "GET")
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except OSError as exc:
        sys.stderr.write(f"curl_shim: {exc}\n")
        return _CONNECT_FAILED
    Path(os.environ["TOLLGATE_WALK_STATUS"]).write_text(str(status))
    if out is not None:
        (Path(os.environ["TOLLGATE_WALK_DIR"]) / Path(out).name).write_bytes(body)
    else:
        sys.stdout.buffer.write(body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
