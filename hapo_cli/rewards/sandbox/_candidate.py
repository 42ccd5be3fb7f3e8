"""The UNTRUSTED side of a sandboxed run: the process that executes the model's program.

The judge (`_judge.py`) starts this file's text with `python -I -S -c SOURCE` as an unprivileged
user, in its own session, under resource limits. Nothing here is trusted: the model's program
runs in this interpreter and may rewrite any of it. All this stub does is give the judge a
convenient way in: load the program, call a function with arguments, send the result back.
Whatever it (or the program) sends, the judge only ever sees plain data it decodes itself.

Protocol on the inherited pipes (fd 0 from the judge, fd 1 to the judge), one frame per
message: 4-byte big-endian length, then UTF-8 JSON. Requests: {"op": "load", "program": str},
{"op": "call", "name": str, "args": [...], "kwargs": [[k, v], ...]}, {"op": "callh", "h": int,
"attr": str | None, ...}, {"op": "stdio", "program": str, "args": [stdin]} (run as __main__). Replies: {"ok": true, "value": ENC} or {"ok": false, "exc": type name,
"msg": str, "errno": int | None}. Values are encoded as tagged lists (see `enc`).
"""

import builtins
import json
import math
import os
import struct
import sys

_FRAME = struct.Struct(">I")
_MAX_DEPTH = 200


def main():
    fin = os.dup(0)
    fout = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # the program's prints go to the captured output, never to the protocol pipe
    os.close(devnull)
    try:
        sys.set_int_max_str_digits(0)
    except AttributeError:
        pass
    handles = {}

    def read_exact(n):
        buf = b""
        while len(buf) < n:
            chunk = os.read(fin, n - len(buf))
            if not chunk:
                raise SystemExit(0)
            buf += chunk
        return buf

    def send(obj):
        data = json.dumps(obj, separators=(",", ":")).encode("utf-8", "surrogatepass")
        data = _FRAME.pack(len(data)) + data
        while data:
            data = data[os.write(fout, data):]

    def enc(v, depth=0):
        if depth > _MAX_DEPTH:
            raise ValueError("value nested too deeply to send")
        if v is None:
            return ["n"]
        if isinstance(v, bool):
            return ["b", bool(v)]
        if isinstance(v, int):
            return ["i", format(int(v), "x")]
        if isinstance(v, float):
            f = float(v)
            return ["f", repr(f) if math.isfinite(f) else str(f)]
        if isinstance(v, complex):
            return ["c", repr(complex(v).real), repr(complex(v).imag)]
        if isinstance(v, str):
            return ["s", str(v)]
        if isinstance(v, (bytes, bytearray)):
            return ["y", bytes(v).hex()]
        if isinstance(v, tuple):
            return ["t", [enc(x, depth + 1) for x in v]]
        if isinstance(v, list):
            return ["l", [enc(x, depth + 1) for x in v]]
        if isinstance(v, frozenset):
            return ["F", [enc(x, depth + 1) for x in v]]
        if isinstance(v, set):
            return ["S", [enc(x, depth + 1) for x in v]]
        if isinstance(v, dict):
            return ["d", [[enc(k, depth + 1), enc(x, depth + 1)] for k, x in v.items()]]
        h = len(handles) + 1
        handles[h] = v
        return ["h", h, type(v).__name__]

    def dec(e):
        tag = e[0]
        if tag == "n":
            return None
        if tag == "b":
            return bool(e[1])
        if tag == "i":
            return int(e[1], 16)
        if tag == "f":
            return float(e[1])
        if tag == "c":
            return complex(float(e[1]), float(e[2]))
        if tag == "s":
            return e[1]
        if tag == "y":
            return bytes.fromhex(e[1])
        if tag == "t":
            return tuple(dec(x) for x in e[1])
        if tag == "l":
            return [dec(x) for x in e[1]]
        if tag == "F":
            return frozenset(dec(x) for x in e[1])
        if tag == "S":
            return {dec(x) for x in e[1]}
        if tag == "d":
            return {dec(k): dec(x) for k, x in e[1]}
        if tag == "h":
            return handles[e[1]]
        raise ValueError(f"unknown tag {tag!r}")

    def run_main(program, stdin_text):
        """Run the program as __main__ with `stdin_text` on stdin; its stdout, as text."""
        import io

        out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
        old_in, old_out = sys.stdin, sys.stdout
        sys.stdin = io.TextIOWrapper(io.BytesIO(str(stdin_text).encode("utf-8")), encoding="utf-8")
        sys.stdout = out
        try:
            exec(compile(program, "solution.py", "exec"), {"__name__": "__main__", "__builtins__": builtins})
        except SystemExit as e:
            if e.code not in (None, 0):
                raise
        finally:
            sys.stdin, sys.stdout = old_in, old_out
        out.flush()
        return out.buffer.getvalue().decode("utf-8", "replace")

    module = {"__name__": "solution", "__builtins__": builtins}
    while True:
        (n,) = _FRAME.unpack(read_exact(_FRAME.size))
        req = json.loads(read_exact(n).decode("utf-8", "surrogatepass"))
        try:
            op = req["op"]
            if op == "load":
                code = compile(req["program"], "solution.py", "exec")
                exec(code, module)
                names = {
                    k: type(v).__name__ for k, v in module.items()
                    if not k.startswith("__") and callable(v)
                }
                reply = {"ok": True, "names": names}
            elif op == "stdio":
                reply = {"ok": True, "value": enc(run_main(req["program"], dec(req["args"][0])))}
            else:
                if op == "call":
                    fn = module[req["name"]]
                else:
                    fn = handles[req["h"]]
                    if req.get("attr"):
                        fn = getattr(fn, req["attr"])
                args = [dec(a) for a in req["args"]]
                kwargs = {k: dec(x) for k, x in req["kwargs"]}
                reply = {"ok": True, "value": enc(fn(*args, **kwargs))}
        except BaseException as exc:  # noqa: B036 - SystemExit etc. are the program's answer too
            reply = {"ok": False, "exc": type(exc).__name__, "msg": str(exc)[:2000],
                     "errno": getattr(exc, "errno", None) if isinstance(getattr(exc, "errno", None), int) else None}
        try:
            sys.stdout.flush()
        except BaseException:  # noqa: B036
            pass
        send(reply)


main()
